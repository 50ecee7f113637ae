"""The face detectors `verify-face --detector` chooses from, as registry entries of task "face-detect".

Each entry declares `face_detector`: (entry, FaceDetectorOptions) -> an object whose
`detect(list of RGB uint8 images)` gives, per image, (left, top, right, bottom, score) boxes with dlib's
inclusive corners, best first or left to right. The short names users type (`--detector mmod|haar`) are
the entries' aliases.

  dlib_mmod_face    (mmod) dlib's CNN (cvtool/models/face_mmod.py), on PyTorch or, from its cached ONNX
                    export, on onnxruntime with the same NumPy pyramid and NMS (cvtool/models/dlib/mmod.py)
  opencv_haar_face  (haar) OpenCV's Viola-Jones cascade (cvtool/models/face_haar.py): not a network

This module imports neither torch nor OpenCV: the registry imports it to look a detector up, and the
cached-ONNX face chain must stay free of torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cvtool.device import CPU, Placement
from cvtool.models import contract
from cvtool.models.dlib.mmod import DEFAULT_DETECT_PIXELS, DEFAULT_MIN_FACE, MMOD_FILE, NUM_PARAMS
from cvtool.models.registry import ModelEntry, register


@dataclass(frozen=True)
class FaceDetectorOptions:
    """What the face chain asks of its detector. `backend` is the embedder's ("torch" or "onnxruntime"):
    the detector runs where the embedder does, so onnxruntime keeps the whole chain free of torch."""

    device: Placement = CPU  # the embedder's (cvtool.device.place)
    backend: str = "torch"
    upsample: int | None = None  # None: dlib's CNN picks the scale from min_face; N: double every image N times
    min_face: float = DEFAULT_MIN_FACE
    detect_pixels: int | None = None
    on_export: Callable | None = None  # told when the CNN is exported to ONNX on first use


def make_face_detector(entry: ModelEntry, options: FaceDetectorOptions):
    """The detector a "face-detect" entry declares, built with `options`."""
    return entry.face_detector(entry, options)


# -- dlib's CNN ------------------------------------------------------------------------------------------

class AutoScaledMmod:
    """dlib's CNN finds faces from about 80 px. By default (upsample None: auto) each image is searched at
    the scale that makes `min_face` px faces 80 px (doubled once for the default 40 px), within a pixel
    budget (`detect_pixels`, so a large photo is searched at a reduced size: faces there are big); boxes
    are mapped back. An explicit `upsample` N doubles every image N times, as dlib does.

    backend "onnxruntime": the network is the export cached by cvtool (made on first use), the pyramid and
    NMS the same NumPy as PyTorch's detector (cvtool/models/dlib/mmod.py): no torch is imported."""

    def __init__(self, network, options: FaceDetectorOptions):
        self.detector = network
        self.upsample = options.upsample
        self.min_face = options.min_face
        self.detect_pixels = options.detect_pixels or DEFAULT_DETECT_PIXELS

    def scale(self, height: int, width: int) -> float:
        from cvtool.models.dlib.mmod import detection_scale

        if self.upsample is not None:
            return float(2**self.upsample)
        return detection_scale(height, width, self.min_face, self.detect_pixels)

    def search(self, rgb):
        """The image's pyramid, searched level by level on demand (cvtool.models.dlib.mmod.PyramidSearch), or
        None where the network searches only whole pyramids (the PyTorch detector builds its canvas in torch)."""
        return self.detector.search(rgb, self.scale(*rgb.shape[:2]))

    def detect(self, images: list) -> list[list[tuple]]:
        from cvtool.models.dlib.mmod import detect_scaled

        # sizes differ per photo, so each is its own canvas anyway
        return [detect_scaled(self.detector, rgb, self.scale(*rgb.shape[:2])) for rgb in images]


