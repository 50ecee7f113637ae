"""Anchor boxes for the YOLO-style detector: shapes chosen by k-means on the training boxes, with
1 - IoU as the distance (YOLOv2), so large and small boxes count alike."""

from __future__ import annotations

import numpy as np


def shape_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of boxes and anchors as if they shared a centre: N x 2 and K x 2 (width, height) -> N x K."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = wh[:, None, 0] * wh[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter
    return inter / np.maximum(union, 1e-12)


def kmeans_anchors(wh: np.ndarray, k: int, *, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """k anchor shapes (K x 2, smallest area first) from box shapes `wh` (N x 2, pixels)."""
    wh = np.asarray(wh, dtype=np.float64)
    if len(wh) < k:
        raise ValueError(f"need at least {k} boxes to choose {k} anchors, got {len(wh)}")
    rng = np.random.default_rng(seed)
    anchors = wh[rng.choice(len(wh), size=1)]
    while len(anchors) < k:  # k-means++ seeding, with 1 - IoU as the distance
        distance = 1 - shape_iou(wh, anchors).max(axis=1)
        anchors = np.vstack([anchors, wh[rng.choice(len(wh), p=distance / distance.sum())]])
    for _ in range(iterations):
        nearest = shape_iou(wh, anchors).argmax(axis=1)
        updated = np.array([np.median(wh[nearest == i], axis=0) if np.any(nearest == i) else anchors[i] for i in range(k)])
        if np.allclose(updated, anchors):
            break
        anchors = updated
    return anchors[np.argsort(anchors.prod(axis=1))]


def best_possible_recall(wh: np.ndarray, anchors: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of boxes whose best anchor overlaps them by at least `threshold` (a check on the anchors)."""
    return float((shape_iou(np.asarray(wh, float), np.asarray(anchors, float)).max(axis=1) >= threshold).mean())
