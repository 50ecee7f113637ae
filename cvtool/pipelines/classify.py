"""Image classification: top-k labels and probabilities per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cvtool.io.atomic import atomic_write_text
from cvtool.io.image import DEFAULT_MAX_PIXELS, read_reduced
from cvtool.io.outputs import OutputNamer
from cvtool.io.render import draw_caption
from cvtool.models.loading import LoadedModel
from cvtool.tasks.classify import SPEC


class ClassifyPipeline:
    task = "classify"
    no_video_reason = None  # takes videos: the hooks below

    def __init__(self, model: LoadedModel, *, top_k: int = SPEC.options["top_k"].default, max_pixels: int = DEFAULT_MAX_PIXELS, out_dir=None,
                 normalise_on_device: bool | None = None, full_decode: bool = SPEC.options["full_decode"].default,
                 decode_on_device: bool | None = None):
        from cvtool.device import tune_for_fixed_sizes

        self.model = model
        # On CUDA the workers hand over resized uint8 pixels (4x fewer bytes to copy than float32) and the
        # device normalises them; elsewhere the workers normalise (bit-for-bit the documented CPU path).
        on_cuda = model.device.type == "cuda" and model.backend == "torch"
        self.normalise_on_device = on_cuda if normalise_on_device is None else normalise_on_device
        # On CUDA a file's JPEG is decoded there too (nvJPEG, a batch per call) and resized, cropped and normalised
        # there (cvtool.io.device_decode, cvtool.ops.device_preprocess): the workers only read bytes
        self.decode_on_device = on_cuda if decode_on_device is None else decode_on_device and model.backend == "torch"
        if on_cuda and model.preprocess.crop_size is not None:
            tune_for_fixed_sizes(model.device)  # every batch has the crop's size
        self.model_name = model.name
        self.weights_sha256 = model.weights_sha256
        self.top_k = max(1, min(top_k, len(model.classes)))
        self.max_pixels = max_pixels
        self.output_name = OutputNamer(out_dir, ".json") if out_dir is not None else None
        self.video_name = OutputNamer(out_dir, ".classify.mp4") if out_dir is not None else None
        # a file's JPEG decoded as small as the preprocessing's resize allows (--out writes the record alone)
        self.reduction = None if full_decode else model.preprocess.decode_reduction

    def prepare(self, path: str) -> np.ndarray:
        if self.decode_on_device:
            from cvtool.io.device_decode import read_for_device

            return read_for_device(path, max_pixels=self.max_pixels)
        return self.prepare_array(read_reduced(path, max_pixels=self.max_pixels, reduction=self.reduction).rgb)

    def prepare_array(self, rgb: np.ndarray) -> np.ndarray:
        if self.normalise_on_device:
            return resized_pixels(self.model.preprocess, rgb)
        return self.model.preprocess(rgb)

    def predict(self, samples: list[np.ndarray]) -> list[dict]:
        if self.model.runs_on_arrays:  # onnxruntime: NumPy from end to end, no torch
            probs, indices = softmax_top_k(self.model.module.run(np.stack(samples))[0], self.top_k)
        else:
            import torch

            from cvtool.device import to_device

            from cvtool.io.device_decode import DeviceRead

            with torch.inference_mode():
                if isinstance(samples[0], DeviceRead):  # files: decoded and preprocessed on the device
                    from cvtool.io.device_decode import decode_batch
                    from cvtool.ops.device_preprocess import preprocess_batch

                    batch = preprocess_batch(decode_batch(samples, self.model.device), self.model.preprocess)
                else:
                    batch = to_device(np.stack(samples), self.model.device)
                if batch.dtype == torch.uint8:
                    batch = normalise(batch, self.model.preprocess)
                logits = self.model.forward(batch)
                probs, indices = torch.softmax(logits.float(), dim=1).topk(self.top_k, dim=1)
            probs, indices = probs.cpu(), indices.cpu()
        probs, indices = probs.tolist(), indices.tolist()
        return [
            {"top_k": [{"label": self.model.classes[i], "index": i, "prob": round(p, 6)} for p, i in zip(ps, ids)]}
            for ps, ids in zip(probs, indices)
        ]

    def save(self, path: str, sample, result: dict, out_dir: Path) -> list[str]:
        return write_record(self.output_name(path), path, self.task, self.model_name, result)

    def render(self, rgb: np.ndarray, sample, result: dict) -> np.ndarray:
        """A video frame with its top-1 label and probability written in the corner."""
        best = result["top_k"][0]
        return draw_caption(rgb, f"{best['label']} {best['prob']:.2f}")

    def save_frame(self, path: str, index: int, rgb: np.ndarray, sample, result: dict) -> list[str]:
        return []  # a frame's record is all: no files of its own beside the video

    def already_done(self, path: str) -> bool:
        return self.output_name is not None and self.output_name.exists(path)


def softmax_top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """B x classes logits (NumPy) -> the k best probabilities and their class indices, best first: what
    `torch.softmax(...).topk(k)` gives the PyTorch path, in float32 (ties: the lower index first)."""
    logits = np.asarray(logits, dtype=np.float32)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    indices = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(probs, indices, axis=1), indices


def resized_pixels(pre, rgb: np.ndarray) -> np.ndarray:
    """Preprocess's resize and crop without the normalisation: H x W x C uint8 (see `normalise`)."""
    import cv2

    from cvtool.ops.preprocess import _center_crop

    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None] if pre.grayscale else rgb
    image = pre._resize(image)
    if pre.crop_size is not None:
        image = _center_crop(image, pre.crop_size)
    return np.ascontiguousarray(image)


def normalise(batch, pre):
    """B x H x W x C uint8 (on any device) -> B x C x H x W float32 normalised there, with Preprocess's formula."""
    import torch

    mean = torch.tensor(pre.mean, dtype=torch.float32, device=batch.device) * 255.0
    inv_std = 1.0 / (torch.tensor(pre.std, dtype=torch.float32, device=batch.device) * 255.0)
    return ((batch.float() - mean) * inv_std).permute(0, 3, 1, 2).contiguous()


def write_record(target: Path, path: str, task: str, model: str, result: dict) -> list[str]:
    """`--out`: `NAME.json`, the input's record without its timing."""
    record = {"path": path, "task": task, "model": model, "result": result}
    atomic_write_text(target, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    return [str(target)]
