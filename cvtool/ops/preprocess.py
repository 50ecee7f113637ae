"""Image preprocessing with OpenCV, described as data so it can travel inside weights and checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side, exactly, or not at all), centre-crop (optional), scale to [0, 1],
    normalise: torchvision's ImageClassification / SemanticSegmentation transforms, done on NumPy
    arrays in worker threads instead of on tensors."""

    crop_size: int | None
    resize_size: int | None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    grayscale: bool = False
    resize_mode: str = "shorter"  # "shorter": keep aspect; "exact": stretch to a square; "none": keep the size

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if self.resize_mode not in ("shorter", "exact", "none"):
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> CxHxW float32, ready for a batch."""
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None] if self.grayscale else rgb
        image = self._resize(image)
        if self.crop_size is not None:
            image = _center_crop(image, self.crop_size)
        mean = np.asarray(self.mean, dtype=np.float32) * 255.0
        inv_std = 1.0 / (np.asarray(self.std, dtype=np.float32) * 255.0)
        # (x - mean) * inv_std in float32, written straight into C x H x W: the same numbers as normalising H x W x C
        # and transposing after, without the strided float copy (which cost as much as the decode)
        chw = image.transpose(2, 0, 1)
        out = np.empty(chw.shape, np.float32)
        np.subtract(chw, mean[:, None, None], out=out, dtype=np.float32)
        out *= inv_std[:, None, None]
        return out

    def decode_reduction(self, width: int, height: int) -> int:
        """How many times smaller (1, 2, 4, 8) a photo of `width` x `height` may be decoded for this preprocessing:
        the largest factor whose reduced image still shrinks to the resize target (its shorter side at least
        `resize_size`; both sides for "exact"), so the network sees an image resized down, never up. 1 when it
        does not resize (the network takes the image's own pixels)."""
        from cvtool.io.image import largest_reduction

        target = self.resize_size
        if self.resize_mode == "none" or target is None:
            return 1
        if self.resize_mode == "exact":
            return largest_reduction(width, height, lambda w, h: w >= target and h >= target)
        return largest_reduction(width, height, lambda w, h: min(w, h) >= target)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if self.resize_mode == "none" or self.resize_size is None:
            return image
        if self.resize_mode == "exact":
            size = (self.resize_size, self.resize_size)
        else:
            # torchvision truncates the long side (int(size * long / short)); matching it keeps crops aligned
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.resize_size * long / short)
            size = (self.resize_size, new_long) if w <= h else (new_long, self.resize_size)
        if size == (w, h):
            return image
        # INTER_AREA when shrinking matches torchvision's antialiased resize far better than plain bilinear.
        shrinking = size[0] < w and size[1] < h
        flag = cv2.INTER_AREA if shrinking else _INTERPOLATIONS[self.interpolation]
        resized = cv2.resize(image, size, interpolation=flag)
        return resized[..., None] if resized.ndim == 2 else resized


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h < size or w < size:  # pad like torchvision's CenterCrop does for small inputs
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        image = cv2.copyMakeBorder(
            image, pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2, cv2.BORDER_CONSTANT, value=0
        )
        image = image[..., None] if image.ndim == 2 else image
        h, w = image.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[top : top + size, left : left + size]
