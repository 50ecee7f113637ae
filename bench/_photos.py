"""Benchmark inputs: real photos (sample_images/photos, scikit-image's) as JPEGs of a chosen size, each a different
crop, the same files for the same arguments."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def photo_jpegs(folder: Path, count: int, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """`count` JPEGs (quality 90) of `size` (width, height) in `folder`: crops of the sample photos, each different."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    sources = [cv2.imread(str(p)) for p in sorted((ROOT / "sample_images" / "photos").glob("*.jpg"))]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        h, w = image.shape[:2]
        top, left = int(rng.integers(0, h // 4)), int(rng.integers(0, w // 4))
        crop = cv2.resize(image[top : top + 3 * h // 4, left : left + 3 * w // 4], size, interpolation=cv2.INTER_AREA)
        path = folder / f"img_{i:05d}.jpg"
        cv2.imwrite(str(path), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths
