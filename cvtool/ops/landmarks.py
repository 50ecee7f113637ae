"""Landmark geometry, one home for training, inference and scoring: point layouts (left/right mirror pairs and
the error's normaliser, declared as data), the square crop a face's box defines and the affine map from an
image into it and back, and the normalised mean error (NME).

Coordinates are pixels with pixel centres at integers (OpenCV's, dlib's); a network regresses each point as a
fraction of its square crop (0 at the crop's left/top edge, 1 at its right/bottom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CROP_SCALE = 1.3  # the crop's side: this times the larger side of the reference box (the points' bounding box)
FAILURE_AT = (0.08, 0.10)  # NME thresholds of the failure rates reported


# -- layouts: what the points are ------------------------------------------------------------------------------

def _mirror(n: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    """The permutation a horizontal flip applies: point i of the flipped image is point perm[i] of the original."""
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


@dataclass(frozen=True)
class Layout:
    """A point set: its name, size, left/right pairs (a flip swaps them) and the two points whose distance
    normalises the error (None: the diagonal of the true points' bounding box)."""

    name: str
    num_points: int
    pairs: tuple[tuple[int, int], ...]
    eyes: tuple[int, int] | None = None

    @property
    def flip(self) -> tuple[int, ...]:
        return _mirror(self.num_points, list(self.pairs))

    @property
    def normaliser(self) -> str:
        return "inter-ocular (outer eye corners)" if self.eyes is not None else "box diagonal"

    def to_dict(self) -> dict:
        return {"name": self.name, "num_points": self.num_points, "pairs": [list(p) for p in self.pairs],
                "eyes": list(self.eyes) if self.eyes is not None else None}

    @classmethod
    def from_dict(cls, data: dict) -> "Layout":
        return cls(str(data["name"]), int(data["num_points"]), tuple(tuple(int(v) for v in p) for p in data["pairs"]),
                   tuple(int(v) for v in data["eyes"]) if data.get("eyes") is not None else None)


# iBUG 300-W, 68 points (0-based): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67. The subject's
# right is the image's left. The error is normalised by the outer eye corners 36 and 45 (300-W's convention).
IBUG_68 = Layout("ibug68", 68, (
    *((i, 16 - i) for i in range(8)),                        # jaw
    *((17 + i, 26 - i) for i in range(5)),                   # brows
    (31, 35), (32, 34),                                      # nose base
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),  # eyes
    (48, 54), (49, 53), (50, 52), (55, 59), (56, 58),        # outer lips
    (60, 64), (61, 63), (65, 67),                            # inner lips
), eyes=(36, 45))
# dlib's 5 points: the eye on the image's right (outer, inner), the other eye (outer, inner), the nose base.
DLIB_5 = Layout("dlib5", 5, ((0, 2), (1, 3)), eyes=(0, 2))
LAYOUTS = {layout.num_points: layout for layout in (IBUG_68, DLIB_5)}


def layout_for(num_points: int, pairs: list[tuple[int, int]] | None = None) -> Layout:
    """The declared layout of `num_points` points (68: iBUG, 5: dlib), or a generic one with `pairs`."""
    if pairs is not None:
        for a, b in pairs:
            if not (0 <= a < num_points and 0 <= b < num_points) or a == b:
                raise ValueError(f"flip pair {a}:{b} is not two different points of 0-{num_points - 1}")
        flat = [i for p in pairs for i in p]
        if len(set(flat)) != len(flat):
            raise ValueError("a point appears in two flip pairs")
        return Layout(f"points{num_points}", num_points, tuple(tuple(p) for p in pairs))
    return LAYOUTS.get(num_points) or Layout(f"points{num_points}", num_points, ())


def format_pts(points: np.ndarray) -> str:
    """iBUG's .pts text (with its `version / n_points / { }` header) of N x 2 points."""
    rows = "".join(f"{x:.3f} {y:.3f}\n" for x, y in np.asarray(points, np.float64))
    return f"version: 1\nn_points: {len(points)}\n{{\n{rows}}}\n"


# -- the crop --------------------------------------------------------------------------------------------------

def points_box(points: np.ndarray) -> np.ndarray:
    """The bounding box (x1, y1, x2, y2) of N x 2 points."""
    points = np.asarray(points, np.float64)
    return np.array([*points.min(0), *points.max(0)])


