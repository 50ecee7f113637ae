"""A YOLO-style single-scale anchor-box detector, written here from the algorithm (YOLOv2's design).

The image (letterboxed to a square) is divided into an S x S grid (one cell per 16 pixels). Each
cell predicts, for each of A anchor shapes, (tx, ty, tw, th, to, class logits):
  bx = (sigmoid(tx) + cell_x) * 16,  by = (sigmoid(ty) + cell_y) * 16   (the centre stays in its cell)
  bw = anchor_w * exp(tw),            bh = anchor_h * exp(th)
  Pc = sigmoid(to) (objectness);      score = Pc * sigmoid(class logit)
A ground-truth box is the responsibility of the cell holding its centre and of the anchor whose
shape overlaps it best; per-class non-max suppression (torchvision.ops) cleans the output.
"""

from __future__ import annotations

import torch
from torch import nn

from cvtool.models.layers import ConvBnAct
from cvtool.models.registry import ModelEntry, register
from cvtool.ops.preprocess import Preprocess

STRIDE = 16


class YoloDetector(nn.Module):
    def __init__(self, num_classes: int = 1, anchors=((32.0, 32.0), (64.0, 96.0), (128.0, 128.0)), width: int = 16,
                 img_size: int = 320):
        super().__init__()
        self.num_classes, self.img_size = num_classes, img_size
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))  # A x 2, pixels
        channels = [width, 2 * width, 4 * width, 8 * width, 16 * width]
        layers = [ConvBnAct(3, channels[0], 3, act=nn.SiLU)]
        for c_in, c_out in zip(channels, channels[1:]):  # four stride-2 stages: 16 pixels per cell
            layers += [ConvBnAct(c_in, c_out, 3, stride=2, act=nn.SiLU), ConvBnAct(c_out, c_out, 3, act=nn.SiLU)]
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels[-1], len(anchors) * (5 + num_classes), 1)

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> raw predictions B x A x S_h x S_w x (5 + classes)."""
        out = self.head(self.backbone(x))
        b, _, h, w = out.shape
        return out.view(b, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2).contiguous()

    @torch.no_grad()
    def detect_images(self, images: list[torch.Tensor]) -> list[dict]:
        """The detect pipeline's interface (torchvision detectors' own): [0, 1] RGB tensors of any size
        in; per image {"boxes" in that image's pixels, "scores", "labels"} out, before thresholds and NMS."""
        import numpy as np

        from cvtool.ops.letterbox import letterbox

        batch, letterboxes = [], []
        for image in images:
            rgb = (image.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            boxed, box = letterbox(rgb, self.img_size)
            batch.append(torch.from_numpy(boxed).permute(2, 0, 1).float().div(255))
            letterboxes.append(box)
        boxes, objectness, class_probs = decode(self(torch.stack(batch).to(self.anchors.device)), self.anchors)
        outputs = []
        for b, o, c, box in zip(boxes, objectness, class_probs, letterboxes):
            best, labels = c.max(1)
            original = torch.from_numpy(box.to_original(b.cpu().numpy())).float()
            outputs.append({"boxes": original, "scores": (o * best).cpu(), "labels": labels.cpu()})
        return outputs


def _grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return xs, ys


def decode(raw: torch.Tensor, anchors: torch.Tensor, stride: int = STRIDE):
    """Raw predictions -> (boxes B x N x 4 as x1 y1 x2 y2 pixels, objectness B x N, class probs B x N x C)."""
    b, a, h, w, _ = raw.shape
    xs, ys = _grid(h, w, raw.device)
    cx = (torch.sigmoid(raw[..., 0]) + xs) * stride
    cy = (torch.sigmoid(raw[..., 1]) + ys) * stride
    bw = anchors[:, 0].view(1, a, 1, 1) * torch.exp(raw[..., 2].clamp(max=10))
    bh = anchors[:, 1].view(1, a, 1, 1) * torch.exp(raw[..., 3].clamp(max=10))
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
    return boxes.view(b, -1, 4), torch.sigmoid(raw[..., 4]).reshape(b, -1), torch.sigmoid(raw[..., 5:]).reshape(b, a * h * w, -1)


def assign_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor], anchors: torch.Tensor, grid: tuple[int, int],
                   num_classes: int, stride: int = STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, each box goes to the cell holding its centre and its best-shaped anchor.

    Returns targets B x A x S_h x S_w x (5 + C) — (offset x, offset y in [0, 1), log(w / anchor_w),
    log(h / anchor_h), 1, one-hot class) — and the boolean mask of responsible predictions."""
    h, w = grid
    a = anchors.shape[0]
    targets = torch.zeros(len(boxes), a, h, w, 5 + num_classes)
    mask = torch.zeros(len(boxes), a, h, w, dtype=torch.bool)
    for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels)):
        if len(image_boxes) == 0:
            continue
        wh = image_boxes[:, 2:] - image_boxes[:, :2]
        centre = (image_boxes[:, :2] + image_boxes[:, 2:]) / 2
        inter = torch.minimum(wh[:, None, 0], anchors[None, :, 0]) * torch.minimum(wh[:, None, 1], anchors[None, :, 1])
        union = wh[:, None].prod(-1) + anchors[None].prod(-1) - inter
        best = (inter / union).argmax(1)
        cell = (centre / stride).floor().long()
        cell[:, 0].clamp_(0, w - 1)
        cell[:, 1].clamp_(0, h - 1)
        for k in range(len(image_boxes)):
            j, y, x = int(best[k]), int(cell[k, 1]), int(cell[k, 0])
            t = targets[i, j, y, x]
            t[0] = centre[k, 0] / stride - x
            t[1] = centre[k, 1] / stride - y
            t[2] = torch.log(wh[k, 0] / anchors[j, 0])
            t[3] = torch.log(wh[k, 1] / anchors[j, 1])
            t[4] = 1.0
            t[5:] = 0
            t[5 + int(image_labels[k])] = 1.0
            mask[i, j, y, x] = True
    return targets, mask


def yolo_loss(raw: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, box_weight: float = 5.0,
              noobj_weight: float = 0.5) -> torch.Tensor:
    """YOLO's sum of terms: objectness everywhere (empty cells down-weighted), and for the responsible
    predictions the centre offsets, log-size ratios and classes."""
    bce = nn.functional.binary_cross_entropy_with_logits
    targets = targets.to(raw.device)
    mask = mask.to(raw.device)
    n = max(1, raw.shape[0])
    objectness = bce(raw[..., 4], targets[..., 4], reduction="none")
    loss = (objectness[mask].sum() + noobj_weight * objectness[~mask].sum()) / n
    if mask.any():
        pos, tgt = raw[mask], targets[mask]
        loss = loss + box_weight * (bce(pos[:, :2], tgt[:, :2], reduction="sum")
                                    + ((pos[:, 2:4] - tgt[:, 2:4]) ** 2).sum()) / n
        loss = loss + bce(pos[:, 5:], tgt[:, 5:], reduction="sum") / n
    return loss


# The detector letterboxes by itself; the pipeline hands it [0, 1] pixels at their own size.
YOLO_PREPROCESS = Preprocess(crop_size=None, resize_size=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                             resize_mode="none")

register(
    ModelEntry(
        name="yolo",
        task="detect",
        family="yolo",
        builder=YoloDetector,
        preprocess=lambda: YOLO_PREPROCESS,
        classes=lambda: None,
        weights=None,
        licence="MIT (cvtool)",
        description="YOLO-style anchor-box detector, written here; train one with `cvtool train detect`",
        head_is_classes=False,
    )
)
