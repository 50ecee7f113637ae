"""Face alignment the dlib way: a similarity fit of landmarks to a template, then a 150x150 chip.

Reproduces dlib's get_face_chip_details + extract_image_chip pixel for pixel (the chips dlib's face
ResNet was trained on): Umeyama similarity in double, the pyramid_down<2> pre-shrink for large faces,
bilinear sampling truncated to uint8, black outside the image. ../shared/specs/dlib-model-formats.md
section 6 describes each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------------- point names

FACE_68_GROUPS: dict[str, range] = {
    "jaw": range(0, 17),
    "right_eyebrow": range(17, 22),  # the subject's right: the image's left
    "left_eyebrow": range(22, 27),
    "nose_bridge": range(27, 31),
    "nose_tip": range(31, 36),
    "right_eye": range(36, 42),
    "left_eye": range(42, 48),
    "outer_lips": range(48, 60),
    "inner_lips": range(60, 68),
}
FACE_68_NAMES: list[str] = [f"{group}_{i - r.start}" for group, r in FACE_68_GROUPS.items() for i in r]
# Which points form closed outlines when drawn (the rest are open polylines).
FACE_68_CLOSED = ("right_eye", "left_eye", "outer_lips", "inner_lips")

# 5-point model: two corners of each eye and the base of the nose. Points 0-1 are on the image's right.
FACE_5_GROUPS: dict[str, range] = {"left_eye": range(0, 2), "right_eye": range(2, 4), "nose": range(4, 5)}
FACE_5_NAMES = ["left_eye_outer", "left_eye_inner", "right_eye_outer", "right_eye_inner", "nose_base"]

# ----------------------------------------------------------------------------------- templates

# dlib's alignment targets in [0, 1] face coordinates (dlib/image_transforms/interpolation.h).
TEMPLATE_5 = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
])

# The 68-point fit uses points 27-54 and 60-64 (nose, eyes, upper lip); brows, jaw and lower lip are left out.
TEMPLATE_68_INDEX = np.array([*range(27, 55), *range(60, 65)])
TEMPLATE_68 = np.array([
    [0.490127, 0.203352], [0.490127, 0.307009], [0.490127, 0.409805], [0.490127, 0.515625],  # 27-30
    [0.36688, 0.587326], [0.426036, 0.609345], [0.490127, 0.628106], [0.554217, 0.609345],  # 31-34
    [0.613373, 0.587326], [0.121737, 0.216423], [0.187122, 0.178758], [0.265825, 0.179852],  # 35-38
    [0.334606, 0.231733], [0.260918, 0.245099], [0.182743, 0.244077], [0.645647, 0.231733],  # 39-42
    [0.714428, 0.179852], [0.793132, 0.178758], [0.858516, 0.216423], [0.79751, 0.244077],  # 43-46
    [0.719335, 0.245099], [0.254149, 0.780233], [0.340985, 0.745405], [0.428858, 0.727388],  # 47-50
    [0.490127, 0.742578], [0.551395, 0.727388], [0.639268, 0.745405], [0.726104, 0.780233],  # 51-54
    [0.290379, 0.784792], [0.428096, 0.778746], [0.490127, 0.785343], [0.552157, 0.778746],  # 60-63
    [0.689874, 0.784792],  # 64
])


def template_points(num_parts: int, size: int = 150, padding: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(chip-pixel template points, the landmark indexes they pair with) for a 5- or 68-point shape."""
    if num_parts == 5:
        base, index = TEMPLATE_5, np.arange(5)
    elif num_parts == 68:
        base, index = TEMPLATE_68, TEMPLATE_68_INDEX
    else:
        raise ValueError(f"face alignment needs 5 or 68 landmarks, got {num_parts}")
    return (padding + base) / (2 * padding + 1) * size, index