def crop_square(box, scale: float = CROP_SCALE) -> tuple[float, float, float]:
    """(cx, cy, side): the square crop around a reference box, `scale` times its larger side."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1, 1.0) * scale


def crop_matrix(cx: float, cy: float, side: float, size: int, *, angle: float = 0.0,
                flip: bool = False) -> np.ndarray:
    """The 2 x 3 affine map from image pixels into a `size` x `size` crop of the square (cx, cy, side), turned
    by `angle` degrees (anticlockwise in the image) and mirrored left/right when `flip`."""
    s = size / side
    a = math.radians(angle)
    cos, sin = math.cos(a) * s, math.sin(a) * s
    linear = np.array([[cos, sin], [-sin, cos]])
    if flip:
        linear = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ linear
    centre = (size - 1) / 2
    offset = np.array([centre, centre]) - linear @ np.array([cx, cy])
    return np.hstack([linear, offset[:, None]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, (-linear @ matrix[:, 2])[:, None]])


def warp(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The `size` x `size` crop `matrix` maps the image into (black outside it). A crop that shrinks the image
    more than 2x first reduces the region it covers with area averaging (no aliasing), then warps bilinearly."""
    import cv2

    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 0.5:
        corners = apply(invert(matrix), np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64))
        h, w = rgb.shape[:2]
        x1, y1 = (max(0, int(math.floor(v)) - 2) for v in corners.min(0))
        x2, y2 = (int(math.ceil(v)) + 2 for v in corners.max(0))
        x2, y2 = min(w, x2), min(h, y2)
        if x2 > x1 and y2 > y1:
            factor = scale * 2  # reduce to twice the crop's resolution
            region = rgb[y1:y2, x1:x2]
            rw, rh = max(1, round((x2 - x1) * factor)), max(1, round((y2 - y1) * factor))
            region = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
            fx, fy = rw / (x2 - x1), rh / (y2 - y1)
            # region pixel (u, v) <- image pixel ((u + 0.5) / f - 0.5 + x1, ...)
            to_image = np.array([[1 / fx, 0, (0.5 / fx) - 0.5 + x1], [0, 1 / fy, (0.5 / fy) - 0.5 + y1]])
            offset = matrix[:, :2] @ to_image[:, 2] + matrix[:, 2]
            matrix = np.hstack([matrix[:, :2] @ to_image[:, :2], offset[:, None]])
            rgb = region
    return cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def to_crop_fractions(points_in_crop: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(points_in_crop, np.float64) / (size - 1)


def from_crop_fractions(fractions: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """A network's points (fractions of its crop) in the image's pixels."""
    return apply(invert(matrix), np.asarray(fractions, np.float64).reshape(-1, 2) * (size - 1))


# -- detector boxes -> reference boxes ------------------------------------------------------------------------

@dataclass(frozen=True)
class BoxFit:
    """How a face detector's boxes relate to the points' bounding boxes the network was trained on, measured on
    training faces: the reference box's centre is the detector box's centre + (dx, dy) x its side, its larger side
    `scale` x the detector box's side (the mean of its width and height)."""

    detector: str
    dx: float
    dy: float
    scale: float
    faces: int
    min_face: float

    def reference_box(self, box) -> np.ndarray:
        x1, y1, x2, y2 = (float(v) for v in box)
        side = ((x2 - x1) + (y2 - y1)) / 2
        cx, cy = (x1 + x2) / 2 + self.dx * side, (y1 + y2) / 2 + self.dy * side
        half = self.scale * side / 2
        return np.array([cx - half, cy - half, cx + half, cy + half])

    def to_dict(self) -> dict:
        return {"detector": self.detector, "dx": self.dx, "dy": self.dy, "scale": self.scale, "faces": self.faces,
                "min_face": self.min_face}

    @classmethod
    def from_dict(cls, data: dict) -> "BoxFit":
        return cls(str(data["detector"]), float(data["dx"]), float(data["dy"]), float(data["scale"]),
                   int(data["faces"]), float(data["min_face"]))


def fit_boxes(detected: list, truth: list, detector: str, min_face: float) -> BoxFit | None:
    """The BoxFit of pairs (detector box, points box); None without pairs. Medians: a few bad matches move
    nothing."""
    if not detected:
        return None
    d, t = np.asarray(detected, np.float64), np.asarray(truth, np.float64)
    side = ((d[:, 2] - d[:, 0]) + (d[:, 3] - d[:, 1])) / 2
    dx = ((t[:, 0] + t[:, 2]) - (d[:, 0] + d[:, 2])) / 2 / side
    dy = ((t[:, 1] + t[:, 3]) - (d[:, 1] + d[:, 3])) / 2 / side
    scale = np.maximum(t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]) / side
    return BoxFit(detector, round(float(np.median(dx)), 5), round(float(np.median(dy)), 5),
                  round(float(np.median(scale)), 5), len(d), float(min_face))


def box_iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# -- the error -------------------------------------------------------------------------------------------------

def normalisers(truth: np.ndarray, layout: Layout) -> np.ndarray:
    """Per face (truth: F x N x 2): the inter-ocular distance (the layout's eye points), else the diagonal of the
    true points' bounding box."""
    truth = np.asarray(truth, np.float64)
    if layout.eyes is not None:
        a, b = layout.eyes
        return np.linalg.norm(truth[:, a] - truth[:, b], axis=1)
    extent = truth.max(1) - truth.min(1)
    return np.linalg.norm(extent, axis=1)


def nme(predicted: np.ndarray, truth: np.ndarray, layout: Layout) -> np.ndarray:
    """Per face: the mean point-to-point distance over the normaliser (F x N x 2 each, the same pixels)."""
    predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    distances = np.linalg.norm(predicted - truth, axis=2).mean(1)
    return distances / np.maximum(normalisers(truth, layout), 1e-9)


def nme_summary(errors: np.ndarray, layout: Layout) -> dict:
    """Mean NME, and the failure rates (fraction of faces above each FAILURE_AT)."""
    errors = np.asarray(errors, np.float64)
    out = {"nme": round(float(errors.mean()), 5) if len(errors) else None, "faces": int(len(errors)),
           "normaliser": layout.normaliser}
    for at in FAILURE_AT:
        out[f"failure_{at:.2f}"] = round(float((errors > at).mean()), 4) if len(errors) else None
    return out
