"""Tiled inference: run a dense-prediction network over a large image in overlapping tiles and
blend them, so memory is bounded by the tile size rather than the image size.

Each function takes PyTorch tensors or NumPy arrays and answers in the same kind (the onnxruntime path
runs on arrays and never imports torch); the tiles, their order and the blending weights are the same.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cvtool.errors import UsageError


def _on_arrays(x) -> bool:
    return isinstance(x, np.ndarray)


def padded_size(height: int, width: int, multiple: int = 1) -> tuple[int, int]:
    """The size a fully convolutional network is run at: each side rounded up to `multiple` and at least
    two multiples, so the coarsest level has two cells a side (instance norm needs more than one value,
    reflection padding of 1 needs two)."""
    least = 2 * multiple if multiple > 1 else 1
    return max(least, -(-height // multiple) * multiple), max(least, -(-width // multiple) * multiple)


def pad_bottom_right(batch, height: int, width: int):
    """B x C x h x w -> B x C x height x width: mirrored where the image is large enough to mirror,
    else its edge pixels repeated (a 1-pixel-wide image has nothing to mirror)."""
    h, w = batch.shape[-2:]
    pad_h, pad_w = height - h, width - w
    if not pad_h and not pad_w:
        return batch
    mirror = pad_h < h and pad_w < w
    if _on_arrays(batch):
        widths = [(0, 0)] * (batch.ndim - 2) + [(0, pad_h), (0, pad_w)]
        return np.pad(batch, widths, mode="reflect" if mirror else "edge")
    import torch.nn.functional as F

    return F.pad(batch, (0, pad_w, 0, pad_h), mode="reflect" if mirror else "replicate")


def run_padded(forward: Callable, image, multiple: int = 1):
    """`image` C x H x W -> forward's C' x H x W output, run on the image padded to `padded_size` and cropped back."""
    _, h, w = image.shape
    return forward(pad_bottom_right(image[None], *padded_size(h, w, multiple)))[0, :, :h, :w]


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def check_tiling(tile: int, overlap: int) -> None:
    """Tiles must overlap by less than half their side (each tile's own middle is what it contributes)."""
    if overlap * 2 >= tile:
        raise UsageError(f"--overlap {overlap} must be less than half of --tile {tile}")


def blend_window(tile_h: int, tile_w: int, overlap: int) -> np.ndarray:
    """Weights that fall linearly to (almost) zero over `overlap` pixels at each edge, so tile seams vanish
    (tile_h x tile_w float32; one array for both backends)."""
    def ramp(n: int) -> np.ndarray:
        weights = np.ones(n, np.float32)
        if overlap > 0 and n > 2 * overlap:
            edge = np.linspace(1 / (overlap + 1), 1, overlap, dtype=np.float32)
            weights[:overlap], weights[-overlap:] = edge, edge[::-1]
        return weights

    return ramp(tile_h)[:, None] * ramp(tile_w)[None, :]


def tiled_logits(
    forward: Callable,
    image,
    *,
    num_classes: int,
    tile: int,
    overlap: int,
    batch_size: int = 4,
    multiple: int = 1,
):
    """`image` is C x H x W (already preprocessed); returns num_classes x H x W blended logits, float32, on the
    device `forward` returns them on (tiles are blended there: nothing is copied back tile by tile).
    `tile` is a multiple of `multiple`; an image narrower than a tile is padded (see `padded_size`).
    A NumPy `image` is cut into NumPy tiles; `forward` then returns NumPy logits, and so does this."""
    check_tiling(tile, overlap)
    arrays = _on_arrays(image)
    _, full_h, full_w = image.shape
    if full_h < tile or full_w < tile:  # a side shorter than a tile: one tile of the padded size there
        need_h, need_w = padded_size(full_h, full_w, multiple)
        image = pad_bottom_right(image[None], max(full_h, min(tile, need_h)), max(full_w, min(tile, need_w)))[0]
    _, height, width = image.shape
    tile_h, tile_w = min(tile, height), min(tile, width)
    stride = tile - overlap
    boxes = [(y, x) for y in _starts(height, tile_h, stride) for x in _starts(width, tile_w, stride)]
    window = total = weight = None
    if not arrays:
        import torch
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        tiles = [image[:, y : y + tile_h, x : x + tile_w] for y, x in chunk]
        if arrays:
            logits = np.asarray(forward(np.stack(tiles)), dtype=np.float32)
        else:
            logits = forward(torch.stack(tiles)).float()
        if total is None:
            window = blend_window(tile_h, tile_w, overlap)
            if arrays:
                total = np.zeros((num_classes, height, width), np.float32)
                weight = np.zeros((1, height, width), np.float32)
            else:
                window = torch.from_numpy(window).to(logits.device)
                total = torch.zeros(num_classes, height, width, device=logits.device)
                weight = torch.zeros(1, height, width, device=logits.device)
        for (y, x), tile_logits in zip(chunk, logits):
            total[:, y : y + tile_h, x : x + tile_w] += tile_logits * window
            weight[:, y : y + tile_h, x : x + tile_w] += window
    return (total / weight)[:, :full_h, :full_w]
