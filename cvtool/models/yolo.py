"""A YOLO-style anchor-box detector, written here from the algorithm (YOLOv2's grid and anchors,
with the later versions' training ideas: CSP blocks, a stride-32 context branch, IoU losses).

The image (letterboxed to a square, its side a multiple of SIZE_MULTIPLE = 32) is divided into an
S x S grid (one cell per 16 pixels). Each cell predicts, for each of A anchor shapes, (tx, ty, tw, th, to, class logits):
  bx = (2 sigmoid(tx) - 0.5 + cell_x) * 16,  by likewise  (the centre may reach half a cell beyond
  bw = anchor_w * exp(tw),  bh = anchor_h * exp(th)        its own, so neighbours can share a box)
  Pc = sigmoid(to) (objectness);  score = Pc * sigmoid(class logit)
A ground-truth box is the responsibility of the cell holding its centre and of the two neighbours
nearest to the centre, for every anchor of a compatible shape; per-class non-max suppression
(torchvision.ops) cleans the output. The single stride-16 output also sees the stride-32 features
(upsampled, with SPPF pooling), so large objects filling the frame get a receptive field that
covers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from cvtool.errors import UsageError
from cvtool.models import contract
from cvtool.models.layers import ConvBnAct
from cvtool.models.registry import ModelEntry, register
from cvtool.ops.device_preprocess import area_weights
from cvtool.ops.preprocess import Preprocess

STRIDE = 16
SIZE_MULTIPLE = 32  # input sides: the context branch runs at stride 32 and is upsampled onto the stride-16 grid
# torchvision classifiers usable as the backbone: (feature split at stride 16, channels at 16 and 32)
TORCHVISION_BACKBONES = {"resnet18": (256, 512), "mobilenet_v3_small": (48, 576)}
BACKBONES = ("csp", *TORCHVISION_BACKBONES)


class Bottleneck(nn.Module):
    """1x1 then 3x3 with a residual connection: depth without losing the gradient."""

    def __init__(self, channels: int, shortcut: bool = True):
        super().__init__()
        self.conv = nn.Sequential(ConvBnAct(channels, channels, 1, act=nn.SiLU), ConvBnAct(channels, channels, 3, act=nn.SiLU))
        self.shortcut = shortcut

    def forward(self, x):
        return x + self.conv(x) if self.shortcut else self.conv(x)


class CspBlock(nn.Module):
    """Cross-stage partial block: half the channels go through the bottlenecks, half skip them."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        hidden = c_out // 2
        self.left = nn.Sequential(ConvBnAct(c_in, hidden, 1, act=nn.SiLU), *[Bottleneck(hidden, shortcut) for _ in range(n)])
        self.right = ConvBnAct(c_in, hidden, 1, act=nn.SiLU)
        self.fuse = ConvBnAct(2 * hidden, c_out, 1, act=nn.SiLU)

    def forward(self, x):
        return self.fuse(torch.cat([self.left(x), self.right(x)], 1))


class Sppf(nn.Module):
    """Spatial pyramid pooling (three chained 5x5 max-pools): a receptive field as wide as the image."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = channels // 2
        self.reduce = ConvBnAct(channels, hidden, 1, act=nn.SiLU)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.fuse = ConvBnAct(4 * hidden, channels, 1, act=nn.SiLU)

    def forward(self, x):
        x = self.reduce(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.fuse(torch.cat([x, p1, p2, self.pool(p2)], 1))


class CspBackbone(nn.Module):
    """From scratch: CSP stages to stride 32; returns the stride-16 and stride-32 feature maps."""

    def __init__(self, width: int):
        super().__init__()
        c = [width, 2 * width, 4 * width, 8 * width, 16 * width]

        def down(c_in, c_out, n):
            return nn.Sequential(ConvBnAct(c_in, c_out, 3, stride=2, act=nn.SiLU), CspBlock(c_out, c_out, n))

        self.to16 = nn.Sequential(ConvBnAct(3, c[0], 3, stride=2, act=nn.SiLU), down(c[0], c[1], 1), down(c[1], c[2], 2),
                                  down(c[2], c[3], 2))
        self.to32 = nn.Sequential(down(c[3], c[4], 1), Sppf(c[4]))
        self.channels = (c[3], c[4])

    def forward(self, x):
        c4 = self.to16(x)
        return c4, self.to32(c4)


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier's convolutional layers (its ImageNet weights loaded by the caller),
    split at stride 16; images are normalised here as the classifier expects."""

    def __init__(self, name: str):
        super().__init__()
        from torchvision.models import get_model

        net = get_model(name, weights=None)
        if name.startswith("resnet"):
            self.to16 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
            self.to32 = net.layer4
        else:  # mobilenet_v3_small: features 0-8 end at stride 16
            self.to16, self.to32 = net.features[:9], net.features[9:]
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.channels = TORCHVISION_BACKBONES[name]
        self.name = name

    def forward(self, x):
        c4 = self.to16((x - self.mean) / self.std)
        return c4, self.to32(c4)

    def classifier_keys(self) -> dict[str, str]:
        """Our parameter names -> the torchvision classifier's, to load its state_dict."""
        ours = {}
        if self.name.startswith("resnet"):
            names16 = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
            for key in self.to16.state_dict():
                index, rest = key.split(".", 1)
                ours[f"to16.{key}"] = f"{names16[int(index)]}.{rest}"
            ours.update({f"to32.{k}": f"layer4.{k}" for k in self.to32.state_dict()})
        else:  # slices of features keep its numbering
            ours.update({f"to16.{k}": f"features.{k}" for k in self.to16.state_dict()})
            ours.update({f"to32.{k}": f"features.{k}" for k in self.to32.state_dict()})
        return ours