# ----------------------------------------------------------------------------------- similarity


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (scale, rotation, translation) taking src points to dst: (M 2x2, t), dst ~ M src + t.

    Sums run point by point in double like dlib's find_similarity_transform, so the chip geometry
    derived from it agrees with dlib's to the last bit in practice.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = len(src)
    mean_src = np.cumsum(src, axis=0)[-1] / n
    mean_dst = np.cumsum(dst, axis=0)[-1] / n
    ds, dd = src - mean_src, dst - mean_dst
    sigma = np.cumsum((ds * ds).sum(axis=1))[-1] / n
    cov = np.cumsum(dd[:, :, None] * ds[:, None, :], axis=0)[-1] / n
    u, d, vt = np.linalg.svd(cov)
    s = np.ones(2)
    det = np.linalg.det(cov)
    if det < 0 or (det == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        s[1 if d[1] < d[0] else 0] = -1
    r = u @ np.diag(s) @ vt
    scale = (d * s).sum() / sigma if sigma != 0 else 1.0
    m = scale * r
    return m, mean_dst - m @ mean_src


# ----------------------------------------------------------------------------------- chip geometry


@dataclass(frozen=True)
class ChipDetails:
    """dlib's chip_details: a real-valued rect (l, t, r, b, inclusive) in the image, its rotation, the chip size."""

    rect: tuple[float, float, float, float]
    angle: float
    rows: int
    cols: int


def chip_details(landmarks, size: int = 150, padding: float = 0.25) -> ChipDetails:
    """dlib.get_face_chip_details for one face's 5 or 68 landmarks ((x, y) rows)."""
    points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    template, index = template_points(len(points), size, padding)
    m, t = umeyama(template, points[index])
    vx, vy = m @ np.array([1.0, 0.0])
    angle = math.atan2(vy, vx)
    scale = math.hypot(vx, vy)
    cx, cy = m @ (np.array([size, size], np.float64) / 2.0) + t
    half_w, half_h = (size * scale - 1) / 2, (size * scale - 1) / 2
    return ChipDetails((cx - half_w, cy - half_h, cx + half_w, cy + half_h), angle, size, size)


def _area(rect) -> float:
    l, t, r, b = rect
    return 0.0 if r < l or b < t else (r - l + 1) * (b - t + 1)


def _rect_down(rect):
    """pyramid_down<2>'s map of a rectangle into the next level: x/2 - 1.25, y/2 - 0.75 at both corners."""
    l, t, r, b = rect
    return (l / 2 - 1.25, t / 2 - 0.75, r / 2 - 1.25, b / 2 - 0.75)


def _rotate(center, point, angle):
    cos, sin = math.cos(angle), math.sin(angle)
    px, py = point[0] - center[0], point[1] - center[1]
    return (cos * px - sin * py + center[0], sin * px + cos * py + center[1])


def _corners(rect, angle):
    """The rect's tl, tr, bl, br corners rotated about its centre."""
    l, t, r, b = rect
    center = ((l + r) / 2, (t + b) / 2)
    return [_rotate(center, p, angle) for p in ((l, t), (r, t), (l, b), (r, b))]


def pyramid_down2(image: np.ndarray) -> np.ndarray:
    """dlib's pyramid_down<2> on a uint8 image: 5x5 binomial filter (1 4 6 4 1)^2 / 256, floored, every other pixel."""
    h, w = image.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0, *image.shape[2:]), np.uint8)
    oh, ow = (h - 3) // 2, (w - 3) // 2
    src = image.astype(np.int32)
    weights = (1, 4, 6, 4, 1)
    horiz = sum(k * src[:, j : j + 2 * ow : 2] for j, k in enumerate(weights))
    vert = sum(k * horiz[i : i + 2 * oh : 2] for i, k in enumerate(weights))
    return (vert >> 8).astype(np.uint8)


