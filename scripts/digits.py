"""scikit-learn's load_digits (1,797 real 8x8 handwriting scans, UCI) as ordinary images.

Shared by the script that trains the packaged LeNet-5 and the one that exports sample images, so
both see exactly the same pixels and the same fixed test split.
"""

from __future__ import annotations

import cv2
import numpy as np

SPLIT_SEED = 0
TEST_FRACTION = 0.2
IMAGE_SIZE = 32


def digit_to_image(values: np.ndarray) -> np.ndarray:
    """8x8 ink levels 0..16 -> 32x32 uint8 RGB, dark ink on white paper, as a scan would look."""
    grey = (255 - np.asarray(values, dtype=np.float32) * (255 / 16)).round().astype(np.uint8)
    grey = cv2.resize(grey, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)
    return np.repeat(grey[..., None], 3, axis=2)


def load_split():
    """(train_images, train_labels, test_images, test_labels) with a fixed stratified 20% test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    to_images = lambda xs: [digit_to_image(x) for x in xs]  # noqa: E731
    return to_images(x_train), y_train, to_images(x_test), y_test
