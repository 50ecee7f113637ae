"""Multi-object tracking by detection: each frame's boxes in, a track id per box out.

`ByteTracker` is ByteTrack (Y. Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection
Box", ECCV 2022, arXiv:2110.06864), written here from the paper: a constant-velocity Kalman filter per track over
(centre x, centre y, aspect ratio w/h, height) and their velocities (the SORT/DeepSORT motion model), then per frame

1. every live track (tracked or lost) is predicted one frame on;
2. the high-score boxes (score >= `track_high`) are matched to them by IoU (multiplied by the box's score,
   `fuse_score`), Hungarian assignment (SciPy's `linear_sum_assignment`), pairs below `match_iou` refused;
3. the low-score boxes (`track_low` <= score < `track_high`), which most trackers throw away, are matched to the
   tracks still unmatched that were tracked in the previous frame (IoU >= 0.5): an occluded object's weak box keeps
   its track alive and its id unchanged; tracks still unmatched become lost;
4. a track born in the previous frame is confirmed only when a high-score box matches it now (IoU >= 0.3), else it
   is dropped (a one-frame false positive makes no id);
5. a high-score box left over with score >= `new_track` starts a track (confirmed at once in the first frame);
6. a lost track is forgotten after `track_buffer` frames without a box; a lost track that overlaps a tracked one
   (IoU > 0.85) is a duplicate and the younger of the two goes.

Boxes match only boxes of their own class (`labels`). `IoUTracker` is the plain baseline the bench compares
against: Hungarian matching of this frame's boxes to the previous frame's by IoU, no motion model, no low-score
stage, a track ends at its first missed frame. Both take and return NumPy arrays only (no torch, no OpenCV).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# the paper's fixed thresholds of the later stages (IoU a pair must reach)
LOW_STAGE_IOU = 0.5
CONFIRM_IOU = 0.3
DUPLICATE_IOU = 0.85

# the Kalman filter's noise, relative to the box height (the SORT/DeepSORT/ByteTrack convention)
STD_POSITION = 1 / 20
STD_VELOCITY = 1 / 160


@dataclass(frozen=True)
class TrackerSettings:
    """A tracker's thresholds. Scores are the detector's (after its own conf threshold). The defaults are the
    paper's MOT17 settings; `cvtool track` and `cvtool.Tracker` pass the task table's (cvtool.tasks.track)."""

    track_high: float = 0.5
    track_low: float = 0.1
    new_track: float = 0.6
    match_iou: float = 0.2
    track_buffer: int = 30
    fuse_score: bool = True

    def __post_init__(self):
        if self.track_low > self.track_high:
            raise ValueError(f"track_low {self.track_low:g} is above track_high {self.track_high:g}")
        if self.track_buffer < 0:
            raise ValueError("track_buffer must be at least 0")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of N x 4 and M x 4 boxes (x1, y1, x2, y2): N x M."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def assign(similarity: np.ndarray, minimum: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Hungarian assignment maximising the total similarity; pairs below `minimum` are refused.
    Returns (matched (row, col) pairs, unmatched rows, unmatched cols)."""
    rows, cols = similarity.shape
    if rows == 0 or cols == 0:
        return [], list(range(rows)), list(range(cols))
    from scipy.optimize import linear_sum_assignment

    # refused pairs cost more than any allowed one, so the assignment never trades an allowed pair for them
    cost = np.where(similarity >= minimum, 1.0 - similarity, 1e6)
    r, c = linear_sum_assignment(cost)
    pairs = [(int(i), int(j)) for i, j in zip(r, c) if similarity[i, j] >= minimum]
    used_rows, used_cols = {i for i, _ in pairs}, {j for _, j in pairs}
    return pairs, [i for i in range(rows) if i not in used_rows], [j for j in range(cols) if j not in used_cols]


# -- the Kalman filter: state (cx, cy, a, h, vcx, vcy, va, vh), constant velocity, one frame per step --------------

_F = np.eye(8)
_F[:4, 4:] = np.eye(4)
_H = np.eye(4, 8)


def xyxy_to_xyah(box: np.ndarray) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, w / max(h, 1e-6), h], dtype=float)


def xyah_to_xyxy(state: np.ndarray) -> np.ndarray:
    cx, cy, a, h = state[:4]
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _position_std(h: float) -> np.ndarray:
    return np.array([STD_POSITION * h, STD_POSITION * h, 1e-2, STD_POSITION * h])


def _velocity_std(h: float) -> np.ndarray:
    return np.array([STD_VELOCITY * h, STD_VELOCITY * h, 1e-5, STD_VELOCITY * h])