def sample_bilinear(source: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """dlib's interpolate_bilinear at real points: double blend, truncated to uint8; 0 where a neighbour is outside."""
    h, w = source.shape[:2]
    x0, y0 = np.floor(xs), np.floor(ys)
    ok = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    lr, tb = xs - x0, ys - y0
    xi = np.where(ok, x0, 0).astype(np.intp)
    yi = np.where(ok, y0, 0).astype(np.intp)
    if source.ndim == 3:
        lr, tb, ok = lr[..., None], tb[..., None], ok[..., None]
    if h < 2 or w < 2:
        return np.zeros((*xs.shape, *source.shape[2:]), np.uint8)
    src = source.astype(np.float64)
    tl, tr = src[yi, xi], src[yi, xi + 1]
    bl, br = src[yi + 1, xi], src[yi + 1, xi + 1]
    value = (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br)
    value = np.where(ok, np.clip(value, 0, 255), 0)
    return value.astype(np.uint8)


def extract_chip(image: np.ndarray, details: ChipDetails) -> np.ndarray:
    """dlib.extract_image_chip(image, details) for one chip: rows x cols (x 3), uint8, black outside the image."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWx3 image, got {image.dtype} {image.shape}")
    rows, cols = details.rows, details.cols
    rect, angle = details.rect, details.angle
    l, t, r, b = rect
    if angle == 0 and rows == b - t + 1 and cols == r - l + 1:  # dlib copies instead of resampling
        return _plain_crop(image, int(math.floor(l + 0.5)), int(math.floor(t + 0.5)), rows, cols)

    # How deep a pyramid the face needs, and the crop (with a margin for the filter) that feeds it.
    depth, grow, down = 0, 2.0, _rect_down(rect)
    while _area(down) > rows * cols:
        down = _rect_down(down)
        depth += 1
        grow = grow * 2 + 2
    corners = _corners(rect, angle)
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    img_h, img_w = image.shape[:2]
    box = (max(min(xs) - grow, 0.0), max(min(ys) - grow, 0.0),
           min(max(xs) + grow, img_w - 1.0), min(max(ys) + grow, img_h - 1.0))
    bl, bt, br, bb = (int(math.floor(v + 0.5)) for v in box)
    shape = (rows, cols, *image.shape[2:])
    if br < bl or bb < bt:
        return np.zeros(shape, np.uint8)
    source = image[bt : bb + 1, bl : br + 1]

    # The pyramid level whose resolution is just above the chip's.
    level, rr = -1, (l - bl, t - bt, r - bl, b - bt)
    while _area(_rect_down(rr)) > rows * cols:
        level += 1
        rr = _rect_down(rr)
    for _ in range(level + 1):
        source = pyramid_down2(source)

    # Chip pixel (c, r) -> source point: the affine through the rotated tl, tr and bl corners of rr.
    (x00, y00), (x10, y10), (x01, y01), _ = _corners(rr, angle)
    ax, ay = (x10 - x00) / (cols - 1), (y10 - y00) / (cols - 1)
    bx, by = (x01 - x00) / (rows - 1), (y01 - y00) / (rows - 1)
    cc, rrr = np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64))
    sx = (ax * cc + bx * rrr) + x00
    sy = (ay * cc + by * rrr) + y00
    return sample_bilinear(source, sx, sy).reshape(shape)


def _plain_crop(image: np.ndarray, left: int, top: int, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols, *image.shape[2:]), np.uint8)
    h, w = image.shape[:2]
    y0, y1, x0, x1 = max(top, 0), min(top + rows, h), max(left, 0), min(left + cols, w)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return out


def face_chip(image: np.ndarray, landmarks, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """dlib.get_face_chip: the aligned size x size chip for one face's 5 or 68 landmarks."""
    return extract_chip(image, chip_details(landmarks, size, padding))


def chip_to_image(details: ChipDetails) -> tuple[np.ndarray, np.ndarray]:
    """(A, t) mapping chip pixel (x, y) to image coordinates, image = A @ chip + t (for drawing, checks)."""
    (x00, y00), (x10, y10), (x01, y01), _ = _corners(details.rect, details.angle)
    a = np.array([[(x10 - x00) / (details.cols - 1), (x01 - x00) / (details.rows - 1)],
                  [(y10 - y00) / (details.cols - 1), (y01 - y00) / (details.rows - 1)]])
    return a, np.array([x00, y00])
