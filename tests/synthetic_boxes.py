"""A synthetic detection set with a known answer: filled circles and squares on a noisy background,
written as Pascal VOC (images/ + annotations/*.xml) like ../shared/datasets/raccoon."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = ("circle", "square")


def write_shapes_voc(root: Path, n: int = 80, size: int = 160, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for i in range(n):
        image = rng.normal(120, 25, (size, size, 3)).clip(0, 255).astype(np.uint8)
        objects = []
        for _ in range(int(rng.integers(1, 3))):
            r = int(rng.integers(12, 30))
            cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
            colour = tuple(int(c) for c in rng.integers(0, 80, 3)) if rng.random() < 0.5 else tuple(
                int(c) for c in rng.integers(180, 255, 3))
            kind = CLASSES[int(rng.integers(0, 2))]
            if kind == "circle":
                cv2.circle(image, (cx, cy), r, colour, -1)
            else:
                cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
            objects.append((kind, cx - r, cy - r, cx + r, cy + r))
        cv2.imwrite(str(root / "images" / f"{i:03d}.jpg"), image)
        body = "".join(
            f"<object><name>{k}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            "</bndbox></object>" for k, x1, y1, x2, y2 in objects)
        (root / "annotations" / f"{i:03d}.xml").write_text(
            f"<annotation><filename>{i:03d}.jpg</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{body}</annotation>")
    return root
