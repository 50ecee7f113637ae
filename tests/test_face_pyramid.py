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


# --- how large a pyramid an image gets (issue 28: a 20000 x 200 image took a minute) ---------------------


def image_cap_scale(height: int, width: int) -> float:
    """The scale before issue 28: 40 px faces made 80 px, the enlarged image within 9 M pixels."""
    return min(2.0, (9e6 / (height * width)) ** 0.5)


@pytest.mark.parametrize("size", [(1137, 910), (480, 640), (640, 480), (1080, 1920), (1920, 1080), (3000, 4000),
                                  (4000, 3000), (2000, 12000), (12000, 2000), (16000, 1000)])
def test_photos_get_the_pyramid_they_got_before_the_canvas_cap(size):
    # the canvas cap must not move a photo's scale at all: its boxes and scores stay exactly as they were
    assert mmod.detection_scale(*size) == image_cap_scale(*size)


def test_typical_photos_pyramid_levels_are_unchanged():
    """The layouts themselves, as the image cap alone gave them (cvtool before issue 28): canvas (rows, cols),
    level count, first and last level, and the levels' total pixels."""

    def layout(height, width):
        shape, rects = mmod.pyramid_rects(*mmod.searched_size(height, width, mmod.detection_scale(height, width)))
        return shape, len(rects), rects[0], rects[-1], sum((r - l + 1) * (b - t + 1) for l, t, r, b in rects)

    assert layout(1137, 910) == ((8221, 1844), 32, (11, 11, 1832, 2285), (1829, 2570, 1832, 2574), 13538080)
    assert layout(480, 640) == ((3506, 1304), 28, (11, 11, 1292, 971), (1287, 1044, 1292, 1048), 4015466)


@pytest.mark.parametrize("size", [(200, 20000), (20000, 200), (20, 200000), (200000, 20)])
def test_a_strips_canvas_is_bounded_by_about_a_large_photos(size):
    photo = mmod.canvas_pixels(3000, 4000, mmod.detection_scale(3000, 4000))  # 32.7 M (a 12 MP photo at 9 MP)
    scale = mmod.detection_scale(*size)
    assert mmod.canvas_pixels(*size, scale) <= 1.025 * photo
    assert mmod.canvas_pixels(*size, image_cap_scale(*size)) > 1.025 * photo  # what the image cap alone gave
    assert scale < image_cap_scale(*size)  # so the smallest findable face, 80 / scale px, grows past 53 px


def test_canvas_pixels_is_the_canvas_the_detector_runs():
    """canvas_pixels mirrors detect_scaled's resize and pyramid_up's doublings: checked against the canvas an
    AutoScaledMmod really builds (a stand-in network that records it; no model run)."""
    from cvtool.models.face_detectors import AutoScaledMmod, FaceDetectorOptions

    shapes = []

    def run(canvases):
        shapes.append(canvases.shape[2:])
        return np.zeros((len(canvases), 1, *(mmod.output_size(n) for n in canvases.shape[2:])), np.float32)

    budget = 1_000_000  # a small budget keeps the strip's canvas small: the cap binds all the same
    detector = AutoScaledMmod(mmod.MmodArrayDetector(run), FaceDetectorOptions(detect_pixels=budget))
    for size in [(90, 120), (20, 50000), (50000, 20), (1500, 1000)]:  # doubled, two strips shrunk, reduced
        shapes.clear()
        assert detector.detect([np.zeros((*size, 3), np.uint8)]) == [[]]
        (rows, cols), = shapes
        scale = detector.scale(*size)
        assert rows * cols == mmod.canvas_pixels(*size, scale) <= mmod.canvas_budget(budget)
