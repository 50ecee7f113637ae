"""dlib's face landmark predictors (an ensemble of regression trees, Kazemi & Sullivan 2014), in NumPy.

Reproduces `dlib.shape_predictor` exactly (same integer points): float32 feature geometry and leaf
sums in file order, round-half-up pixel lookups, integer RGB intensity. See
../shared/specs/dlib-model-formats.md sections 1 and 5 for the file layout and the algorithm.

The files hold ~16 M (5-point) and ~63 M (68-point) variable-length integers and nothing else, so the
parser finds every integer's position with a vectorised chain walk instead of a byte-at-a-time loop
(about 1 s instead of 12 s for the 68-point file); the parsed arrays are cached as a state_dict in the
user cache (cvtool.models.dlib.convert) so later loads take a fraction of a second.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.models.dlib.serialize import DlibReader

# The two predictors shipped by face_recognition_models, by short name.
PACKAGED = {
    "5": "shape_predictor_5_face_landmarks.dat",
    "68": "shape_predictor_68_face_landmarks.dat",
}
_NAMES = {"5": "5", "shape_predictor_5": "5", "68": "68", "shape_predictor_68": "68"}
_NAMES.update({v: k for k, v in PACKAGED.items()})

_INF, _NEG_INF, _NAN = 32000, 32001, 32002


@dataclass
class ShapePredictor:
    """The parsed model: C cascades of T depth-D trees (S = 2^D - 1 splits each), P landmarks, F feature pixels."""

    initial_shape: np.ndarray  # (P, 2) float32, box-normalised mean shape
    split_idx: np.ndarray  # (C, T, S, 2) int64: the two feature pixels each split compares
    split_thresh: np.ndarray  # (C, T, S) float32
    leaves: np.ndarray  # (C, T, S + 1, P * 2) float32: shape increments, x0 y0 x1 y1 ...
    anchors: np.ndarray  # (C, F) int64: the landmark each feature pixel hangs off
    deltas: np.ndarray  # (C, F, 2) float32: its offset in normalised shape space
    source: str = ""

    @property
    def num_parts(self) -> int:
        return self.initial_shape.shape[0]

    def state_dict(self) -> dict:
        import torch

        return {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name))) for name in _FIELDS}

    @classmethod
    def from_state_dict(cls, state: dict, source: str = "") -> "ShapePredictor":
        arrays = {name: np.asarray(state[name]) if isinstance(state[name], np.ndarray) else state[name].numpy()
                  for name in _FIELDS}
        return cls(**arrays, source=source)

    def predict(self, image: np.ndarray, boxes) -> np.ndarray:
        return predict(self, image, boxes)


_FIELDS = ("initial_shape", "split_idx", "split_thresh", "leaves", "anchors", "deltas")


# ------------------------------------------------------------------------------------------- parsing


def _int_positions(buf: np.ndarray, source: str) -> np.ndarray:
    """Byte offsets of every integer header in a file made only of §1.1 integers, in order.

    Each integer's length is in its header byte, so position k+1 depends on position k. Walkers started
    every `spacing` bytes follow their own chains in lockstep; a walker that starts mid-integer reads
    garbage for a few steps, then lands on a true header and from there on coincides with the true
    chain. Stitching walkers at a position both visit is exact (positions strictly increase), and any
    gap is bridged by plain stepping, so the result does not depend on how fast walkers synchronise.
    """
    size = len(buf)
    padded = np.concatenate([buf, np.zeros(1, np.uint8)])
    advance = np.concatenate([(buf & 0x0F) + np.uint8(1), np.zeros(32, np.uint8)])  # 0 past the end: walkers park
    spacing = 4096
    max_steps = spacing // 2 + 512  # a true integer takes >= 2 bytes, so a merged walker overruns the next start
    group = 8192
    out: list[np.ndarray] = [np.array([0], np.int64)]
    pos = 0  # the last known true header

    def step(p: int) -> int:
        return p + 1 + (int(padded[p]) & 0x0F)

    for first in range(0, size, spacing * group):
        walkers = np.arange(first, min(size, first + spacing * group), spacing, dtype=np.int32)
        trail = np.empty((max_steps, len(walkers)), np.int32)
        cur = walkers.copy()
        taken = max_steps
        for s in range(max_steps):
            trail[s] = cur
            cur += advance[cur]
            if s % 64 == 63 and int((cur - walkers).min()) > spacing + 512:
                taken = s + 1
                break
        trail = np.ascontiguousarray(trail[:taken].T)  # one row per walker
        for k in range(len(walkers)):
            path = trail[k]
            end = int(np.searchsorted(path, size))
            path = path[:end]
            if not end or path[-1] <= pos:
                continue
            while pos < size:
                i = int(np.searchsorted(path, pos))
                if i < end and path[i] == pos:
                    out.append(path[i + 1 :])
                    pos = int(path[-1])
                    break
                if i >= end:  # the walker ends before the true chain reaches it
                    break
                pos = step(pos)
                if pos < size:
                    out.append(np.array([pos], np.int64))
    while (nxt := step(pos)) < size:
        pos = nxt
        out.append(np.array([pos], np.int64))
    if step(pos) != size:
        raise DlibReader(b"", source).fail(f"file ends early (last integer at byte {pos} runs past byte {size})")
    return np.concatenate(out)


class _Ints:
    """A cursor over the decoded integers, with the byte offset of each one for error messages."""

    def __init__(self, buf: np.ndarray, source: str):
        self.source = source
        self.offsets = _int_positions(buf, source)
        padded = np.concatenate([buf, np.zeros(9, np.uint8)])
        header = padded[self.offsets]
        count = header & 0x0F
        bad = ((header & 0x70) != 0) | (count == 0) | (count > 8)
        if bad.any():
            at = int(np.argmax(bad))
            raise self._fail(f"bad integer header 0x{int(header[at]):02x}", at)
        # Each payload is read as one unaligned little-endian 8-byte word, then masked to its length.
        words = np.ndarray((len(buf),), dtype="<u8", buffer=padded, offset=1, strides=(1,))
        payload = words[self.offsets]
        keep = np.where(count >= 8, np.uint64(0xFFFFFFFFFFFFFFFF),
                        (np.uint64(1) << (np.uint64(8) * np.minimum(count, 7).astype(np.uint64))) - np.uint64(1))
        magnitude = payload & keep
        self.negative = (header & 0x80) != 0
        self.magnitude = magnitude
        self.at = 0

    def _fail(self, reason: str, index: int) -> Exception:
        reader = DlibReader(b"", self.source)
        reader.pos = int(self.offsets[index]) if index < len(self.offsets) else -1
        return reader.fail(reason)

    def fail(self, reason: str) -> Exception:
        return self._fail(reason, self.at)

    def int(self) -> int:
        if self.at >= len(self.magnitude):
            raise self._fail("file ends early", len(self.offsets) - 1)
        value = int(self.magnitude[self.at])
        self.at += 1
        return -value if self.negative[self.at - 1] else value

    def count(self, what: str, limit: int = 1 << 24) -> int:
        value = self.int()
        if not 0 <= value <= limit:
            self.at -= 1
            raise self.fail(f"{what} is {value}")
        return value

    def ints(self, start: np.ndarray) -> np.ndarray:
        """Signed integers at the given indexes."""
        if len(start) and start.max() >= len(self.magnitude):
            raise self._fail("file ends early", len(self.offsets) - 1)
        value = self.magnitude[start].astype(np.int64)
        return np.where(self.negative[start], -value, value)

    def reals(self, start: np.ndarray) -> np.ndarray:
        """§1.2 reals whose mantissa integers sit at the given indexes (the exponent follows each)."""
        if len(start) and start.max() + 1 >= len(self.magnitude):
            raise self._fail("file ends early", len(self.offsets) - 1)
        mantissa = self.magnitude[start].astype(np.float64)
        mantissa = np.where(self.negative[start], -mantissa, mantissa)
        exponent = self.ints(start + 1)
        special = exponent >= _INF
        value = np.ldexp(mantissa, np.where(special, 0, exponent).astype(np.int32))
        if special.any():
            value = np.where(exponent == _INF, np.inf, value)
            value = np.where(exponent == _NEG_INF, -np.inf, value)
            value = np.where(exponent == _NAN, np.nan, value)
        return value

    def matrix_column(self, rows: int, what: str) -> np.ndarray:
        """A dlib::matrix that must be rows x 1."""
        nr, nc = abs(self.int()), abs(self.int())
        if (nr, nc) != (rows, 1):
            self.at -= 2
            raise self.fail(f"{what} is {nr}x{nc}, expected {rows}x1")
        values = self.reals(self.at + 2 * np.arange(rows))
        self.at += 2 * rows
        return values


def parse_shape_predictor(path: str | Path) -> ShapePredictor:
    """Parse a dlib shape_predictor .dat file; a one-line WeightsError naming it when it is not one."""
    reader = DlibReader.open(path)
    buf = np.frombuffer(reader.data, np.uint8)
    if not len(buf):
        raise reader.fail("empty file")
    ints = _Ints(buf, reader.source)
    version = ints.int()
    if version != 1:
        raise ints._fail(f"shape_predictor version is {version}, expected 1", 0)
    nr, nc = abs(ints.int()), abs(ints.int())
    if nc != 1 or nr % 2 or not 2 <= nr <= 2000:
        raise ints._fail(f"initial shape is {nr}x{nc}, expected 2P x 1", 1)
    parts = nr // 2
    ints.at -= 2
    initial = ints.matrix_column(nr, "initial shape")

    cascades = ints.count("number of cascades", 1000)
    if not cascades:
        raise ints.fail("no cascades")
    split_at, leaf_at, trees_per = [], [], []
    splits_per_tree = None
    leaf_stride = 2 + 2 * nr
    for _ in range(cascades):
        trees = ints.count("number of trees", 100_000)
        trees_per.append(trees)
        for _ in range(trees):
            splits = ints.count("number of splits", 1 << 16)
            if splits_per_tree is None:
                splits_per_tree = splits
            if splits != splits_per_tree or splits == 0:
                ints.at -= 1
                raise ints.fail(f"a tree has {splits} splits, the first had {splits_per_tree}")
            split_at.append(ints.at)
            ints.at += 4 * splits
            leaves = ints.count("number of leaves", 1 << 17)
            if leaves != splits + 1:
                ints.at -= 1
                raise ints.fail(f"a tree has {leaves} leaves for {splits} splits")
            leaf_at.append(ints.at)
            ints.at += leaves * leaf_stride
    if len(set(trees_per)) != 1:
        raise ints.fail(f"cascades have different numbers of trees {sorted(set(trees_per))}")
    trees = trees_per[0]
    s = splits_per_tree
    if ints.at > len(ints.magnitude):
        raise ints._fail("file ends early", len(ints.offsets) - 1)

    # Splits: idx1, idx2, thresh (mantissa, exponent) per split.
    split_base = np.asarray(split_at, np.int64)[:, None] + 4 * np.arange(s)
    idx = np.stack([ints.ints(split_base), ints.ints(split_base + 1)], axis=-1)
    thresh = ints.reals(split_base + 2)
    # Leaves: each a matrix header (-2P, -1) then 2P reals.
    leaf_base = np.asarray(leaf_at, np.int64)[:, None] + leaf_stride * np.arange(s + 1)
    dims = np.abs(np.stack([ints.ints(leaf_base), ints.ints(leaf_base + 1)], axis=-1))
    wrong = (dims[..., 0] != nr) | (dims[..., 1] != 1)
    if wrong.any():
        ints.at = int(leaf_base.reshape(-1)[np.argmax(wrong.reshape(-1))])
        raise ints.fail(f"a leaf is {dims.reshape(-1, 2)[np.argmax(wrong.reshape(-1))].tolist()}, expected {nr}x1")
    values = ints.reals(leaf_base[..., None] + 2 + 2 * np.arange(nr))

    anchors_count = ints.count("number of anchor lists", 1000)
    if anchors_count != cascades:
        ints.at -= 1
        raise ints.fail(f"{anchors_count} anchor lists for {cascades} cascades")
    anchors = []
    for _ in range(cascades):
        n = ints.count("number of feature pixels", 1 << 20)
        anchors.append(ints.ints(ints.at + np.arange(n)))
        ints.at += n
    deltas_count = ints.count("number of delta lists", 1000)
    if deltas_count != cascades:
        ints.at -= 1
        raise ints.fail(f"{deltas_count} delta lists for {cascades} cascades")
    deltas = []
    for c in range(cascades):
        n = ints.count("number of feature pixels", 1 << 20)
        if n != len(anchors[c]) or n != len(anchors[0]):
            ints.at -= 1
            raise ints.fail(f"{n} deltas for {len(anchors[c])} anchors")
        deltas.append(ints.reals(ints.at + 2 * np.arange(2 * n)).reshape(n, 2))
        ints.at += 4 * n
    if ints.at != len(ints.magnitude):
        raise ints.fail(f"{len(ints.magnitude) - ints.at} integers left over after the last record")

    features = len(anchors[0])
    anchors = np.stack(anchors)
    if anchors.min(initial=0) < 0 or anchors.max(initial=0) >= parts:
        raise ints._fail("an anchor index is out of range", len(ints.offsets) - 1)
    if idx.min() < 0 or idx.max() >= features:
        raise ints._fail("a split index is out of range", 0)
    if not (np.isfinite(thresh).all() and np.isfinite(values).all() and np.isfinite(initial).all()):
        raise ints._fail("a value is not finite", 0)
    return ShapePredictor(
        initial_shape=initial.astype(np.float32).reshape(parts, 2),
        split_idx=idx.reshape(cascades, trees, s, 2),
        split_thresh=thresh.astype(np.float32).reshape(cascades, trees, s),
        leaves=values.astype(np.float32).reshape(cascades, trees, s + 1, nr),
        anchors=anchors.astype(np.int64),
        deltas=np.stack(deltas).astype(np.float32),
        source=str(path),
    )


# ------------------------------------------------------------------------------------------- loading

_memo: dict[tuple, ShapePredictor] = {}
_memo_lock = threading.Lock()


def resolve_path(path_or_name: str | Path) -> Path:
    """'5' / '68' / a packaged file name -> the installed file; anything else is a path."""
    key = str(path_or_name)
    if key in _NAMES:
        from cvtool.models.dlib.convert import face_model_path

        return face_model_path(PACKAGED[_NAMES[key]])
    return Path(path_or_name)


def load_shape_predictor(path_or_name: str | Path = "68") -> ShapePredictor:
    """The parsed predictor, from this process's memo, the user cache, or a fresh parse (then cached)."""
    from cvtool.errors import WeightsError
    from cvtool.models.dlib.convert import converted_arrays

    path = resolve_path(path_or_name)
    try:
        stat = path.stat()
    except OSError as exc:
        raise WeightsError(f"cannot read dlib shape predictor ({exc.strerror or exc})", path) from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    # NumPy arrays read without torch from the verified cache (torch only to convert on a first run)
    state = converted_arrays(path, lambda p: parse_shape_predictor(p).state_dict(), _cache_name(path))
    try:
        model = ShapePredictor.from_state_dict(state, source=str(path))
    except (KeyError, AttributeError):
        model = parse_shape_predictor(path)
    with _memo_lock:
        _memo[key] = model
    return model


