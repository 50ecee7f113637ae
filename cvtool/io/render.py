"""Drawing results for people: colour overlays and indexed (palette) masks. Renderers never run models."""

from __future__ import annotations

import io

import numpy as np


def class_palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map (bits of the class index spread over R, G, B): class 0 is black,
    neighbouring classes get very different colours, and VOC tools show our masks correctly."""
    palette = np.zeros((n, 3), np.uint8)
    for index in range(n):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float, palette: np.ndarray | None = None) -> np.ndarray:
    """Blend class colours over the photo; background (class 0) pixels stay untouched."""
    palette = class_palette() if palette is None else palette
    colours = palette[labels].astype(np.float32)
    blended = rgb.astype(np.float32) * (1 - alpha) + colours * alpha
    out = np.where((labels > 0)[..., None], blended, rgb.astype(np.float32))
    return (out + 0.5).astype(np.uint8)


def indexed_png(labels: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """An 8-bit palette PNG whose pixel values are the class indices (what VOC and most tools expect)."""
    from PIL import Image

    if labels.max(initial=0) > 255:
        raise ValueError("an indexed PNG holds at most 256 classes")
    palette = class_palette() if palette is None else palette
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