def kalman_init(measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.concatenate([measurement, np.zeros(4)])
    h = measurement[3]
    std = np.concatenate([2 * _position_std(h), 10 * _velocity_std(h)])
    std[2], std[6] = 1e-2, 1e-5
    return mean, np.diag(std ** 2)


def kalman_predict(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = mean[3]
    q = np.diag(np.concatenate([_position_std(h), _velocity_std(h)]) ** 2)
    return _F @ mean, _F @ cov @ _F.T + q


def kalman_update(mean: np.ndarray, cov: np.ndarray, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = mean[3]
    r = np.diag(np.array([STD_POSITION * h, STD_POSITION * h, 1e-1, STD_POSITION * h]) ** 2)
    projected_cov = _H @ cov @ _H.T + r
    gain = np.linalg.solve(projected_cov, (cov @ _H.T).T).T  # cov H^T S^-1 (S symmetric)
    mean = mean + gain @ (measurement - _H @ mean)
    cov = cov - gain @ projected_cov @ gain.T
    return mean, cov


# -- ByteTrack -------------------------------------------------------------------------------------------------

TRACKED, LOST = "tracked", "lost"


class _Track:
    __slots__ = ("track_id", "mean", "cov", "label", "score", "state", "confirmed", "start", "last_seen")

    def __init__(self, box: np.ndarray, score: float, label: int, frame: int):
        self.mean, self.cov = kalman_init(xyxy_to_xyah(box))
        self.track_id = 0  # given when confirmed
        self.label, self.score, self.state, self.confirmed = label, score, TRACKED, False
        self.start = self.last_seen = frame

    @property
    def box(self) -> np.ndarray:
        return xyah_to_xyxy(self.mean)

    def predict(self) -> None:
        if self.state != TRACKED:  # a lost track's height velocity is not extrapolated (it would collapse the box)
            self.mean = self.mean.copy()
            self.mean[7] = 0.0
        self.mean, self.cov = kalman_predict(self.mean, self.cov)

    def update(self, box: np.ndarray, score: float, frame: int) -> None:
        self.mean, self.cov = kalman_update(self.mean, self.cov, xyxy_to_xyah(box))
        self.score, self.state, self.last_seen = score, TRACKED, frame


class ByteTracker:
    """ByteTrack over one sequence (see the module's docstring). `update(boxes, scores, labels)` per frame
    returns each box's track id, -1 for a box that is not (yet) a confirmed track. `reset()` starts a new
    sequence (ids start again at 1)."""

    def __init__(self, settings: TrackerSettings | None = None):
        self.settings = settings or TrackerSettings()
        self.reset()

    def reset(self) -> None:
        self.tracks: list[_Track] = []
        self.frame = 0
        self._next_id = 1

    def live_ids(self) -> set[int]:
        """The ids of the tracks still held (tracked or lost): a counter may forget the others."""
        return {t.track_id for t in self.tracks if t.confirmed}

    def _similarity(self, tracks: list[_Track], boxes: np.ndarray, labels: np.ndarray,
                    scores: np.ndarray | None = None) -> np.ndarray:
        iou = box_iou(np.array([t.box for t in tracks]).reshape(-1, 4), boxes)
        if scores is not None:
            iou = iou * scores[None, :]
        same = np.array([t.label for t in tracks])[:, None] == labels[None, :] if tracks else iou > 0
        return np.where(same, iou, 0.0)

    def update(self, boxes, scores, labels=None) -> np.ndarray:
        s = self.settings
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
        scores = np.asarray(scores, dtype=float).reshape(-1)
        labels = np.zeros(len(boxes), np.int64) if labels is None else np.asarray(labels).reshape(-1)
        self.frame += 1
        frame = self.frame
        ids = np.full(len(boxes), -1, dtype=np.int64)
        high = np.flatnonzero(scores >= s.track_high)
        low = np.flatnonzero((scores >= s.track_low) & (scores < s.track_high))

        confirmed = [t for t in self.tracks if t.confirmed]
        unconfirmed = [t for t in self.tracks if not t.confirmed]
        for track in self.tracks:
            track.predict()

        # 1: confirmed tracks (tracked or lost) and the high-score boxes
        sim = self._similarity(confirmed, boxes[high], labels[high], scores[high] if s.fuse_score else None)
        pairs, left_tracks, left_high = assign(sim, s.match_iou)
        for ti, di in pairs:
            det = high[di]
            confirmed[ti].update(boxes[det], float(scores[det]), frame)
            ids[det] = confirmed[ti].track_id

        # 2: tracks tracked until now but unmatched, and the low-score boxes
        remaining = [confirmed[i] for i in left_tracks if confirmed[i].state == TRACKED]
        pairs, left_remaining, _ = assign(self._similarity(remaining, boxes[low], labels[low]), LOW_STAGE_IOU)
        for ti, di in pairs:
            det = low[di]
            remaining[ti].update(boxes[det], float(scores[det]), frame)
            ids[det] = remaining[ti].track_id
        for i in left_remaining:
            remaining[i].state = LOST

        # 3: last frame's new tracks and the high-score boxes still unmatched: confirmed, or dropped
        rest = high[left_high]
        sim = self._similarity(unconfirmed, boxes[rest], labels[rest], scores[rest] if s.fuse_score else None)
        pairs, left_unconfirmed, left_rest = assign(sim, CONFIRM_IOU)
        for ti, di in pairs:
            det = rest[di]
            track = unconfirmed[ti]
            track.update(boxes[det], float(scores[det]), frame)
            self._confirm(track)
            ids[det] = track.track_id
        dropped = {id(unconfirmed[i]) for i in left_unconfirmed}

        # 4: new tracks from the high-score boxes left
        born = []
        for di in left_rest:
            det = rest[di]
            if scores[det] < s.new_track:
                continue
            track = _Track(boxes[det], float(scores[det]), int(labels[det]), frame)
            if frame == 1:
                self._confirm(track)
                ids[det] = track.track_id
            born.append(track)

        # 5: forget tracks lost too long, and the younger of a lost/tracked duplicate pair
        kept = [t for t in self.tracks if id(t) not in dropped
                and not (t.state == LOST and frame - t.last_seen > s.track_buffer)]
        self.tracks = self._without_duplicates(kept) + born
        return ids

    def _confirm(self, track: _Track) -> None:
        track.confirmed = True
        track.track_id = self._next_id
        self._next_id += 1

    def _without_duplicates(self, tracks: list[_Track]) -> list[_Track]:
        tracked = [t for t in tracks if t.state == TRACKED and t.confirmed]
        lost = [t for t in tracks if t.state == LOST]
        if not tracked or not lost:
            return tracks
        iou = box_iou(np.array([t.box for t in tracked]), np.array([t.box for t in lost]))
        gone = set()
        for i, j in zip(*np.nonzero(iou > DUPLICATE_IOU)):
            a, b = tracked[i], lost[j]
            gone.add(id(b) if a.last_seen - a.start >= b.last_seen - b.start else id(a))
        return [t for t in tracks if id(t) not in gone]


class IoUTracker:
    """The baseline: this frame's boxes matched to the previous frame's by IoU (>= `match_iou`, Hungarian);
    an unmatched box with score >= `new_track` starts a track; a track ends at its first missed frame; boxes
    below `track_high` are ignored. Same interface as ByteTracker."""

    def __init__(self, settings: TrackerSettings | None = None):
        self.settings = settings or TrackerSettings()
        self.reset()

    def reset(self) -> None:
        self.boxes = np.zeros((0, 4))
        self.labels = np.zeros(0, np.int64)
        self.track_ids = np.zeros(0, np.int64)
        self._next_id = 1

    def live_ids(self) -> set[int]:
        return {int(t) for t in self.track_ids}

    def update(self, boxes, scores, labels=None) -> np.ndarray:
        s = self.settings
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
        scores = np.asarray(scores, dtype=float).reshape(-1)
        labels = np.zeros(len(boxes), np.int64) if labels is None else np.asarray(labels).reshape(-1)
        ids = np.full(len(boxes), -1, dtype=np.int64)
        keep = np.flatnonzero(scores >= s.track_high)
        iou = box_iou(self.boxes, boxes[keep])
        iou = np.where(self.labels[:, None] == labels[keep][None, :], iou, 0.0)
        pairs, _, left = assign(iou, max(s.match_iou, 1e-9))
        for ti, di in pairs:
            ids[keep[di]] = self.track_ids[ti]
        for di in left:
            if scores[keep[di]] >= s.new_track:
                ids[keep[di]] = self._next_id
                self._next_id += 1
        alive = ids >= 0
        self.boxes, self.labels, self.track_ids = boxes[alive], labels[alive], ids[alive]
        return ids


TRACKERS: dict[str, Callable[[TrackerSettings], object]] = {"bytetrack": ByteTracker, "iou": IoUTracker}


def make_tracker(name: str, settings: TrackerSettings):
    """A tracker by its registry name (`--tracker`); ValueError naming the choices for an unknown one."""
    try:
        return TRACKERS[name](settings)
    except KeyError:
        raise ValueError(f"no tracker {name!r}; trackers: {', '.join(TRACKERS)}") from None
