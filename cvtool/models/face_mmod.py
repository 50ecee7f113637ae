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

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvtool.errors import InputError, WeightsError
from cvtool.models import contract
from cvtool.models.registry import ModelEntry, register
from cvtool.ops.preprocess import Preprocess

MMOD_FILE = "mmod_human_face_detector.dat"
ARCH_TOKENS = ["con"] + ["relu", "bn", "con"] * 6  # outermost first: the score conv, then 6 x (relu(bn(conv)))
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
WINDOW = (80, 80)  # detector window (width, height) in canvas pixels
NMS_IOU = 0.3382761351109955  # the file's overlaps_nms; its percent-covered threshold is 1.0 (never fires)
PYRAMID_PADDING, OUTER_PADDING = 10, 11
PYRAMID_RATE = 5.0 / 6.0  # pyramid_down<6>
MIN_LEVEL_HEIGHT = 5
# (in, out, kernel, stride, padding): three downsampling convs, three 45-channel convs, the 9x9 scorer.
_CONVS = [(3, 16, 5, 2, 0), (16, 32, 5, 2, 0), (32, 32, 5, 2, 0), (32, 45, 5, 1, 2), (45, 45, 5, 1, 2),
          (45, 45, 5, 1, 2), (45, 1, 9, 1, 4)]
NUM_PARAMS = sum(o * i * k * k + o for i, o, k, _, _ in _CONVS)


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
        for _, _, k, s, p in _CONVS:
            n = (n + 2 * p - k) // s + 1
        return n

    @staticmethod
    def cell_to_canvas(i: np.ndarray) -> np.ndarray:
        """Score-map index -> canvas pixel at the centre of its receptive field (8 i + 14 for this net)."""
        for _, _, k, s, p in reversed(_CONVS):
            i = i * s - p + k // 2
        return i


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


def pyramid_rects(height: int, width: int, pad: int = PYRAMID_PADDING, outer: int = OUTER_PADDING):
    """dlib's tiled pyramid layout: canvas (rows, cols) and one inclusive (l, t, r, b) rect per level."""
    sizes = []
    h, w = height, width
    while h * w > 0:
        sizes.append((h, w))
        h, w = math.floor(PYRAMID_RATE * h), math.floor(PYRAMID_RATE * w)
        if h < MIN_LEVEL_HEIGHT:
            break
    if not sizes:
        return (0, 0), []
    h0, w0 = sizes[0]
    total_h = sum(h + pad for h, _ in sizes) - 2 * pad
    canvas_h, prev_w = 0, 0
    for h, w in sizes:  # the first column holds levels until the rest fit beside them
        if w <= w0 - prev_w - pad and (canvas_h - h0) * 2 >= total_h - h0:
            break
        canvas_h += h + pad
        prev_w = w
    canvas_h -= pad
    rects = []
    y, i = outer, 0
    while y < canvas_h + outer and i < len(sizes):
        h, w = sizes[i]
        rects.append((outer, y, outer + w - 1, y + h - 1))
        y += h + pad
        i += 1
    y -= pad
    first = rects[0]
    while i < len(sizes):  # second column: right-aligned, stacked upwards from the bottom
        h, w = sizes[i]
        rect = (outer + w0 - w, y - h, outer + w0 - 1, y - 1)
        if rect[0] <= first[2] and first[0] <= rect[2] and rect[1] <= first[3] and first[1] <= rect[3]:
            break
        rects.append(rect)
        y -= h + pad
        i += 1
    return (canvas_h + 2 * outer, w0 + 2 * outer), rects


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


def _lround(x: np.ndarray) -> np.ndarray:
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def cells_to_boxes(rows: np.ndarray, cols: np.ndarray, rects) -> np.ndarray:
    """Score-map cells -> real-valued (l, t, r, b) windows in the pyramid's level-0 (input image) pixels."""
    x = MmodNet.cell_to_canvas(cols.astype(np.int64))
    y = MmodNet.cell_to_canvas(rows.astype(np.int64))
    half_w, half_h = (WINDOW[0] - 1) / 2, (WINDOW[1] - 1) / 2
    boxes = np.stack([x - half_w, y - half_h, x + half_w, y + half_h], axis=1).astype(np.float64)
    r = np.asarray(rects, dtype=np.int64)  # (L, 4)
    px, py = x[:, None], y[:, None]  # window centres are whole pixels already
    inside = (px >= r[:, 0]) & (px <= r[:, 2]) & (py >= r[:, 1]) & (py <= r[:, 3])
    dx = np.maximum(np.maximum(r[:, 0] - px, px - r[:, 2]), 0)
    dy = np.maximum(np.maximum(r[:, 1] - py, py - r[:, 3]), 0)
    nearest = np.argmin(dx.astype(np.float64) ** 2 + dy**2, axis=1)  # first rect wins ties
    level = np.where(inside.any(axis=1), inside.argmax(axis=1), nearest)
    boxes -= np.tile(r[level, :2], 2)  # (left, top, left, top) of the level's rect
    for step in range(int(level.max(initial=0))):  # pyramid_down<6>::point_up once per level
        up = level > step
        boxes[up] = boxes[up] * (6.0 / 5.0) + 0.3
    return boxes


