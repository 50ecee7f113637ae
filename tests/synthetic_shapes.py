"""A synthetic classification set with a known answer: a ring, a bar or a cross, drawn black on white at a
random place and size, written as an ImageFolder (one folder per class) like `cvtool train classify` reads."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SHAPES = ("circle", "bar", "cross")


def draw_shape(shape: str, rng: np.random.Generator) -> np.ndarray:
    """One 32 x 32 BGR image of `shape`."""
    image = np.full((32, 32, 3), 255, np.uint8)
    cx, cy = (int(v) for v in rng.integers(11, 21, size=2))
    r = int(rng.integers(6, 10))
    if shape == "circle":
        cv2.circle(image, (cx, cy), r, (0, 0, 0), 2)
    elif shape == "bar":
        cv2.rectangle(image, (cx - r, cy - 2), (cx + r, cy + 2), (0, 0, 0), -1)
    else:
        cv2.line(image, (cx - r, cy - r), (cx + r, cy + r), (0, 0, 0), 2)
        cv2.line(image, (cx - r, cy + r), (cx + r, cy - r), (0, 0, 0), 2)
    return image


def write_shapes_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """root/SHAPE/NN.png, `per_class[SHAPE]` images of each shape, drawn in the order given from one seed."""
    rng = np.random.default_rng(seed)
    for shape, n in per_class.items():
        (root / shape).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / shape / f"{i:02d}.png"), draw_shape(shape, rng))
    return root