def _mmod_onnx(on_export=None):
    """dlib's detector on onnxruntime: the cached export of its network (no torch), else exported now."""
    from cvtool.models.dlib.convert import converted_path
    from cvtool.models.dlib.mmod import MmodArrayDetector
    from cvtool.models.onnx_backend import cached_onnx
    from cvtool.models.onnx_ops import align_corners_resizer

    path = converted_path("dlib_mmod_face")
    net = cached_onnx(path, "face-detect") if path is not None else None
    if net is None:
        from cvtool.models.loading import load_model
        from cvtool.models.onnx_backend import to_onnxruntime

        net = to_onnxruntime(load_model("dlib_mmod_face", task="face-detect", progress=False), on_export=on_export)
    run = net.module.run
    return MmodArrayDetector(lambda canvases: run(canvases)[0], resize=align_corners_resizer())


def _mmod_detector(entry: ModelEntry, options: FaceDetectorOptions) -> AutoScaledMmod:
    if options.backend == "onnxruntime":
        network = _mmod_onnx(options.on_export)
    else:
        from cvtool.models.face_mmod import MmodFaceDetector

        network = MmodFaceDetector.pretrained(options.device.torch)
    return AutoScaledMmod(network, options)


def _mmod_net(**kwargs):
    from cvtool.models.face_mmod import MmodNet

    return MmodNet(**kwargs)


def _mmod_state_dict(path: Path) -> dict:
    from cvtool.models.face_mmod import mmod_state_dict_from_dlib

    return mmod_state_dict_from_dlib(path)


def _raw_rgb_preprocess():
    from cvtool.ops.preprocess import Preprocess

    # the detector builds its own canvas from raw uint8 images; nothing is resized or scaled beforehand
    return Preprocess(crop_size=None, resize_size=None, mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255),
                      resize_mode="none")


# -- OpenCV's Haar cascade -------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpenCVCascade:
    """Weights source kind "package": a cascade XML that opencv-python installs (OpenCV 4.x)."""

    filename: str
    kind: str = "package"

    def is_available(self) -> bool:
        path = self.local_file()
        return path is not None and path.is_file()

    def local_file(self) -> Path | None:
        from cvtool.errors import WeightsError
        from cvtool.models.face_haar import cascade_path

        try:
            return cascade_path()
        except WeightsError:
            return None

    def local_path(self, *, offline: bool | None = None, progress: bool = True,
                   alternative: str | None = None) -> Path:
        from cvtool.models.face_haar import cascade_path

        return cascade_path()


def _haar_detector(entry: ModelEntry, options: FaceDetectorOptions):
    from cvtool.models.face_haar import HaarFaceDetector

    return HaarFaceDetector()  # a fixed-scale-range classical detector: upsample and min_face do not apply


def _register() -> None:
    from cvtool.models.dlib.convert import PackageModelWeights

    register(
        ModelEntry(
            name="dlib_mmod_face",
            aliases=("mmod",),
            task="face-detect",
            family="dlib",
            builder=_mmod_net,
            preprocess=_raw_rgb_preprocess,
            classes=lambda: ["face"],
            weights=PackageModelWeights(MMOD_FILE, "dlib_mmod_face", _mmod_state_dict),
            licence="CC0 (face_recognition_models / dlib)",
            description="dlib's CNN (MMOD) face detector: tiled image pyramid, faces from ~80 px (~40 px upsampled)",
            num_params=NUM_PARAMS,
            head_is_classes=False,
            input_kind="canvas",  # the pyramid and NMS stay outside the network (dlib/mmod.py)
            export=contract.canvas_graph("scores"),
            face_detector=_mmod_detector,
        )
    )
    register(
        ModelEntry(
            name="opencv_haar_face",
            aliases=("haar",),
            task="face-detect",
            family="opencv",
            builder=None,
            preprocess=_raw_rgb_preprocess,
            classes=lambda: ["face"],
            weights=OpenCVCascade("haarcascade_frontalface_default.xml"),
            licence="Intel License Agreement (BSD-like; ships with OpenCV)",
            description="OpenCV's Viola-Jones Haar cascade: frontal faces, tens of ms on a CPU, more false alarms",
            head_is_classes=False,
            input_kind="classical",
            export_refusal="OpenCV's Viola-Jones cascade, not a neural network (verify-face --detector haar)",
            face_detector=_haar_detector,
        )
    )


_register()
