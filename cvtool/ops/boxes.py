"""Box arithmetic shared by detectors, renderers and writers. Boxes are (x1, y1, x2, y2) in pixels.

Everything here takes PyTorch tensors or NumPy arrays alike and answers in the same kind; NumPy callers (the
onnxruntime path) never import torch. Non-max suppression is a library's: torchvision's `batched_nms` for
tensors, OpenCV's `cv2.dnn.NMSBoxesBatched` for arrays (both per class, both keep the higher-scored box of a
pair whose IoU exceeds the threshold, both list what is kept by decreasing score).
"""

from __future__ import annotations

# Detection is validated as COCO and Ultralytics' val do: nearly every box (the PR curve needs the low scores).
# `cvtool train detect`'s validation and `cvtool val detect` both use these, so they give one checkpoint one mAP.
DETECT_CONF, DETECT_IOU, DETECT_MAX_DET = 0.001, 0.6, 100


def _is_numpy(array) -> bool:
    return type(array).__module__ == "numpy"


def box_scores(objectness, class_probs):
    """The detector's score of each box and its label: objectness x the best class probability (the one rule
    training's validation, inference on both backends and the export checks rank boxes by)."""
    if _is_numpy(class_probs):
        labels = class_probs.argmax(-1)
        return objectness * class_probs.max(-1), labels
    best, labels = class_probs.max(-1)
    return objectness * best, labels


def filter_detections(boxes, scores, labels, *, conf: float, iou: float, max_det: int, keep_labels=None):
    """Score threshold, optional class filter, per-class non-max suppression, then the best `max_det`.

    Returns (order, mask): the kept boxes are `boxes[mask][order]`, best first."""
    if _is_numpy(boxes):
        import numpy as np

        mask = scores >= conf
        if keep_labels is not None:
            mask &= np.isin(labels, np.asarray(keep_labels))
        return _nms_numpy(boxes[mask], scores[mask], labels[mask], iou)[:max_det], mask
    import torch
    from torchvision.ops import batched_nms

    mask = scores >= conf
    if keep_labels is not None:
        mask &= torch.isin(labels, torch.as_tensor(keep_labels).to(labels.device))
    boxes, scores, labels = boxes[mask], scores[mask], labels[mask]
    order = batched_nms(boxes.float(), scores.float(), labels, iou)[:max_det]
    return order, mask


def _nms_numpy(boxes, scores, labels, iou: float):
    """OpenCV's per-class NMS on N x 4 corner boxes: indices kept, by decreasing score."""
    import cv2
    import numpy as np

    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    boxes = np.asarray(boxes, np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    # score_threshold below any score: the conf threshold was applied already (OpenCV keeps scores > it)
    kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), np.asarray(scores, np.float32).tolist(),
                                   np.asarray(labels, np.int32).tolist(), -1.0, float(iou))
    return np.asarray(kept, np.int64).reshape(-1)


def detection_record(box, score, label, name: str) -> dict:
    """One detection as `cvtool detect` prints it (score to 4 decimals, box to 2): the one rounding that the
    records, `cvtool val detect` and `cvtool train detect`'s validation all score."""
    return {"label": name, "index": int(label), "score": round(float(score), 4), "box": [round(float(v), 2) for v in box]}