def _overlaps(box: np.ndarray, kept: np.ndarray, iou: float) -> bool:
    """dlib's test_box_overlap on inclusive integer boxes: intersection / bounding box of both > iou."""
    if not len(kept):
        return False
    iw = np.minimum(box[2], kept[:, 2]) - np.maximum(box[0], kept[:, 0]) + 1
    ih = np.minimum(box[3], kept[:, 3]) - np.maximum(box[1], kept[:, 1]) + 1
    inner = np.where((iw > 0) & (ih > 0), iw * ih, 0)
    ow = np.maximum(box[2], kept[:, 2]) - np.minimum(box[0], kept[:, 0]) + 1
    oh = np.maximum(box[3], kept[:, 3]) - np.minimum(box[1], kept[:, 1]) + 1
    area_a = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    area_b = (kept[:, 2] - kept[:, 0] + 1) * (kept[:, 3] - kept[:, 1] + 1)
    hit = (inner > 0) & ((inner / (ow * oh) > iou) | (inner / area_a > 1.0) | (inner / area_b > 1.0))
    return bool(hit.any())


def mmod_nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Greedy, highest score first; boxes are rounded (lround) before the test and kept as integers."""
    order = np.argsort(-scores, kind="stable")
    rounded = _lround(boxes[order])
    kept: list[int] = []
    for j in range(len(order)):
        if not _overlaps(rounded[j], rounded[kept], iou):
            kept.append(j)
    return rounded[kept], scores[order][kept]


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
        hits = torch.nonzero(score_map > threshold)
        if not len(hits):
            return []
        scores = score_map[hits[:, 0], hits[:, 1]].double().cpu().numpy()
        hits = hits.cpu().numpy()
        boxes, scores = mmod_nms(cells_to_boxes(hits[:, 0], hits[:, 1], rects), scores)
        for _ in range(upsample):  # pyramid_down<2>::rect_down back to the caller's pixels
            boxes = _lround(boxes / 2.0 - np.array([1.25, 0.75, 1.25, 0.75]))
        return [(int(l), int(t), int(r), int(b), float(s)) for (l, t, r, b), s in zip(boxes, scores)]


NATIVE_MIN_FACE = 80  # px: the detector window; smaller faces are found only in an enlarged image
DEFAULT_MIN_FACE = 40  # px: what `auto` upsampling aims to find (dlib's own default: upsample once)
DEFAULT_DETECT_PIXELS = 9_000_000  # the enlarged image's pixel budget (a 1920x1080 photo doubled: 8.3 M)


def detection_scale(height: int, width: int, min_face: float = DEFAULT_MIN_FACE,
                    max_pixels: int = DEFAULT_DETECT_PIXELS) -> float:
    """The factor to resize an image by so that faces of `min_face` px become the detector's native 80 px,
    capped so that the resized image holds at most `max_pixels` (then smaller faces are missed: the cap
    wins over min_face). Below 1 the image is reduced (its smallest wanted faces are larger than 80 px)."""
    if min_face <= 0:
        raise ValueError("min_face must be positive")
    wanted = NATIVE_MIN_FACE / float(min_face)
    budget = math.sqrt(max_pixels / max(1, height * width))
    return min(wanted, budget)


def split_scale(scale: float, max_doublings: int = 3) -> tuple[float, int]:
    """scale = resize * 2**doublings with resize in [1, 2) (or < 1 when shrinking): dlib's exact pyramid_up
    does the doublings and a plain resize the rest; a resize within 2% of 1 is skipped."""
    doublings = 0
    while doublings < max_doublings and scale / 2 ** (doublings + 1) >= 1 - 1e-9:
        doublings += 1
    resize = scale / 2**doublings
    return (1.0 if abs(resize - 1) <= 0.02 else resize), doublings


def detect_scaled(detector: "MmodFaceDetector", image: np.ndarray, scale: float,
                  threshold: float = 0.0) -> list[tuple]:
    """Faces in one RGB image searched at `scale` (see split_scale), as (l, t, r, b, score) in its own pixels."""
    import cv2

    resize, doublings = split_scale(scale)
    if resize != 1.0:
        h, w = image.shape[:2]
        size = (max(1, round(w * resize)), max(1, round(h * resize)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if resize < 1 else cv2.INTER_LINEAR)
    boxes = detector.detect([image], upsample=doublings, threshold=threshold)[0]
    if resize == 1.0:
        return boxes
    return [(l / resize, t / resize, r / resize, b / resize, score) for l, t, r, b, score in boxes]


def load_mmod_net(device: torch.device | str | None = None) -> MmodNet:
    """The pretrained network in eval mode (converted from face_recognition_models once, then cached)."""
    from cvtool.models.dlib.convert import load_converted_module

    return load_converted_module(MmodNet, MMOD_FILE, mmod_state_dict_from_dlib, "dlib_mmod_face", device)


# The detector builds its own canvas from raw uint8 images; nothing is resized or scaled beforehand.
MMOD_PREPROCESS = Preprocess(crop_size=None, resize_size=None, mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255),
                             resize_mode="none")


def _register() -> None:
    from cvtool.models.dlib.convert import PackageModelWeights

    register(
        ModelEntry(
            name="dlib_mmod_face",
            task="face-detect",
            family="dlib",
            builder=MmodNet,
            preprocess=lambda: MMOD_PREPROCESS,
            classes=lambda: ["face"],
            weights=PackageModelWeights(MMOD_FILE, "dlib_mmod_face", mmod_state_dict_from_dlib),
            licence="CC0 (face_recognition_models / dlib)",
            description="dlib's CNN (MMOD) face detector: tiled image pyramid, faces from ~80 px (~40 px upsampled)",
            num_params=NUM_PARAMS,
            head_is_classes=False,
            input_kind="canvas",  # the pyramid and NMS stay outside the network (MmodFaceDetector)
            export=contract.canvas_graph("scores"),
        )
    )


_register()
