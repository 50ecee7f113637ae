"""dlib's image pyramid three ways: PyTorch (face_mmod, the reference the port was measured against dlib
with), NumPy and onnxruntime's Resize (models/dlib/mmod.py, models/onnx_ops.py, the torch-free path)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvtool.models.dlib import mmod
from cvtool.models.onnx_ops import align_corners_resizer

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "sample_images" / "photos" / "astronaut.jpg"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The astronaut as 3 x H x W float32 RGB."""
    return cv2.imread(str(ASTRONAUT))[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def ort_resize():
    return align_corners_resizer(threads=1)


def torch_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return F.interpolate(torch.from_numpy(image)[None], size=(height, width), mode="bilinear",
                         align_corners=True)[0].numpy()


@pytest.mark.parametrize("size", [(427, 426), (1025, 1026), (5, 7), (1, 1)])
def test_numpy_resize_is_pytorchs(photo, size):
    np.testing.assert_allclose(mmod.resize_align_corners(photo, *size), torch_resize(photo, *size), atol=2e-4)


@pytest.mark.parametrize("size", [(427, 426), (1025, 1026), (5, 7)])
def test_onnxruntime_resize_agrees_on_a_photo(photo, ort_resize, size):
    got = ort_resize(photo, *size)
    assert got.shape == (3, *size) and got.dtype == np.float32
    want = torch_resize(photo, *size)
    assert np.abs(got - want).max() < 0.02  # grey levels (0..255): coordinates in float32 vs exactly
    assert np.abs(got - want).mean() < 1e-3


def test_canvases_agree_and_are_dlibs_layout(photo, ort_resize):
    shape, rects = mmod.pyramid_rects(*photo.shape[1:])
    with torch.inference_mode():
        from cvtool.models.face_mmod import build_canvas

        want = build_canvas(torch.from_numpy(photo), torch.tensor(mmod.DLIB_MEAN_RGB), shape, rects).numpy()
    by_numpy = mmod.build_canvas(photo, mmod.DLIB_MEAN_RGB, shape, rects)
    by_ort = mmod.build_canvas(photo, mmod.DLIB_MEAN_RGB, shape, rects, ort_resize)
    assert by_numpy.shape == by_ort.shape == (3, *shape)
    np.testing.assert_allclose(by_numpy, want, atol=1e-6)
    np.testing.assert_allclose(by_ort, want, atol=1e-4)  # normalised units (1/256 of a grey level)
    left, top, right, bottom = rects[0]
    assert not by_ort[:, :top].any() and not by_ort[:, :, :left].any()  # the outer padding stays zero


def test_pyramid_up_truncates_to_grey_levels(photo, ort_resize):
    for resize in (mmod.resize_align_corners, ort_resize):
        up = mmod.pyramid_up(photo[:, :50, :60], resize)
        assert up.shape == (3, 101, 122)
        assert np.array_equal(up, np.floor(up)) and up.min() >= 0 and up.max() <= 255
        assert np.array_equal(up[:, [0, -1], [0, -1]], photo[:, [0, 49], [0, 59]])  # aligned corners


def test_array_detector_with_either_resize_finds_the_same_face(ort_resize):
    from cvtool.models.face_mmod import load_mmod_net

    net = load_mmod_net("cpu")

    def run(canvases):
        with torch.inference_mode():
            return net(torch.from_numpy(canvases)).numpy()

    rgb = cv2.imread(str(ASTRONAUT))[:, :, ::-1]
    by_numpy = mmod.MmodArrayDetector(run).detect([rgb], upsample=0)[0]
    by_ort = mmod.MmodArrayDetector(run, resize=ort_resize).detect([rgb], upsample=0)[0]
    assert len(by_numpy) == len(by_ort) == 1
    assert by_numpy[0][:4] == by_ort[0][:4]
    assert abs(by_numpy[0][4] - by_ort[0][4]) < 1e-3
