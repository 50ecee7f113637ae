"""cvtool: computer vision from the command line and from Python.

    import cvtool
    clf = cvtool.Classifier("resnet18")          # load once ...
    clf("cat.jpg").label                         # ... call many times: paths, bytes, RGB arrays, PIL images
    cvtool.Detector(weights="runs/raccoon/best.pt")("street.jpg").boxes
    cvtool.FaceVerifier().verify("a.jpg", "b.jpg").same
    cvtool.train.classify("digits/", arch="lenet5", epochs=30, out="runs/digits")

Importing cvtool is cheap: the task objects (cvtool/api.py) and their torch-based pipelines load on
first use, so `cvtool --help` and `import cvtool` import no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cvtool.errors import CvtoolError, InputError, UsageError, WeightsError

from cvtool.version import __version__

_API = ("Classifier", "Detector", "Localizer", "Segmenter", "Stylizer", "FaceVerifier", "Result", "ClassifyResult",
        "DetectResult", "LocalizeResult", "SegmentResult", "StylizeResult", "VerifyResult", "LandmarkDetector",
        "LandmarksResult", "Tracker", "TrackResult", "list_models", "export_onnx")

__all__ = [*_API, "train", "load_image", "CvtoolError", "InputError", "UsageError", "WeightsError", "__version__"]

if TYPE_CHECKING:
    from cvtool import train
    from cvtool.api import (Classifier, ClassifyResult, DetectResult, Detector, FaceVerifier, LocalizeResult,
                            Localizer, Result, SegmentResult,
                            Segmenter, StylizeResult, Stylizer, VerifyResult, export_onnx, list_models)
    from cvtool.api import LandmarkDetector, LandmarksResult
    from cvtool.api import Tracker, TrackResult
    from cvtool.io.image import load_image


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("cvtool.api"), name)
    if name == "load_image":
        return importlib.import_module("cvtool.io.image").load_image
    if name == "train":
        return importlib.import_module("cvtool.train")
    raise AttributeError(f"module 'cvtool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