def _cache_name(path: Path) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in path.stem)[:60]
    return f"shape_predictor-{stem}"


# ------------------------------------------------------------------------------------------- prediction


def _similarity_m(initial: np.ndarray, current: np.ndarray) -> np.ndarray:
    """The 2x2 part of dlib's find_similarity_transform(initial -> current) per face (Umeyama), in double.

    Means and sums are sequential (cumsum), as dlib's loops are; the SVD is LAPACK's, which differs
    from dlib's at the 1e-16 level, far below the float32 cast that follows.
    """
    src = initial.astype(np.float64)  # (P, 2)
    dst = current.astype(np.float64)  # (N, P, 2)
    n = src.shape[0]
    mean_src = np.cumsum(src, axis=0)[-1] / n
    mean_dst = np.cumsum(dst, axis=1)[:, -1] / n
    ds = src - mean_src
    dd = dst - mean_dst[:, None]
    sigma = np.cumsum((ds * ds).sum(axis=1))[-1] / n
    cov = np.cumsum(dd[:, :, :, None] * ds[None, :, None, :], axis=1)[:, -1] / n  # (N, 2, 2): to x from
    u, d, vt = np.linalg.svd(cov)
    s = np.ones((len(cov), 2))
    det = np.linalg.det(cov)
    flip = (det < 0) | ((det == 0) & (np.linalg.det(u) * np.linalg.det(vt) < 0))
    smaller = np.where(d[:, 1] < d[:, 0], 1, 0)
    s[flip, smaller[flip]] = -1
    r = u @ (s[:, :, None] * vt)
    scale = (d * s).sum(axis=1) / sigma if sigma != 0 else np.ones(len(cov))
    return scale[:, None, None] * r


