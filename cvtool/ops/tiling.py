"""Tiled inference: run a dense-prediction network over a large image in overlapping tiles and
blend them, so memory is bounded by the tile size rather than the image size."""

from __future__ import annotations

from typing import Callable

import torch


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _blend_window(tile_h: int, tile_w: int, overlap: int) -> torch.Tensor:
    """Weights that fall linearly to (almost) zero over `overlap` pixels at each edge, so tile seams vanish."""
    def ramp(n: int) -> torch.Tensor:
        weights = torch.ones(n)
        if overlap > 0 and n > 2 * overlap:
            edge = torch.linspace(1 / (overlap + 1), 1, overlap)
            weights[:overlap], weights[-overlap:] = edge, edge.flip(0)
        return weights

    return ramp(tile_h)[:, None] * ramp(tile_w)[None, :]


def tiled_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    num_classes: int,
    tile: int,
    overlap: int,
    batch_size: int = 4,
) -> torch.Tensor:
    """`image` is C x H x W (already preprocessed); returns num_classes x H x W blended logits on the CPU."""
    if overlap * 2 >= tile:
        raise ValueError(f"--overlap {overlap} must be less than half of --tile {tile}")
    _, height, width = image.shape
    tile_h, tile_w = min(tile, height), min(tile, width)
    stride = tile - overlap
    boxes = [(y, x) for y in _starts(height, tile_h, stride) for x in _starts(width, tile_w, stride)]
    window = _blend_window(tile_h, tile_w, overlap)
    total = torch.zeros(num_classes, height, width)
    weight = torch.zeros(1, height, width)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        batch = torch.stack([image[:, y : y + tile_h, x : x + tile_w] for y, x in chunk])
        logits = forward(batch).float().cpu()
        for (y, x), tile_logits in zip(chunk, logits):
            total[:, y : y + tile_h, x : x + tile_w] += tile_logits * window
            weight[:, y : y + tile_h, x : x + tile_w] += window
    return total / weight
