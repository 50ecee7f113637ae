"""Box arithmetic shared by detectors, renderers and writers. Boxes are (x1, y1, x2, y2) in pixels."""

from __future__ import annotations

import torch


def filter_detections(boxes, scores, labels, *, conf: float, iou: float, max_det: int, keep_labels=None):
    """Score threshold, optional class filter, per-class non-max suppression, then the best `max_det`."""
    from torchvision.ops import batched_nms

    mask = scores >= conf
    if keep_labels is not None:
        mask &= torch.isin(labels, keep_labels.to(labels.device))
    boxes, scores, labels = boxes[mask], scores[mask], labels[mask]
    order = batched_nms(boxes.float(), scores.float(), labels, iou)[:max_det]
    return order, mask
