"""Export the images in sample_images/ (see its PROVENANCE.md). Re-running reproduces them exactly.

    python scripts/make_sample_images.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).parent))
from digits import load_split  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "sample_images"


def export_digits() -> None:
    """The first held-out image of each digit: never seen when training lenet5_digits."""
    _, _, x_test, y_test = load_split()
    out = ROOT / "digits"
    out.mkdir(parents=True, exist_ok=True)
    for digit in range(10):
        index = list(y_test).index(digit)
        cv2.imwrite(str(out / f"digit_{digit}.png"), cv2.cvtColor(x_test[index], cv2.COLOR_RGB2GRAY))


def export_photos() -> None:
    from skimage import data

    out = ROOT / "photos"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("chelsea", "coffee", "astronaut"):
        rgb = getattr(data, name)()
        cv2.imwrite(str(out / f"{name}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


if __name__ == "__main__":
    export_digits()
    export_photos()
