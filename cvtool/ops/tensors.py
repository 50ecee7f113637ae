"""The one conversion between cvtool's images (H x W x 3 uint8 RGB arrays) and PyTorch's float tensors.

Every pipeline, training recipe and model that needs a [0, 1] float tensor of an image, or an image of
one, comes through here (it was written out six times, each with its own rounding and copy rules).
"""

from __future__ import annotations

import numpy as np
import torch


def image_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float32 in [0, 1]: a new, contiguous tensor (never a view of `rgb`, so
    read-only arrays are fine and PyTorch has nothing to warn about)."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)).div_(255)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """3 x H x W float in [0, 1] (values outside are clamped) -> H x W x 3 uint8, rounded to nearest."""
    return (tensor.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
