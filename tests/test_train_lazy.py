"""Training data read lazily from disk (above the in-memory budget) trains exactly as data held in memory."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import cvtool.train
from cvtool.train.datasets import decode_all, open_classification_data


def _same_weights(a, b) -> None:
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def shapes(tmp_path):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(12):
            image = np.full((48, 40, 3), 255, np.uint8)
            x, y = (int(v) for v in rng.integers(10, 30, size=2))
            cv2.circle(image, (x, y), 6, (0, 0, 0), 2) if c else cv2.rectangle(image, (x - 6, y - 2), (x + 6, y + 2), 0, -1)
            cv2.imwrite(str(tmp_path / "data" / name / f"{i}.png"), image)
    (tmp_path / "data" / "a" / "broken.png").write_bytes(b"not a png")
    return tmp_path / "data"


def test_lazy_classification_is_the_in_memory_run(shapes, tmp_path, monkeypatch):
    skipped = []
    held = decode_all(open_classification_data(shapes), 32, skipped.append)
    monkeypatch.setenv("CVTOOL_TRAIN_IN_MEMORY_MB", "0")
    lazy = decode_all(open_classification_data(shapes), 32)
    assert all(isinstance(s, np.ndarray) for s in held.sources)
    assert not any(isinstance(s, np.ndarray) for s in lazy.sources)  # paths only: memory does not grow with the data
    assert len(held) == len(lazy) == 24 and lazy.skipped == held.skipped and len(skipped) == 1
    for i in range(len(held)):
        assert np.array_equal(held.image(i), lazy.image(i))

    options = dict(arch="lenet5", epochs=1, batch_size=8, val_split=0.25, device="cpu", workers=0)
    monkeypatch.delenv("CVTOOL_TRAIN_IN_MEMORY_MB")
    cvtool.train.classify(shapes, out=tmp_path / "held", **options)
    monkeypatch.setenv("CVTOOL_TRAIN_IN_MEMORY_MB", "0")
    summary = cvtool.train.classify(shapes, out=tmp_path / "lazy", **options)
    _same_weights(tmp_path / "held" / "last.pt", tmp_path / "lazy" / "last.pt")
    assert summary["skipped_files"] == 1


def test_lazy_segmentation_and_detection_read_the_same_pixels(tmp_path, monkeypatch):
    from cvtool.train.detection import OnDisk, letterboxed
    from cvtool.train.detection_data import BoxedImages
    from cvtool.train.segmentation import open_segmentation_data

    rng = np.random.default_rng(1)
    (tmp_path / "seg" / "images").mkdir(parents=True)
    (tmp_path / "seg" / "masks").mkdir()
    paths = []
    for i in range(3):
        image = rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "seg" / "images" / f"{i}.png"), image)
        Image.fromarray(((rng.random((20 + i, 30)) > 0.5) * 255).astype(np.uint8)).save(tmp_path / "seg" / "masks" / f"{i}.png")
        paths.append(tmp_path / "seg" / "images" / f"{i}.png")
    held = open_segmentation_data(tmp_path / "seg")
    boxes = [np.array([[2, 2, 10, 10]], np.float32)] * 3
    held_boxed = letterboxed(BoxedImages(paths, boxes, [np.zeros(1, np.int64)] * 3, ["x"]), 32)
    monkeypatch.setenv("CVTOOL_TRAIN_IN_MEMORY_MB", "0")
    lazy = open_segmentation_data(tmp_path / "seg")
    lazy_boxed = letterboxed(BoxedImages(paths, boxes, [np.zeros(1, np.int64)] * 3, ["x"]), 32)
    assert held.classes == lazy.classes == ["background", "foreground"] and lazy.binary
    assert not isinstance(lazy.images[0], np.ndarray) and isinstance(lazy_boxed[0][0], OnDisk)
    for i in range(3):
        assert np.array_equal(held.image(i), lazy.image(i)) and np.array_equal(held.mask(i), lazy.mask(i))
        assert set(np.unique(lazy.mask(i))) <= {0, 1}
        assert np.array_equal(held_boxed[0][i], lazy_boxed[0][i].load())
        assert np.array_equal(held_boxed[1][i], lazy_boxed[1][i])
