"""Readers on the real data sets in ../shared/datasets (skipped, with the reason, where absent)."""

import numpy as np
import pytest
from conftest import SHARED

from cvtool.io.image import read_image
from cvtool.io.inputs import iter_inputs


def need(name: str):
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is not here: the shared data sets sit beside the project root")
    return path


def test_real_mnist_test_split_reads_from_its_idx_gz_files():
    from cvtool.train.datasets import open_classification_data

    data = open_classification_data(need("mnist"))
    assert len(data) == 10_000 and data.classes == [str(d) for d in range(10)]
    assert data.sources[0].shape == (28, 28, 3) and data.sources[0].dtype == np.uint8
    counts = np.bincount(data.labels)
    assert counts.min() > 850 and counts.max() < 1150  # every digit about 1,000 times


def test_membrane_pairs_read_as_binary_masks():
    from cvtool.train.segmentation import open_segmentation_data

    data = open_segmentation_data(need("membrane"), class_names=["membrane", "cell"])
    assert len(data.images) == 24 and data.images[0].shape == (512, 512, 3)
    membrane_fraction = np.mean([(m == 0).mean() for m in data.masks])
    assert 0.1 < membrane_fraction < 0.35  # thin membranes, large cell interiors


def test_orl_faces_are_an_image_folder_of_32_subjects():
    from cvtool.train.datasets import open_classification_data

    data = open_classification_data(need("orl_faces"))
    assert len(data.classes) == 32 and len(data) == 320
    assert read_image(data.sources[0]).shape == (112, 92, 3)


def test_every_shared_photo_decodes():
    paths = [item.path for item in iter_inputs([str(need("photos")), str(need("faces_multi"))])]
    assert len(paths) >= 5
    for path in paths:
        image = read_image(path)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, path
