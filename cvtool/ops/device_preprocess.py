"""Preprocessing a batch where it already is (a GPU, after nvJPEG): uint8 pixels in, the network's input out.

The same steps, sizes and rounding as the per-image OpenCV path (cvtool.ops.preprocess.Preprocess and
cvtool.ops.letterbox.letterbox), done with torch ops on H x W x C uint8 tensors on any device:
- resize: OpenCV's INTER_AREA when shrinking (each output pixel the average of the area it covers, as a
  matrix product per axis), else its INTER_LINEAR / INTER_CUBIC / INTER_NEAREST (F.interpolate with half-pixel
  centres), then rounded to uint8 as OpenCV's output is;
- Preprocess: grey (ITU-R 601, rounded), resize (shorter side, exact or none), centre crop (zero padding for
  small images), (x - mean) / std; letterbox: the longer side to the square, centred, grey 114 around.
Images of one size go through together: one set of kernels per group, so a batch of equal-size photos (one
camera, one data set) is one set of kernels per batch. Agreement with the OpenCV path (tests/
test_device_decode.py): within 1 uint8 level on average and a few at edges (OpenCV's fixed-point weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cvtool.ops.letterbox import Letterbox

if TYPE_CHECKING:
    import torch

    from cvtool.ops.preprocess import Preprocess

_GREY = (0.299, 0.587, 0.114)  # OpenCV's RGB2GRAY weights


def preprocess_images(images: list["torch.Tensor"], pre: "Preprocess") -> list["torch.Tensor"]:
    """H x W x 3 uint8 tensors (one device) -> per image, what `pre(rgb)` gives: C x h x w float32, normalised."""
    import torch

    out: list[Any] = [None] * len(images)
    for (h, w), members in _by_size(images).items():
        batch = torch.stack([images[i] for i in members]).permute(0, 3, 1, 2).float()  # N x 3 x H x W
        if pre.grayscale:
            weights = torch.tensor(_GREY, device=batch.device).view(1, 3, 1, 1)
            batch = (batch * weights).sum(1, keepdim=True).round()
        size = resized_size(pre, h, w)
        if size != (h, w):
            shrinking = size[0] < h and size[1] < w
            batch = resize(batch, size, "area" if shrinking else pre.interpolation)
        if pre.crop_size is not None:
            batch = center_crop(batch, pre.crop_size)
        mean = torch.tensor(pre.mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(pre.std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1) * 255.0)
        batch = (batch - mean) * inv_std
        for i, image in zip(members, batch):
            out[i] = image
    return out


def preprocess_batch(images: list["torch.Tensor"], pre: "Preprocess") -> "torch.Tensor":
    """`preprocess_images` stacked: N x C x h x w (the preprocessing must give one size, e.g. a centre crop)."""
    import torch

    return torch.stack(preprocess_images(images, pre))


def resized_size(pre: "Preprocess", h: int, w: int) -> tuple[int, int]:
    """(height, width) `pre` resizes an h x w image to (Preprocess._resize's rule: torchvision truncates the long
    side)."""
    if pre.resize_mode == "none" or pre.resize_size is None:
        return h, w
    if pre.resize_mode == "exact":
        return pre.resize_size, pre.resize_size
    if w <= h:
        return int(pre.resize_size * h / w), pre.resize_size
    return pre.resize_size, int(pre.resize_size * w / h)


def resize(batch: "torch.Tensor", size: tuple[int, int], interpolation: str) -> "torch.Tensor":
    """N x C x H x W float (0-255) -> N x C x h x w, OpenCV's `interpolation` ("area" when shrinking, "bilinear",
    "bicubic", "nearest"), rounded and clamped to uint8 values as OpenCV's uint8 output is."""
    import torch.nn.functional as F

    h, w = size
    if interpolation == "area":
        out = area_weights(h, batch.shape[-2], batch) @ batch @ area_weights(w, batch.shape[-1], batch).T
    elif interpolation == "nearest":
        out = F.interpolate(batch, size=size, mode="nearest")
    else:
        out = F.interpolate(batch, size=size, mode=interpolation, align_corners=False)
    return out.round_().clamp_(0, 255)


def area_weights(new: int, old: int, like: "torch.Tensor") -> "torch.Tensor":
    """new x old: the fraction of output pixel i's footprint [i * old / new, (i + 1) * old / new) that source
    pixel j covers (OpenCV's INTER_AREA, fractional edges included), as a matrix to resize with."""
    import torch

    step = old / new
    start = torch.arange(new, dtype=torch.float64)[:, None] * step
    j = torch.arange(old, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(start + step, j + 1) - torch.maximum(start, j)).clamp(min=0)
    return (overlap / step).to(device=like.device, dtype=like.dtype)


def center_crop(batch: "torch.Tensor", size: int) -> "torch.Tensor":
    """cvtool.ops.preprocess's centre crop on N x C x H x W: padded with zeros (evenly, the extra pixel after)
    when smaller than `size`, then the middle `size` x `size` (offsets rounded as there)."""
    import torch.nn.functional as F

    h, w = batch.shape[-2:]
    if h < size or w < size:
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        batch = F.pad(batch, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
        h, w = batch.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return batch[..., top : top + size, left : left + size]


def letterbox_batch(images: list["torch.Tensor"], size: int, fill: int = 114) -> tuple["torch.Tensor", list[Letterbox]]:
    """H x W x 3 uint8 tensors (one device) -> N x 3 x size x size float32 in [0, 1] and each image's Letterbox:
    cvtool.ops.letterbox.letterbox's pixels (area-averaged when shrinking, bilinear when enlarging, uint8-rounded)
    and its box, for mapping detections back."""
    import torch

    batch = torch.full((len(images), 3, size, size), float(fill), device=images[0].device if images else "cpu")
    boxes: list[Any] = [None] * len(images)
    for (h, w), members in _by_size(images).items():
        scale = size / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        group = torch.stack([images[i] for i in members]).permute(0, 3, 1, 2).float()
        if (new_h, new_w) != (h, w):
            group = resize(group, (new_h, new_w), "area" if scale < 1 else "bilinear")
        pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
        batch[members, :, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = group
        box = Letterbox(scale_x=new_w / w, scale_y=new_h / h, pad_x=pad_x, pad_y=pad_y, width=w, height=h)
        for i in members:
            boxes[i] = box
    return batch.div_(255.0), boxes


def _by_size(images: list["torch.Tensor"]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((int(image.shape[0]), int(image.shape[1])), []).append(i)
    return groups
