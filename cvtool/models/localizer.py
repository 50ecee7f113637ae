"""Classification with localisation: one network, one object per image.

The output of an image is the vector y = [Pc, bx, by, bh, bw, c1..cn] (the lecture's layout): Pc "is there
an object", (bx, by) the box's centre and (bh, bw) its height and width, as fractions of the image, and
c1..cn the class scores. Any registered classifier is the backbone (cvtool.models.heads.BackboneHead: its
own last linear layer gives the 5 + n numbers). Everything about the vector is here, once:

- `LocalizerNet`: the network (raw outputs: Pc a logit, the box logits, the class logits);
- `localization_loss`: logistic loss on Pc; where Pc = 1 only, squared error on the box (x BOX_WEIGHT) and
  log loss (cross-entropy) on the classes; an image with Pc = 0 teaches Pc alone;
- `decode`: raw outputs -> Pc probability, the box as x1 y1 x2 y2 fractions, class probabilities (NumPy: the
  PyTorch and the onnxruntime paths both use it);
- `box_iou`: IoU of paired boxes, the validation's measure.

The image is fed whole, stretched to the training size (heads.square_preprocess), so fractions of the
network input are fractions of the image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cvtool.models import contract
from cvtool.models.registry import ModelEntry, register
from cvtool.ops.preprocess import Preprocess

BOX_WEIGHT = 5.0  # the box's squared error (fractions of the image, so small) counts this much (YOLO's lambda_coord)
DEFAULT_BACKBONE = "resnet18"
# the training target of one image: Pc, bx, by, bh, bw, class index (any class for Pc = 0)
TARGET_COLUMNS = ("pc", "bx", "by", "bh", "bw", "class")


class LocalizerNet(nn.Module):
    """A registered classifier (`backbone`) whose last layer gives [Pc, bx, by, bh, bw, c1..cn] (raw)."""

    def __init__(self, num_classes: int = 1, backbone: str = DEFAULT_BACKBONE, pretrained: bool = False,
                 progress: bool = False):
        from cvtool.models.heads import BackboneHead

        super().__init__()
        self.num_classes, self.backbone = int(num_classes), backbone
        self.body = BackboneHead(backbone, 5 + self.num_classes, pretrained=pretrained, progress=progress)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def localization_loss(raw: torch.Tensor, targets: torch.Tensor, box_weight: float = BOX_WEIGHT) -> torch.Tensor:
    """Mean over the batch of BCE(Pc) + Pc * (box_weight * sum (box - box*)^2 + CE(classes)).

    `raw`: B x (5 + n) network outputs; `targets`: B x 6 (TARGET_COLUMNS). The box is compared after its
    sigmoid (fractions of the image). The box and class terms count only where Pc = 1."""
    raw = raw.float()
    pc = targets[:, 0]
    presence = nn.functional.binary_cross_entropy_with_logits(raw[:, 0], pc, reduction="none")
    box = ((torch.sigmoid(raw[:, 1:5]) - targets[:, 1:5]) ** 2).sum(1)
    classes = nn.functional.cross_entropy(raw[:, 5:], targets[:, 5].long(), reduction="none")
    return (presence + pc * (box_weight * box + classes)).mean()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode(raw) -> dict[str, np.ndarray]:
    """B x (5 + n) raw outputs (NumPy or a CPU tensor) -> "pc" (B), "box" (B x 4, x1 y1 x2 y2 as fractions of the
    image, clipped to it), "class_probs" (B x n), "class" (B, the argmax)."""
    raw = np.asarray(raw, dtype=np.float32)
    pc = _sigmoid(raw[:, 0])
    bx, by, bh, bw = (_sigmoid(raw[:, i]) for i in range(1, 5))
    box = np.clip(np.stack([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2], axis=1), 0.0, 1.0)
    logits = raw[:, 5:]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    return {"pc": pc, "box": box, "class_probs": probs, "class": probs.argmax(1)}


def centre_to_corners(target: np.ndarray) -> np.ndarray:
    """N x 4 (bx, by, bh, bw) -> N x 4 (x1, y1, x2, y2), the same units."""
    bx, by, bh, bw = (target[:, i] for i in range(4))
    return np.stack([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes: N x 4 and N x 4 (x1 y1 x2 y2) -> N."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    area = lambda z: np.clip(z[:, 2] - z[:, 0], 0, None) * np.clip(z[:, 3] - z[:, 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def _default_preprocess() -> Preprocess:
    from cvtool.models.heads import square_preprocess
    from cvtool.models.registry import get_entry

    return square_preprocess(get_entry(DEFAULT_BACKBONE, "classify"), 128)


register(
    ModelEntry(
        name="localizer",
        task="localize",
        family="localizer",
        builder=LocalizerNet,
        preprocess=_default_preprocess,
        classes=lambda: None,
        weights=None,
        licence="MIT (cvtool)",
        description="classification with localisation (Pc, box, classes) on any classifier backbone; no default "
                    "weights: train one with `cvtool train localize`",
        head_is_classes=False,  # its last layer gives 5 + n numbers: the classes come from the checkpoint
        input_kind="image",
        export=contract.fixed_size_graph("raw"),
        train_build_options=("backbone",),
    )
)