class YoloDetector(nn.Module):
    def __init__(self, num_classes: int = 1, anchors=((32.0, 32.0), (64.0, 96.0), (128.0, 128.0)), width: int = 16,
                 img_size: int = 320, backbone: str = "csp"):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
        self.num_classes, self.img_size, self.backbone_name = num_classes, img_size, backbone
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))  # A x 2, pixels
        self.backbone = CspBackbone(width) if backbone == "csp" else TorchvisionBackbone(backbone)
        c16, c32 = self.backbone.channels
        neck = 8 * width
        self.lateral = ConvBnAct(c32, neck, 1, act=nn.SiLU)
        self.fuse = CspBlock(neck + c16, neck, 1, shortcut=False)
        self.head = nn.Conv2d(neck, len(anchors) * (5 + num_classes), 1)
        self._init_head()

    def _init_head(self) -> None:
        """Start objectness near 1% (few cells hold objects), so the first steps are not spent
        silencing every cell."""
        with torch.no_grad():
            bias = self.head.bias.view(self.num_anchors, 5 + self.num_classes)
            bias[:, 4] = -4.6
            bias[:, 5:] = -1.0

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> raw predictions B x A x S_h x S_w x (5 + classes), S = H / 16."""
        c16, c32 = self.backbone(x)
        up = nn.functional.interpolate(self.lateral(c32), size=c16.shape[-2:], mode="nearest")
        out = self.head(self.fuse(torch.cat([up, c16], 1)))
        b, _, h, w = out.shape
        return out.view(b, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2).contiguous()

    @torch.no_grad()
    def detect_images(self, images: list[torch.Tensor]) -> list[dict]:
        """The detect pipeline's interface (torchvision detectors' own): [0, 1] RGB tensors of any size
        in; per image {"boxes" in that image's pixels, "scores", "labels"} out, before thresholds and NMS."""
        decoded, letterboxes = self.head_outputs(images)
        return detections_in_original_pixels(*decoded, letterboxes)

    def head_outputs(self, images: list[torch.Tensor]):
        """[0, 1] RGB tensors of any size -> the decoded head output per anchor, (boxes in letterboxed pixels,
        objectness, class probabilities), and each image's letterbox."""
        batch, letterboxes = letterbox_batch(images, self.img_size)
        # decoded in float32 whatever the network ran at (--half): a box centre is cell + offset times the stride,
        # which fp16 / bf16 would round to 0.25-4 px
        return decode(self(batch.to(self.anchors.device)).float(), self.anchors), letterboxes


@dataclass
class Letterboxed:
    """An image letterboxed to the detector's input size ahead of time (in a pipeline's decoding thread), with
    its letterbox: `letterbox_batch` then only stacks (what `detect_images` and the exported graph take)."""

    tensor: torch.Tensor  # 3 x S x S, [0, 1]
    box: object  # cvtool.ops.letterbox.Letterbox

    def to(self, device, **kwargs) -> "Letterboxed":
        return Letterboxed(self.tensor.to(device, **kwargs), self.box)

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape


def letterbox_side(loaded) -> int:
    """The registry's input_side: the square every image is letterboxed to (torch or exported)."""
    return int(loaded.module.meta["img_size"]) if loaded.backend == "onnxruntime" else int(loaded.module.img_size)


def prepare_letterboxed(loaded, rgb) -> Letterboxed:
    """The registry's prepare_input: letterbox one uint8 image to the model's size (torch or exported)."""
    from cvtool.ops.letterbox import letterbox
    from cvtool.ops.tensors import image_to_tensor

    boxed, box = letterbox(rgb, letterbox_side(loaded))
    return Letterboxed(image_to_tensor(boxed), box)


def letterbox_batch(images: list, img_size: int, *, on_device: bool | None = None):
    """[0, 1] RGB tensors of any size -> one letterboxed batch, and each image's letterbox (to map boxes back).

    Tensors on the CPU go through OpenCV (cvtool.ops.letterbox, on uint8 pixels); tensors on an accelerator
    (or with `on_device=True`) are letterboxed where they are, with torch ops, so nothing returns to the
    host: the same sizes, padding and grey, the resize area-averaged when shrinking and bilinear when
    enlarging, as OpenCV's. The two differ only by OpenCV's rounding to uint8 (boxes within a pixel)."""
    if images and isinstance(images[0], Letterboxed):  # letterboxed in the decoding threads already
        return torch.stack([image.tensor for image in images]), [image.box for image in images]
    if on_device is None:
        on_device = bool(images) and images[0].device.type != "cpu"
    if on_device:
        return _letterbox_on_device(images, img_size)
    from cvtool.ops.letterbox import letterbox
    from cvtool.ops.tensors import image_to_tensor, tensor_to_image

    batch, letterboxes = [], []
    for image in images:
        boxed, box = letterbox(tensor_to_image(image), img_size)
        batch.append(image_to_tensor(boxed))
        letterboxes.append(box)
    return torch.stack(batch), letterboxes


def _letterbox_on_device(images: list[torch.Tensor], img_size: int, fill: int = 114):
    from cvtool.ops.letterbox import Letterbox

    functional = nn.functional
    batch = images[0].new_full((len(images), 3, img_size, img_size), fill / 255)
    letterboxes = []
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        scale = img_size / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if (new_h, new_w) == (h, w):
            resized = image
        elif scale < 1:  # OpenCV's INTER_AREA when shrinking: each output pixel averages the area it covers
            resized = area_weights(new_h, h, image) @ image @ area_weights(new_w, w, image).T
        else:  # OpenCV's INTER_LINEAR: half-pixel centres, no antialiasing
            resized = functional.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
        pad_x, pad_y = (img_size - new_w) // 2, (img_size - new_h) // 2
        batch[i, :, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized.clamp(0, 1)
        letterboxes.append(Letterbox(scale_x=new_w / w, scale_y=new_h / h, pad_x=pad_x, pad_y=pad_y, width=w, height=h))
    return batch, letterboxes


# The box score (objectness x best class) and the mapping back to the image's pixels live in cvtool.ops, in forms
# for tensors and NumPy arrays alike: the onnxruntime path runs them without torch.
from cvtool.ops.boxes import box_scores  # noqa: E402,F401
from cvtool.ops.letterbox import detections_in_original_pixels  # noqa: E402


def load_backbone_weights(model: YoloDetector, state_dict: dict, source: str) -> None:
    """Put a torchvision classifier's state_dict (e.g. its ImageNet weights) into the backbone."""
    from cvtool.errors import WeightsError

    if not isinstance(model.backbone, TorchvisionBackbone):
        raise WeightsError(f"{source}: the csp backbone is trained from scratch; pretrained weights need a torchvision backbone")
    mapping = model.backbone.classifier_keys()
    missing = [theirs for theirs in mapping.values() if theirs not in state_dict]
    if missing:
        raise WeightsError(f"{source}: not a {model.backbone.name} state_dict (missing {missing[0]})")
    ours = {k: state_dict[theirs] for k, theirs in mapping.items()}
    try:
        model.backbone.load_state_dict(ours, strict=False)
    except RuntimeError as exc:
        raise WeightsError(f"{source}: does not fit {model.backbone.name} ({str(exc).splitlines()[-1].strip()})") from None


def _grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return xs, ys


def decode_boxes(raw: torch.Tensor, anchors: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """Raw predictions B x A x H x W x (5 + C) -> boxes B x A x H x W x 4 (x1 y1 x2 y2 pixels)."""
    _, a, h, w, _ = raw.shape
    xs, ys = _grid(h, w, raw.device)
    cx = (2 * torch.sigmoid(raw[..., 0]) - 0.5 + xs) * stride
    cy = (2 * torch.sigmoid(raw[..., 1]) - 0.5 + ys) * stride
    bw = anchors[:, 0].view(1, a, 1, 1) * torch.exp(raw[..., 2].clamp(max=6))
    bh = anchors[:, 1].view(1, a, 1, 1) * torch.exp(raw[..., 3].clamp(max=6))
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)


def decode(raw: torch.Tensor, anchors: torch.Tensor, stride: int = STRIDE):
    """Raw predictions -> (boxes B x N x 4 as x1 y1 x2 y2 pixels, objectness B x N, class probs B x N x C)."""
    b, a, h, w, _ = raw.shape
    boxes = decode_boxes(raw, anchors, stride)
    return boxes.view(b, -1, 4), torch.sigmoid(raw[..., 4]).reshape(b, -1), torch.sigmoid(raw[..., 5:]).reshape(b, a * h * w, -1)


def assign_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor], anchors: torch.Tensor, grid: tuple[int, int],
                   num_classes: int, stride: int = STRIDE, *, anchor_ratio: float = 4.0,
                   neighbours: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, each box goes to every anchor whose width and height are within `anchor_ratio` of
    its own (always at least the best-overlapping anchor), in the cell holding its centre and, with
    `neighbours`, the horizontal and vertical neighbour nearest to the centre: several positives per
    box, which a from-scratch detector on a small data set needs. Smaller boxes win shared slots.

    Returns targets B x A x S_h x S_w x (5 + C) — (offset x, offset y of the centre from the cell's
    corner in cells, in (-0.5, 1.5); log(w / anchor_w), log(h / anchor_h), 1, one-hot class) — and
    the boolean mask of responsible predictions."""
    h, w = grid
    a = anchors.shape[0]
    targets = torch.zeros(len(boxes), a, h, w, 5 + num_classes)
    mask = torch.zeros(len(boxes), a, h, w, dtype=torch.bool)
    for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels)):
        if len(image_boxes) == 0:
            continue
        wh = (image_boxes[:, 2:] - image_boxes[:, :2]).clamp(min=1e-3)
        centre = (image_boxes[:, :2] + image_boxes[:, 2:]) / 2
        inter = torch.minimum(wh[:, None, 0], anchors[None, :, 0]) * torch.minimum(wh[:, None, 1], anchors[None, :, 1])
        union = wh[:, None].prod(-1) + anchors[None].prod(-1) - inter
        best = (inter / union).argmax(1)
        ratio = torch.maximum(wh[:, None] / anchors[None], anchors[None] / wh[:, None]).amax(-1)  # N x A
        grid_xy = centre / stride
        for k in wh.prod(-1).argsort(descending=True).tolist():  # large first, so small ones overwrite
            cx, cy = float(grid_xy[k, 0]), float(grid_xy[k, 1])
            x, y = min(max(int(cx), 0), w - 1), min(max(int(cy), 0), h - 1)
            cells = [(x, y)]
            if neighbours:
                cells.append((x - 1 if cx - x < 0.5 else x + 1, y))
                cells.append((x, y - 1 if cy - y < 0.5 else y + 1))
            shapes = [j for j in range(a) if ratio[k, j] < anchor_ratio or j == int(best[k])]
            for cell_x, cell_y in cells:
                if not (0 <= cell_x < w and 0 <= cell_y < h):
                    continue
                for j in shapes:
                    t = targets[i, j, cell_y, cell_x]
                    t[0] = cx - cell_x
                    t[1] = cy - cell_y
                    t[2] = torch.log(wh[k, 0] / anchors[j, 0])
                    t[3] = torch.log(wh[k, 1] / anchors[j, 1])
                    t[4] = 1.0
                    t[5:] = 0
                    t[5 + int(image_labels[k])] = 1.0
                    mask[i, j, cell_y, cell_x] = True
    return targets, mask


def target_boxes(targets: torch.Tensor, anchors: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """The ground-truth boxes (x1 y1 x2 y2 pixels) that `assign_targets` encoded, at every slot."""
    _, a, h, w, _ = targets.shape
    xs, ys = _grid(h, w, targets.device)
    cx, cy = (targets[..., 0] + xs) * stride, (targets[..., 1] + ys) * stride
    bw = anchors[:, 0].view(1, a, 1, 1) * torch.exp(targets[..., 2])
    bh = anchors[:, 1].view(1, a, 1, 1) * torch.exp(targets[..., 3])
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)


def yolo_loss(raw: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, anchors: torch.Tensor, *,
              stride: int = STRIDE, gt_boxes: list[torch.Tensor] | None = None, box_weight: float = 0.5,
              obj_weight: float = 1.0, cls_weight: float = 0.5, ignore_iou: float = 0.6,
              global_counts: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Box: complete-IoU loss (torchvision) of the responsible predictions. Objectness: BCE over
    every prediction, the target being the (detached) IoU of the responsible prediction with its box,
    so confidence ranks by localisation; other predictions whose box already overlaps a ground truth
    (of `gt_boxes`) by more than `ignore_iou` are left out rather than punished as background.
    Classes: BCE of the responsible predictions. Means over the batch, scaled by the batch size.

    `global_counts` (data-parallel training): maps this batch's counts (matches, objectness weight,
    images, 1 process) to the global batch's sums over all ranks. The means are then the global batch's, and the
    loss is this rank's share scaled so that DDP's mean over ranks is the single-process loss."""
    from torchvision.ops import box_iou, complete_box_iou_loss

    bce = nn.functional.binary_cross_entropy_with_logits
    raw = raw.float()  # under mixed precision the head's output is bf16/fp16: the loss (and its IoU targets) in fp32
    targets, mask, anchors = targets.to(raw.device), mask.to(raw.device), anchors.to(raw.device)
    n = raw.shape[0]
    obj_target = torch.zeros_like(raw[..., 4])
    box_loss = cls_loss = raw.new_zeros(())
    weight = torch.ones_like(obj_target)
    predicted = decode_boxes(raw, anchors, stride)
    if gt_boxes is not None:
        with torch.no_grad():
            for i, image_boxes in enumerate(gt_boxes):
                if len(image_boxes):
                    best = box_iou(predicted[i].reshape(-1, 4), image_boxes.to(raw.device).float()).amax(1)
                    weight[i] = (best <= ignore_iou).float().view_as(weight[i])
    weight[mask] = 1.0
    # this batch's matches, objectness weight, images and processes (1), or the global batch's sums of them
    counts = torch.stack([mask.sum().to(weight.dtype), weight.sum(), weight.new_tensor(float(n)),
                          weight.new_tensor(1.0)]).detach()
    matches, weight_sum, images, ranks = global_counts(counts.clone()) if global_counts is not None else counts
    if mask.any():
        pos, tgt = raw[mask], targets[mask]
        ciou = complete_box_iou_loss(predicted[mask], target_boxes(targets, anchors, stride)[mask], reduction="none")
        box_loss = ciou.sum() / matches
        with torch.no_grad():
            iou = box_iou(predicted[mask], target_boxes(targets, anchors, stride)[mask]).diagonal()
        obj_target[mask] = iou.clamp(0, 1)
        if pos.shape[1] > 5:
            cls_loss = bce(pos[:, 5:], tgt[:, 5:], reduction="sum") / (matches * (pos.shape[1] - 5))
    obj_loss = (bce(raw[..., 4], obj_target, reduction="none") * weight).sum() / weight_sum.clamp(min=1)
    # DDP averages the ranks' gradients: each rank's share times the number of ranks sums to the global loss,
    # whatever the shares (a short last batch splits unevenly)
    return images * ranks * (box_weight * box_loss + obj_weight * obj_loss + cls_weight * cls_loss)


# The detector letterboxes by itself; the pipeline hands it [0, 1] pixels at their own size.
YOLO_PREPROCESS = Preprocess(crop_size=None, resize_size=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                             resize_mode="none")


def export_graph(loaded, img_size: int | None) -> contract.ExportGraph:
    """The registry's export hook: head + decoding at one letterbox size (boxes in letterboxed pixels,
    objectness, class probabilities); thresholds and NMS stay in the pipeline."""
    net = loaded.module
    size = img_size or int(net.img_size)
    if size % SIZE_MULTIPLE:
        raise UsageError(f"--img-size must be a multiple of {SIZE_MULTIPLE} for {loaded.name}")
    decoded = contract.adapted(net, lambda module, x: decode(module(x), module.anchors))
    return contract.ExportGraph(decoded, contract.input_channels(net, loaded.preprocess), (size, size), 1,
                                ["boxes", "objectness", "class_probs"], loaded.preprocess, {"img_size": size})


def run_exported(network, images: list[torch.Tensor]) -> list[dict]:
    """The registry's graph_forward: letterbox here, head + decoding in the exported graph, NMS in the pipeline."""
    batch, letterboxes = letterbox_batch(images, int(network.meta["img_size"]))
    return detections_in_original_pixels(*network(batch), letterboxes)


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
        input_kind="raw_images",
        size_multiple=SIZE_MULTIPLE,
        default_conf=0.25,
        forward=contract.detect_images,
        graph_forward=run_exported,
        export=export_graph,
        prepare_input=prepare_letterboxed,
        input_side=letterbox_side,
    )
)
