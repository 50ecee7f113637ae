"""dlib's CNN face detector without PyTorch: the tiled image pyramid, cell -> box mapping, dlib's NMS and
the detection scale, in NumPy. cvtool/models/face_mmod.py runs the network on PyTorch with these same
functions; `MmodArrayDetector` here runs it on anything that maps a float32 canvas batch to score maps
(an onnxruntime session of the exported network), so `verify-face` needs no torch once it is exported.
Layout and measurements: ../shared/specs/dlib-model-formats.md section 4.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from cvtool.errors import InputError

MMOD_FILE = "mmod_human_face_detector.dat"
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
WINDOW = (80, 80)  # detector window (width, height) in canvas pixels
NMS_IOU = 0.3382761351109955  # the file's overlaps_nms; its percent-covered threshold is 1.0 (never fires)
PYRAMID_PADDING, OUTER_PADDING = 10, 11
PYRAMID_RATE = 5.0 / 6.0  # pyramid_down<6>
MIN_LEVEL_HEIGHT = 5
# (in, out, kernel, stride, padding): three downsampling convs, three 45-channel convs, the 9x9 scorer.
CONVS = [(3, 16, 5, 2, 0), (16, 32, 5, 2, 0), (32, 32, 5, 2, 0), (32, 45, 5, 1, 2), (45, 45, 5, 1, 2),
         (45, 45, 5, 1, 2), (45, 1, 9, 1, 4)]
NUM_PARAMS = sum(o * i * k * k + o for i, o, k, _, _ in CONVS)
NATIVE_MIN_FACE = 80  # px: the detector window; smaller faces are found only in an enlarged image
# px, `--min-face` (the task table's): what `auto` upsampling aims to find (dlib's own default: upsample once)
from cvtool.tasks.verify_face import DEFAULT_MIN_FACE  # noqa: E402
DEFAULT_DETECT_PIXELS = 9_000_000  # the enlarged image's pixel budget (a 1920x1080 photo doubled: 8.3 M)
CANVAS_SLACK = 1.025  # a pyramid's canvas may pass a square budget-sized image's by this much (see detection_scale)


def output_size(n: int) -> int:
    """Canvas side -> score-map side."""
    for _, _, k, s, p in CONVS:
        n = (n + 2 * p - k) // s + 1
    return n


def cell_to_canvas(i: np.ndarray) -> np.ndarray:
    """Score-map index -> canvas pixel at the centre of its receptive field (8 i + 14 for this net)."""
    for _, _, k, s, p in reversed(CONVS):
        i = i * s - p + k // 2
    return i


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


def _axis_weights(n_in: int, n_out: int):
    """Bilinear align-corners sampling along one axis, as PyTorch computes it in float32."""
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    src = np.arange(n_out, dtype=np.float32) * scale
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, (np.float32(1) - w1), w1


def resize_align_corners(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """C x H x W float32 -> C x height x width, bilinear with aligned corners (F.interpolate's
    align_corners=True, the resize dlib's pyramid uses), in NumPy: rows first, then columns."""
    r0, r1, rw0, rw1 = _axis_weights(image.shape[1], height)
    rows = np.take(image, r0, axis=1)
    rows *= rw0[None, :, None]
    rows += np.take(image, r1, axis=1) * rw1[None, :, None]
    c0, c1, cw0, cw1 = _axis_weights(image.shape[2], width)
    out = np.take(rows, c0, axis=2)
    out *= cw0
    out += np.take(rows, c1, axis=2) * cw1
    return out


Resize = Callable[[np.ndarray, int, int], np.ndarray]  # (C x H x W float32, height, width) -> C x height x width


def pyramid_levels(image: np.ndarray, mean, rects, resize: Resize = resize_align_corners) -> list[np.ndarray]:
    """3 x H x W uint8/float image -> the normalised float32 level of each rect; level i is level i-1 resized
    (bilinear, align-corners, as dlib does in tensor space) by `resize`."""
    level = (image.astype(np.float32) - np.asarray(mean, dtype=np.float32)[:, None, None]) * np.float32(1.0 / 256.0)
    levels = []
    for i, (left, top, right, bottom) in enumerate(rects):
        if i:
            level = resize(level, bottom - top + 1, right - left + 1)
        levels.append(level)
    return levels


def canvas_region(levels: list[np.ndarray], rects, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Rows top..bottom-1, columns left..right-1 of the canvas the levels tile (zeros between them)."""
    region = np.zeros((3, bottom - top, right - left), dtype=np.float32)
    for level, (l, t, r, b) in zip(levels, rects):
        y0, y1, x0, x1 = max(t, top), min(b + 1, bottom), max(l, left), min(r + 1, right)
        if y0 < y1 and x0 < x1:
            region[:, y0 - top:y1 - top, x0 - left:x1 - left] = level[:, y0 - t:y1 - t, x0 - l:x1 - l]
    return region


def build_canvas(image: np.ndarray, mean, shape, rects, resize: Resize = resize_align_corners) -> np.ndarray:
    """3 x H x W uint8/float image -> normalised 3 x rows x cols float32 canvas of its pyramid's levels."""
    return canvas_region(pyramid_levels(image, mean, rects, resize), rects, 0, shape[0], 0, shape[1])


def pyramid_up(image: np.ndarray, resize: Resize = resize_align_corners) -> np.ndarray:
    """dlib's pyramid_up for pyramid_down<2>: 3 x h x w -> 3 x (2h+1) x (2w+2) float32, bilinear
    align-corners, truncated to whole grey levels in 0..255 (face_mmod.pyramid_up is the same on tensors)."""
    _, h, w = image.shape
    up = resize(image.astype(np.float32, copy=False), 2 * h + 1, 2 * w + 2)
    return np.clip(np.floor(up, out=up), 0, 255, out=up)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An RGB or grey uint8 image as H x W x 3 (InputError otherwise)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise InputError(f"expected an RGB or grey uint8 image, got {array.dtype} of shape {array.shape}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.broadcast_to(array, (*array.shape[:2], 3))
    return array


# --- boxes --------------------------------------------------------------------------------------------------


def lround(x: np.ndarray) -> np.ndarray:
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def cells_to_boxes(rows: np.ndarray, cols: np.ndarray, rects) -> np.ndarray:
    """Score-map cells -> real-valued (l, t, r, b) windows in the pyramid's level-0 (input image) pixels."""
    x = cell_to_canvas(cols.astype(np.int64))
    y = cell_to_canvas(rows.astype(np.int64))
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
    rounded = lround(boxes[order])
    kept: list[int] = []
    for j in range(len(order)):
        if not _overlaps(rounded[j], rounded[kept], iou):
            kept.append(j)
    return rounded[kept], scores[order][kept]


def decode(score_map: np.ndarray, rects, upsample: int, threshold: float) -> list[tuple]:
    """One h x w score map -> (left, top, right, bottom, score) faces in the caller's pixels, after NMS."""
    rows, cols = np.nonzero(score_map > threshold)
    return cells_to_faces(rows, cols, score_map[rows, cols].astype(np.float64), rects, upsample)


def cells_to_faces(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, rects, upsample: int) -> list[tuple]:
    """Score cells over the threshold (in the score map's row-major order) -> faces in the caller's pixels."""
    if not len(rows):
        return []
    boxes, scores = mmod_nms(cells_to_boxes(rows, cols, rects), scores)
    for _ in range(upsample):  # pyramid_down<2>::rect_down back to the caller's pixels
        boxes = lround(boxes / 2.0 - np.array([1.25, 0.75, 1.25, 0.75]))
    return [(int(l), int(t), int(r), int(b), float(s)) for (l, t, r, b), s in zip(boxes, scores)]


# --- the scale to search at ---------------------------------------------------------------------------------


def detection_scale(height: int, width: int, min_face: float = DEFAULT_MIN_FACE,
                    max_pixels: int = DEFAULT_DETECT_PIXELS) -> float:
    """The factor to resize an image by so that faces of `min_face` px become the detector's native 80 px,
    capped so that the resized image holds at most `max_pixels` and its pyramid's canvas at most
    `canvas_budget(max_pixels)`. Below 1 the image is reduced (its smallest wanted faces are larger than 80 px).

    Either cap wins over min_face: the smallest face found is then 80 / scale px, larger than asked for.
    The canvas cap is there because the CNN's cost is its canvas, not the image: a large photo's canvas is
    3.6-3.7 pixels per image pixel, a strip's up to 8 (the 10 px gaps between levels and the 11 px border
    are as tall as a thin strip's levels, and no level fits beside its first), so the image cap alone let
    a 20000 x 200 image's canvas reach 34-35 M pixels (a 9 MP photo's: 32.7 M) and a 200000 x 20 one's
    50-62 M. Photo shapes (up to 1:16 either way, at the default budget) fit the canvas cap at the image
    cap's scale, so their pyramids are exactly the image cap's; a strip is searched smaller instead, and
    its smallest findable face grows: 20000 x 200 at 1.47-1.49 instead of 1.5 (faces from 54 px instead
    of 53), 200000 x 20 at 0.94-1.17 (from 68-85 px)."""
    if min_face <= 0:
        raise ValueError("min_face must be positive")
    wanted = NATIVE_MIN_FACE / float(min_face)
    scale = min(wanted, math.sqrt(max_pixels / max(1, height * width)))
    limit = canvas_budget(max_pixels)
    canvas = canvas_pixels(height, width, scale)
    while canvas > limit:  # the canvas per image pixel grows as a strip shrinks: shrink until it fits
        scale *= 0.999 * math.sqrt(limit / canvas)
        canvas = canvas_pixels(height, width, scale)
    return scale


def canvas_budget(max_pixels: int = DEFAULT_DETECT_PIXELS) -> float:
    """The most canvas pixels a pyramid may have: the canvas of a square image of `max_pixels` (32.7 M for
    the default 9 M) times CANVAS_SLACK, which photo shapes stay within (at 9 M a 1:8 portrait's canvas is
    1.0% over the square's, a 1:16 one's 1.8%; a 20000 x 200 strip's 4.4% lying, 6.0% standing)."""
    side = max(1, math.isqrt(int(max_pixels)))
    rows, cols = pyramid_rects(side, side)[0]
    return CANVAS_SLACK * rows * cols


def searched_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size of the image `detect_scaled` builds the pyramid from at `scale`: resized, then doubled by
    pyramid_up ((2h+1) x (2w+2)) once per doubling."""
    resize, doublings = split_scale(scale)
    if resize != 1.0:
        height, width = resized_size(height, width, resize)
    for _ in range(doublings):
        height, width = 2 * height + 1, 2 * width + 2
    return height, width


def resized_size(height: int, width: int, resize: float) -> tuple[int, int]:
    """detect_scaled's plain resize: (height, width) * resize, rounded, at least 1 px."""
    return max(1, round(height * resize)), max(1, round(width * resize))


def canvas_pixels(height: int, width: int, scale: float) -> int:
    """Pixels of the canvas the CNN runs over for an image searched at `scale`."""
    rows, cols = pyramid_rects(*searched_size(height, width, scale))[0]
    return rows * cols


def split_scale(scale: float, max_doublings: int = 3) -> tuple[float, int]:
    """scale = resize * 2**doublings with resize in [1, 2) (or < 1 when shrinking): dlib's exact pyramid_up
    does the doublings and a plain resize the rest; a resize within 2% of 1 is skipped."""
    doublings = 0
    while doublings < max_doublings and scale / 2 ** (doublings + 1) >= 1 - 1e-9:
        doublings += 1
    resize = scale / 2**doublings
    return (1.0 if abs(resize - 1) <= 0.02 else resize), doublings


def detect_scaled(detector, image: np.ndarray, scale: float, threshold: float = 0.0) -> list[tuple]:
    """Faces in one RGB image searched at `scale` (see split_scale), as (l, t, r, b, score) in its own pixels.
    `detector`: anything with .detect(images, upsample, threshold) (the PyTorch or the array detector)."""
    resize, doublings = split_scale(scale)
    boxes = detector.detect([resized_input(image, resize)], upsample=doublings, threshold=threshold)[0]
    return unresized(boxes, resize)


def resized_input(image: np.ndarray, resize: float) -> np.ndarray:
    """split_scale's plain resize of the image, before the doublings (none when it is 1)."""
    if resize == 1.0:
        return image
    import cv2

    h, w = resized_size(*image.shape[:2], resize)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if resize < 1 else cv2.INTER_LINEAR)


def unresized(boxes: list[tuple], resize: float) -> list[tuple]:
    """Faces found in resized_input's image -> in the image's own pixels."""
    if resize == 1.0:
        return boxes
    return [(l / resize, t / resize, r / resize, b / resize, score) for l, t, r, b, score in boxes]


def upsampled_planes(image: np.ndarray, upsample: int, resize: Resize) -> np.ndarray:
    """An RGB image as 3 x H x W planes, doubled by pyramid_up `upsample` times."""
    planes = as_rgb(image).transpose(2, 0, 1)
    for _ in range(upsample):
        planes = pyramid_up(planes, resize)
    return planes


class MmodArrayDetector:
    """The detector with its network as a function of float32 canvases N x 3 x H x W -> score maps
    N x 1 x h x w (an onnxruntime session of the exported MmodNet); the pyramid, decoding and NMS are the
    ones the PyTorch detector uses. One canvas per run: image sizes differ, so canvases do too.
    `resize`: the pyramid's align-corners resize (NumPy's by default; onnxruntime's Resize is ~10x faster)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], mean=DLIB_MEAN_RGB,
                 resize: Resize = resize_align_corners):
        self.run = run
        self.mean = np.asarray(mean, dtype=np.float32)
        self.resize = resize
        self.background: float | None = None  # background_max(run), measured on the first search

    def detect(self, images: list[np.ndarray], upsample: int = 0, threshold: float = 0.0) -> list[list[tuple]]:
        if upsample < 0:
            raise ValueError("upsample must be 0 or more")
        results = []
        for image in images:
            planes = upsampled_planes(image, upsample, self.resize)
            shape, rects = pyramid_rects(*planes.shape[1:])
            if not rects or min(output_size(n) for n in shape) <= 0:
                results.append([])
                continue
            scores = self.run(build_canvas(planes, self.mean, shape, rects, self.resize)[None])
            results.append(decode(np.asarray(scores)[0, 0], rects, upsample, threshold))
        return results

    def search(self, image: np.ndarray, scale: float, threshold: float = 0.0) -> "PyramidSearch":
        """The pyramid of one RGB image searched at `scale` (as `detect_scaled` does), level by level on demand."""
        if self.background is None:
            self.background = background_max(self.run)
        return PyramidSearch(self.run, image, scale, self.mean, self.resize, threshold, self.background)


# --- searching part of a pyramid ----------------------------------------------------------------------------

def background_max(run: Callable[[np.ndarray], np.ndarray]) -> float:
    """The network's highest score over a blank canvas (zeros: the mean colour) large enough that every cell
    kind is in it: interior cells, and cells near each border and corner, whose receptive field crosses the
    canvas edge. Any cell of any canvas that sees no image pixels scores one of these."""
    side = 4 * (RECEPTIVE_RADIUS + STRIDE)
    return float(np.max(run(np.zeros((1, 3, side, side), np.float32))))

# canvas pixels a score cell sees on each side: the network's receptive field is 189 px (convs above)
RECEPTIVE_RADIUS = sum((k - 1) * math.prod(s for _, _, _, s, _ in CONVS[:i]) for i, (_, _, k, _, _) in
                       enumerate(CONVS)) // 2 + 1
STRIDE = math.prod(s for _, _, _, s, _ in CONVS)


def cell_levels(shape, rects) -> tuple[np.ndarray, np.ndarray]:
    """For every score cell of a canvas (out_h x out_w arrays): the pyramid level it decodes to (cells_to_boxes'
    rule: the level whose rect holds the cell's centre, else the nearest one; the first wins ties), and whether
    its receptive field reaches any level's pixels (else it sees only the blank canvas)."""
    out_h, out_w = output_size(shape[0]), output_size(shape[1])
    y, x = cell_to_canvas(np.arange(out_h)), cell_to_canvas(np.arange(out_w))
    best = np.full((out_h, out_w), np.inf)
    level = np.zeros((out_h, out_w), dtype=np.int64)
    sees = np.zeros((out_h, out_w), dtype=bool)
    for k, (left, top, right, bottom) in enumerate(rects):
        dx = np.maximum(np.maximum(left - x, x - right), 0)
        dy = np.maximum(np.maximum(top - y, y - bottom), 0)
        dist = dy[:, None].astype(np.float64) ** 2 + dx[None, :] ** 2  # 0 inside the rect
        closer = dist < best  # strictly: the first rect wins ties
        best[closer], level[closer] = dist[closer], k
        sees |= (dy[:, None] <= RECEPTIVE_RADIUS) & (dx[None, :] <= RECEPTIVE_RADIUS)
    return level, sees


class PyramidSearch:
    """dlib's pyramid of one image, whose levels are searched when asked for (`run(levels)`): the network runs
    over the part of the canvas those levels' score cells see, so a caller that needs only the large faces
    pays for the coarse levels alone. A cell's score is the full canvas's (the crop holds its whole receptive
    field, or ends where the canvas does), and `faces()` decodes and NMS-es the cells searched so far exactly
    as `decode` does the whole canvas's: searching every level gives `detect_scaled`'s faces.

    `level_sides[k]`: the side, in the caller's pixels, of every box level k finds (one 80 px window per level)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], image: np.ndarray, scale: float, mean, resize,
                 threshold: float = 0.0, background: float = math.inf):
        self.network, self.threshold = run, threshold
        self.resize_factor, self.upsample = split_scale(scale)
        planes = upsampled_planes(resized_input(image, self.resize_factor), self.upsample, resize)
        self.shape, self.rects = pyramid_rects(*planes.shape[1:])
        self.searched: set[int] = set()
        self._cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        if not self.rects or min(output_size(n) for n in self.shape) <= 0:
            self.rects, self.levels, self.level_sides = [], None, []
            return
        self.pixels = pyramid_levels(planes, mean, self.rects, resize)  # the canvas is made crop by crop
        self.levels, sees = cell_levels(self.shape, self.rects)
        # a cell that sees only the blank canvas scores what the network gives a blank canvas: when that is
        # below the threshold everywhere (borders included: see background_max) such cells never find a face
        self.blind = ~sees if background <= threshold else np.zeros_like(sees)
        self.level_sides = [(WINDOW[0] - 1) * (6.0 / 5.0) ** k / 2**self.upsample / self.resize_factor
                            for k in range(len(self.rects))]

    def run(self, levels) -> None:
        """Search these levels (those searched already are skipped)."""
        todo = sorted(set(levels) - self.searched)
        self.searched.update(todo)
        if not todo or self.levels is None:
            return
        wanted = np.isin(self.levels, todo) & ~self.blind
        if not wanted.any():
            return
        rows, cols = np.nonzero(wanted)
        (r0, r1), (c0, c1) = (rows.min(), rows.max()), (cols.min(), cols.max())
        y0, x0 = self._start(r0), self._start(c0)
        y1 = min(self.shape[0], int(cell_to_canvas(np.int64(r1))) + RECEPTIVE_RADIUS + STRIDE)
        x1 = min(self.shape[1], int(cell_to_canvas(np.int64(c1))) + RECEPTIVE_RADIUS + STRIDE)
        scores = np.asarray(self.network(canvas_region(self.pixels, self.rects, y0, y1, x0, x1)[None]))[0, 0]
        dy, dx = y0 // STRIDE, x0 // STRIDE  # a crop starting at a multiple of the stride keeps the cell grid
        region = wanted[dy:dy + scores.shape[0], dx:dx + scores.shape[1]]
        hit = region & (scores > self.threshold)
        rows, cols = np.nonzero(hit)
        self._cells.append((rows + dy, cols + dx, scores[rows, cols].astype(np.float64)))

    @staticmethod
    def _start(cell: int) -> int:
        """The crop's first canvas pixel for a first cell: its receptive field's start, down to a stride multiple."""
        return max(0, (int(cell_to_canvas(np.int64(cell))) - RECEPTIVE_RADIUS) // STRIDE * STRIDE)

    def faces(self) -> list[tuple]:
        """(left, top, right, bottom, score) of the faces in the levels searched so far, in the caller's pixels."""
        if not self._cells:
            return []
        rows, cols, scores = (np.concatenate(part) for part in zip(*self._cells))
        order = np.lexsort((cols, rows))  # the whole map's cell order (decode's), so NMS breaks ties alike
        found = cells_to_faces(rows[order], cols[order], scores[order], self.rects, self.upsample)
        return unresized(found, self.resize_factor)
