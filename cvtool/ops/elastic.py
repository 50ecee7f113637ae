"""Elastic deformation (the U-Net paper's augmentation): a smooth random displacement field, the same for an
image and its label maps.

Displacements are drawn on a coarse `grid` x `grid` lattice (Gaussian, `sigma` pixels), upsampled bicubically to
the image's size and applied with `cv2.remap`: the image by bilinear interpolation with mirrored borders, class
masks by nearest neighbour (no invented class ids), float maps (e.g. loss weights) bilinearly.
"""

from __future__ import annotations

import cv2
import numpy as np


def displacement_field(shape: tuple[int, int], rng: np.random.Generator, *, sigma: float = 10.0,
                       grid: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap's (map_x, map_y), float32 of `shape` (H, W): where each output pixel samples the input."""
    h, w = shape
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid)).astype(np.float32)
    dx = cv2.resize(coarse[0], (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(coarse[1], (w, h), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs + dx, ys + dy


def warp_image(image: np.ndarray, field) -> np.ndarray:
    return cv2.remap(image, field[0], field[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def warp_mask(mask: np.ndarray, field, *, fill: int) -> np.ndarray:
    """Nearest neighbour; pixels that come from outside the mask get `fill` (e.g. the ignore index)."""
    return cv2.remap(mask, field[0], field[1], cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def warp_map(values: np.ndarray, field, *, fill: float = 0.0) -> np.ndarray:
    """A float map (loss weights): bilinear; from outside the map it takes `fill`."""
    return cv2.remap(values.astype(np.float32), field[0], field[1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
