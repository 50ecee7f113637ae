"""Letterboxing: fit an image into a square without distorting it, and map boxes back exactly."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """Per-axis scales (rounding the resized size makes them differ slightly) and the padding."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    width: int = 0  # the original image's size, for clipping (0: unknown, no clipping)
    height: int = 0

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float64)
        return scale, offset

    def to_original(self, boxes: np.ndarray, *, clip: bool = False) -> np.ndarray:
        """x1, y1, x2, y2 in the letterboxed square -> the original image's pixels; with `clip`, limited to
        the image (a box reaching into the padding ends at the image's edge)."""
        scale, offset = self._affine()
        original = (np.asarray(boxes, dtype=np.float64) - offset) / scale
        if clip and self.width and self.height:
            original[..., 0::2] = original[..., 0::2].clip(0, self.width)
            original[..., 1::2] = original[..., 1::2].clip(0, self.height)
        return original

    def to_letterboxed(self, boxes: np.ndarray) -> np.ndarray:
        scale, offset = self._affine()
        return np.asarray(boxes, dtype=np.float64) * scale + offset


def letterbox(rgb: np.ndarray, size: int, fill: int = 114) -> tuple[np.ndarray, Letterbox]:
    """Resize so the longer side is `size`, pad the rest evenly with grey: size x size x 3."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    out = np.full((size, size, 3), fill, np.uint8)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out, Letterbox(scale_x=new_w / w, scale_y=new_h / h, pad_x=pad_x, pad_y=pad_y, width=w, height=h)


def letterbox_reduction(width: int, height: int, size: int) -> int:
    """How many times smaller (1, 2, 4, 8) a photo may be decoded for a letterbox of `size`: the largest factor
    whose reduced image's longer side is still at least `size` (it is then shrunk, never enlarged)."""
    from cvtool.io.image import largest_reduction

    return largest_reduction(width, height, lambda w, h: max(w, h) >= size)


def detections_in_original_pixels(boxes, objectness, class_probs, letterboxes) -> list[dict]:
    """A letterboxing detector's decoded outputs (boxes in letterboxed pixels, objectness, class probabilities;
    PyTorch tensors or NumPy arrays) -> per image {"boxes", "scores", "labels"} in its own pixels (float32),
    clipped to the image; a box wholly in the padding (nothing left after clipping) is dropped. Arrays in,
    arrays out (the onnxruntime path, no torch); tensors in, CPU tensors out."""
    from cvtool.ops.boxes import box_scores

    on_arrays = isinstance(boxes, np.ndarray) or (isinstance(boxes, (list, tuple)) and boxes
                                                  and isinstance(boxes[0], np.ndarray))
    outputs = []
    for b, o, c, box in zip(boxes, objectness, class_probs, letterboxes):
        scores, labels = box_scores(o, c)
        original = box.to_original(b if on_arrays else b.cpu().numpy(), clip=True).astype(np.float32)
        keep = (original[:, 2] > original[:, 0]) & (original[:, 3] > original[:, 1])
        if on_arrays:
            outputs.append({"boxes": original[keep], "scores": scores[keep], "labels": labels[keep]})
        else:
            import torch

            keep_t = torch.from_numpy(keep)
            outputs.append({"boxes": torch.from_numpy(original[keep]), "scores": scores.cpu()[keep_t],
                            "labels": labels.cpu()[keep_t]})
    return outputs
