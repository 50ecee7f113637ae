"""The one conversion between cvtool's images (H x W x 3 uint8 RGB arrays) and [0, 1] float pixels: NumPy
arrays (`image_to_array`, what onnxruntime is fed) and PyTorch tensors (`image_to_tensor`, the same values).

Every pipeline, training recipe and model that needs a [0, 1] float tensor of an image, or an image of
one, comes through here (it was written out six times, each with its own rounding and copy rules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def image_to_array(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> 3 x H x W float32 in [0, 1]: a new, contiguous array (never a view of `rgb`)."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def image_to_tensor(rgb: np.ndarray) -> "torch.Tensor":
    """H x W x 3 uint8 -> 3 x H x W float32 in [0, 1]: a new, contiguous tensor (never a view of `rgb`, so
    read-only arrays are fine and PyTorch has nothing to warn about); `image_to_array`'s values."""
    import torch

    return torch.from_numpy(image_to_array(rgb))


def tensor_to_image(tensor: "torch.Tensor") -> np.ndarray:
    """3 x H x W float in [0, 1] (values outside are clamped) -> H x W x 3 uint8, rounded to nearest."""
    return (tensor.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
