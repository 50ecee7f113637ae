"""Counting tracked objects: crossings of a line, each direction, and entries into and exits from a zone.

Counted per track id, from the track's anchor point (its box centre) in the frames where it has a box: a track
counts at most once in each direction (a box jittering on the line is one crossing, not ten), and a track born
on the far side of a line or inside a zone has crossed nothing (so an id switch, which ends one track and starts
another where the object already is, does not count the object again). Pure NumPy.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def box_centres(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def _side(p1: np.ndarray, p2: np.ndarray, point: np.ndarray) -> float:
    """> 0: `point` is on the right-hand side of the way from p1 to p2 as drawn on the image (y down)."""
    d = p2 - p1
    return float(d[0] * (point[1] - p1[1]) - d[1] * (point[0] - p1[0]))


class LineCounter:
    """Crossings of the segment (x1, y1) -> (x2, y2). `in`: from its left to its right as drawn on the image
    walking from (x1, y1) to (x2, y2) (a line drawn left to right: downwards); `out`: the other way. Only a
    move that passes through the segment itself counts, not one past its ends."""

    def __init__(self, points: Sequence[float]):
        values = [float(v) for v in points]
        if len(values) != 4:
            raise ValueError(f"a line is x1,y1,x2,y2 (4 numbers), not {len(values)}")
        self.p1, self.p2 = np.array(values[:2]), np.array(values[2:])
        if np.allclose(self.p1, self.p2):
            raise ValueError("a line needs two different points")
        self.last: dict[int, tuple[float, np.ndarray]] = {}  # track id -> (its last side, not 0; that point)
        self.counted: set[tuple[int, str]] = set()
        self.counts = {"in": 0, "out": 0}

    def _through_segment(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether the move a -> b meets the segment between its ends (a and b on opposite sides already)."""
        d, m = self.p2 - self.p1, b - a
        denom = d[0] * m[1] - d[1] * m[0]
        if denom == 0:
            return False
        t = ((a[0] - self.p1[0]) * m[1] - (a[1] - self.p1[1]) * m[0]) / denom
        return 0.0 <= t <= 1.0

    def update(self, track_ids: Iterable[int], points) -> list[tuple[int, str]]:
        """This frame's tracks and anchor points; returns the crossings counted now, (track id, direction)."""
        events = []
        for tid, point in zip(track_ids, np.asarray(points, dtype=float).reshape(-1, 2)):
            tid = int(tid)
            side = _side(self.p1, self.p2, point)
            if side == 0:  # on the line: wait for the side it leaves to
                continue
            before = self.last.get(tid)
            self.last[tid] = (side, point)
            if before is None or (before[0] > 0) == (side > 0) or not self._through_segment(before[1], point):
                continue
            direction = "in" if before[0] < 0 else "out"
            if (tid, direction) not in self.counted:
                self.counted.add((tid, direction))
                self.counts[direction] += 1
                events.append((tid, direction))
        return events

    def forget(self, keep: set[int]) -> None:
        """Drop the state of tracks not in `keep` (the tracker's live ids), so memory stays bounded."""
        self.last = {tid: v for tid, v in self.last.items() if tid in keep}


def inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: which of the N x 2 points lie inside the polygon (K x 2 vertices)."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    x, y = points[:, 0:1], points[:, 1:2]
    xa, ya = polygon[:, 0][None, :], polygon[:, 1][None, :]
    xb, yb = np.roll(polygon[:, 0], -1)[None, :], np.roll(polygon[:, 1], -1)[None, :]
    straddles = (ya > y) != (yb > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = xa + (y - ya) * (xb - xa) / (yb - ya)
    return np.logical_and(straddles, x < x_cross).sum(axis=1) % 2 == 1


class ZoneCounter:
    """A polygon zone: `inside` (tracks whose anchor is in it in this frame), `entered` (tracks seen outside, then
    inside) and `exited` (seen inside, then outside), each track at most once each way."""

    def __init__(self, points: Sequence[float]):
        values = [float(v) for v in points]
        if len(values) < 6 or len(values) % 2:
            raise ValueError(f"a zone is x1,y1,x2,y2,x3,y3,... (at least 3 points), not {len(values)} numbers")
        self.polygon = np.array(values).reshape(-1, 2)
        self.was_inside: dict[int, bool] = {}
        self.counted: set[tuple[int, str]] = set()
        self.counts = {"inside": 0, "entered": 0, "exited": 0}

    def update(self, track_ids: Iterable[int], points) -> list[tuple[int, str]]:
        ids = [int(t) for t in track_ids]
        inside = inside_polygon(np.asarray(points, dtype=float).reshape(-1, 2), self.polygon)
        events = []
        for tid, now in zip(ids, inside.tolist()):
            before = self.was_inside.get(tid)
            self.was_inside[tid] = now
            if before is None or before == now:
                continue
            event = "entered" if now else "exited"
            if (tid, event) not in self.counted:
                self.counted.add((tid, event))
                self.counts[event] += 1
                events.append((tid, event))
        self.counts["inside"] = int(inside.sum())
        return events

    def forget(self, keep: set[int]) -> None:
        self.was_inside = {tid: v for tid, v in self.was_inside.items() if tid in keep}


def counts_text(counts: dict | None) -> str:
    """`line in 3 out 1 | zone inside 2 entered 4 exited 2`: the caption drawn and the summary line."""
    if not counts:
        return ""
    return " | ".join(f"{name} " + " ".join(f"{k} {v}" for k, v in values.items()) for name, values in counts.items())