def _box_map(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Normalised shape coordinates -> integer pixels: round_half_up(l + x (r - l), t + y (b - t)) in double."""
    left, top = boxes[:, None, 0], boxes[:, None, 1]
    width, height = (boxes[:, 2] - boxes[:, 0])[:, None], (boxes[:, 3] - boxes[:, 1])[:, None]
    pts = points.astype(np.float64)
    x = np.floor(width * pts[..., 0] + left + 0.5)
    y = np.floor(height * pts[..., 1] + top + 0.5)
    return np.stack([x, y], axis=-1).astype(np.int64)


def predict(model: ShapePredictor, image: np.ndarray, boxes) -> np.ndarray:
    """Landmarks for each box (l, t, r, b, inclusive, dlib convention) as an (N, P, 2) int64 array of (x, y).

    `image` is uint8 gray (HxW) or RGB (HxWx3); RGB pixels count as (R + G + B) // 3, as in dlib.

    Vectorised over faces and over the trees of a cascade; the leaf increments are still added one
    tree after another in float32 (a cumulative sum), because dlib's sequential order decides roundings.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected a uint8 HxW or HxWx3 image, got {image.dtype} {image.shape}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    faces = len(boxes)
    parts = model.num_parts
    if not faces:
        return np.zeros((0, parts, 2), np.int64)
    boxes = np.floor(boxes + 0.5)  # dlib rectangles are integer
    height, width = image.shape[:2]
    flat = image.reshape(height * width, -1)  # intensities are computed only at the sampled pixels
    current = np.repeat(model.initial_shape[None], faces, axis=0)  # (N, P, 2) float32
    cascades, trees, splits, _ = model.split_idx.shape
    depth = int(np.log2(splits + 1))
    tree_ix = np.arange(trees)
    face_ix = np.arange(faces)[:, None]
    for c in range(cascades):
        m = _similarity_m(model.initial_shape, current).astype(np.float32)  # (N, 2, 2)
        delta = model.deltas[c]  # (F, 2)
        anchor = current[:, model.anchors[c]]  # (N, F, 2)
        qx = (m[:, None, 0, 0] * delta[None, :, 0] + m[:, None, 0, 1] * delta[None, :, 1]) + anchor[..., 0]
        qy = (m[:, None, 1, 0] * delta[None, :, 0] + m[:, None, 1, 1] * delta[None, :, 1]) + anchor[..., 1]
        pix = _box_map(np.stack([qx, qy], axis=-1), boxes)  # (N, F, 2)
        inside = (pix[..., 0] >= 0) & (pix[..., 0] < width) & (pix[..., 1] >= 0) & (pix[..., 1] < height)
        where = np.where(inside, pix[..., 1] * width + pix[..., 0], 0)
        sampled = flat[where]  # (N, F, 1 or 3) uint8
        value = sampled[..., 0] if sampled.shape[-1] == 1 else sampled.sum(axis=-1, dtype=np.uint16) // 3
        feat = np.where(inside, value.astype(np.float32), np.float32(0))  # (N, F) float32
        node = np.zeros((faces, trees), np.int64)
        idx, thresh = model.split_idx[c], model.split_thresh[c]
        for _ in range(depth):
            pair = idx[tree_ix, node]  # (N, T, 2)
            diff = feat[face_ix, pair[..., 0]] - feat[face_ix, pair[..., 1]]
            node = np.where(diff > thresh[tree_ix, node], 2 * node + 1, 2 * node + 2)
        picked = model.leaves[c][tree_ix, node - splits]  # (N, T, 2P)
        stack = np.concatenate([current.reshape(faces, 1, 2 * parts), picked], axis=1)
        current = np.cumsum(stack, axis=1, dtype=np.float32)[:, -1].reshape(faces, parts, 2)
    return _box_map(current, boxes)

