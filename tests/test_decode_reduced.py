"""Reduced-size JPEG decoding (issue 30): libjpeg's DCT scaling where the network's input is at most half the photo.

The rule picks the largest of 8, 4, 2 that keeps the network's input a downscale; EXIF orientation, the ICC
conversion and the pixel limit stay correct on the reduced path; records stay in the photo's own pixels (boxes
scaled back, masks and sizes the photo's); it is asked for with `full_decode=False` (`--no-full-decode`): the
default, and the cases the pipeline cannot know, decode in full."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cvtool.errors import InputError
from cvtool.io.image import largest_reduction, read_image, read_reduced, reduced_side
from cvtool.ops.letterbox import letterbox_reduction
from cvtool.ops.preprocess import Preprocess

sys.path.insert(0, str(Path(__file__).parent))
from iccprofile import DISPLAY_P3_LIKE  # noqa: E402

RESNET = Preprocess(crop_size=224, resize_size=256)  # torchvision's classifiers: shorter side 256, crop 224


def smooth_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An RGB image with detail at every scale down to ~20 px (random noise upsampled): JPEG-friendly."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 20), max(2, width // 20), 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def save_jpeg(path: Path, rgb: np.ndarray, *, orientation: int | None = None, icc: bytes | None = None) -> Path:
    image = Image.fromarray(rgb)
    kwargs: dict = {"quality": 95}
    if orientation is not None:
        exif = image.getexif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    if icc is not None:
        kwargs["icc_profile"] = icc
    image.save(path, **kwargs)
    return path


# -- the rule --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, expected", [((640, 480), 1), ((1920, 1080), 4), ((1080, 1920), 4), ((4000, 3000), 8),
                                            ((512, 512), 2), ((511, 511), 2), ((510, 510), 1)])
def test_a_classifier_reduces_while_the_shorter_side_stays_at_least_its_resize(size, expected):
    assert RESNET.decode_reduction(*size) == expected


@pytest.mark.parametrize("size, side, expected", [((640, 480), 640, 1), ((1920, 1080), 640, 2), ((1280, 720), 640, 2),
                                                  ((1279, 720), 640, 2), ((1278, 720), 640, 1), ((640, 480), 256, 2), ((1920, 1080), 256, 4)])
def test_a_letterbox_reduces_while_the_longer_side_stays_at_least_its_square(size, side, expected):
    assert letterbox_reduction(*size, side) == expected


def test_an_exact_resize_needs_both_sides_and_no_resize_never_reduces():
    exact = Preprocess(crop_size=32, resize_size=32, resize_mode="exact")
    assert exact.decode_reduction(1000, 300) == 8  # 125 x 38: both >= 32
    assert exact.decode_reduction(1000, 40) == 1
    assert Preprocess(crop_size=None, resize_size=None, resize_mode="none").decode_reduction(4000, 3000) == 1


def test_reduced_sides_round_up_as_libjpeg_does(tmp_path):
    path = save_jpeg(tmp_path / "odd.jpg", smooth_photo(1001, 601))
    for factor in (2, 4, 8):
        decoded = read_reduced(path, reduction=lambda w, h, f=factor: f)
        assert decoded.rgb.shape == (reduced_side(601, factor), reduced_side(1001, factor), 3)
        assert (decoded.factor, decoded.size) == (factor, (601, 1001))
    assert largest_reduction(1001, 601, lambda w, h: w >= 126) == 8  # ceil(1001 / 8) = 126


# -- the reader ------------------------------------------------------------------------------------------------

def test_reduced_pixels_are_the_full_decode_shrunk(tmp_path):
    path = save_jpeg(tmp_path / "p.jpg", smooth_photo(1600, 1200))
    full = read_image(path)
    for factor in (2, 4, 8):
        decoded = read_reduced(path, reduction=lambda w, h, f=factor: f)
        shrunk = cv2.resize(full, decoded.rgb.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(shrunk.astype(int) - decoded.rgb).mean() < 2.0  # grey levels of 255


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_once_after_a_reduced_decode(tmp_path, orientation):
    rgb = smooth_photo(1600, 1200)
    rgb[:200, :200] = (255, 0, 0)  # a red corner, top left as stored
    path = save_jpeg(tmp_path / "turned.jpg", rgb, orientation=orientation)
    full = read_image(path)
    decoded = read_reduced(path, reduction=lambda w, h: 4)
    assert decoded.size == full.shape[:2]
    assert decoded.rgb.shape[:2] == (full.shape[0] // 4, full.shape[1] // 4)
    shrunk = cv2.resize(full, decoded.rgb.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - decoded.rgb).mean() < 2.0  # not turned twice (OpenCV turns by itself)


def test_the_reduction_is_chosen_from_the_upright_size(tmp_path):
    path = save_jpeg(tmp_path / "turned.jpg", smooth_photo(1600, 400), orientation=6)  # upright: 400 wide, 1600 high
    seen = []
    read_reduced(path, reduction=lambda w, h: seen.append((w, h)) or 1)
    assert seen == [(400, 1600)]


def test_the_icc_conversion_applies_to_reduced_pixels(tmp_path):
    flat = np.full((800, 800, 3), (200, 80, 40), np.uint8)
    path = save_jpeg(tmp_path / "wide.jpg", flat, icc=DISPLAY_P3_LIKE)
    full, reduced = read_image(path)[400, 400], read_reduced(path, reduction=lambda w, h: 8).rgb[50, 50]
    untagged = read_reduced(save_jpeg(tmp_path / "plain.jpg", flat), reduction=lambda w, h: 8).rgb[50, 50]
    assert np.abs(full.astype(int) - reduced).max() <= 2
    assert reduced[0] > untagged[0] + 10 and reduced[2] < untagged[2]  # converted, as the full decode is


def test_the_pixel_limit_is_the_full_size_even_when_decoding_smaller(tmp_path):
    path = save_jpeg(tmp_path / "big.jpg", smooth_photo(1000, 800))
    with pytest.raises(InputError, match=r"1000x800 = 800,000 pixels, over the limit of 500,000"):
        read_reduced(path, max_pixels=500_000, reduction=lambda w, h: 8)


def test_only_jpegs_are_reduced(tmp_path):
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), smooth_photo(800, 600))
    decoded = read_reduced(path, reduction=lambda w, h: 8)
    assert (decoded.factor, decoded.rgb.shape, decoded.size) == (1, (600, 800, 3), (600, 800))


def test_without_a_reduction_it_is_read_image(tmp_path):
    path = save_jpeg(tmp_path / "p.jpg", smooth_photo(800, 600), orientation=6)
    decoded = read_reduced(path)
    assert decoded.factor == 1 and np.array_equal(decoded.rgb, read_image(path))


# -- the pipelines: records in the photo's own pixels ----------------------------------------------------------

def test_boxes_of_a_reduced_image_are_scaled_back_and_clipped():
    from cvtool.pipelines.detect import in_photo_pixels

    boxes = np.array([[10.0, 20.0, 30.5, 40.0], [120.0, 70.0, 126.0, 76.0]])  # reduced 126 x 76 of 1001 x 601
    assert in_photo_pixels(boxes, 8, (601, 1001)).tolist() == [[80.0, 160.0, 244.0, 320.0],
                                                                [960.0, 560.0, 1001.0, 601.0]]


@pytest.fixture(scope="module")
def yolo_256(tmp_path_factory) -> Path:
    """Our YOLO (random weights, a 256 px letterbox) as a checkpoint."""
    import torch

    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector

    torch.manual_seed(0)
    model = YoloDetector(num_classes=1, width=4, img_size=256)
    with torch.no_grad():
        model.head.bias.zero_()  # random weights give boxes
    path = tmp_path_factory.mktemp("yolo") / "yolo256.pt"
    save_checkpoint(path, arch="yolo", task="detect", state_dict=model.state_dict(), classes=["thing"],
                    preprocess=YOLO_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"anchors": model.anchors.tolist(), "width": 4, "img_size": 256}})
    return path


def test_detect_decodes_smaller_for_a_letterbox_and_reports_the_photos_pixels(yolo_256, tmp_path, one_torch_thread):
    from cvtool import Detector

    photo = save_jpeg(tmp_path / "p.jpg", smooth_photo(1280, 720))
    assert Detector(weights=str(yolo_256), device="cpu")._make_pipeline(None).reduction is None  # the default: full
    detector = Detector(weights=str(yolo_256), device="cpu", conf=0.01, full_decode=False)
    pipeline = detector._make_pipeline(None)
    sample = pipeline.prepare(str(photo))
    assert (sample.factor, sample.rgb.shape[:2], sample.size) == (4, (180, 320), (720, 1280))  # 320 >= 256 > 160
    reduced = next(iter(detector.run([photo]))).record
    full = next(iter(detector.with_options(full_decode=True).run([photo]))).record
    assert reduced["result"]["size"] == full["result"]["size"] == [720, 1280]
    boxes = np.array([d["box"] for d in reduced["result"]["detections"]]).reshape(-1, 4)
    assert len(boxes) > 0 and boxes[:, 0::2].max() <= 1280 and boxes[:, 1::2].max() <= 720
    assert boxes[:, 2].max() > 640  # in the photo's pixels, not the 320-pixel-wide decode's
    assert detector._make_pipeline(tmp_path / "out").reduction is None  # --out draws on the photo in full
    assert detector.with_options(full_decode=True)._make_pipeline(None).reduction is None


def test_a_detector_that_resizes_itself_decodes_in_full():
    from cvtool import Detector  # the packaged face detector: an image pyramid of its own

    assert Detector("face", device="cpu", full_decode=False)._make_pipeline(None).reduction is None


def test_segment_masks_are_at_the_photos_size_when_decoded_smaller(tmp_path, one_torch_thread):
    import torch

    from cvtool import Segmenter
    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(num_classes=2, in_channels=3, width=4, depth=2)
    with torch.no_grad():  # "shape" everywhere: a known answer at any size
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([0.0, 1.0]))
    resizing = Preprocess(crop_size=None, resize_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)  # shorter side to 64
    weights = tmp_path / "unet.pt"
    save_checkpoint(weights, arch="unet", task="segment", state_dict=net.state_dict(), classes=["background", "shape"],
                    preprocess=resizing.to_dict(), extra={"arch_kwargs": {"width": 4, "depth": 2, "in_channels": 3}})
    photo = save_jpeg(tmp_path / "p.jpg", smooth_photo(640, 480))
    segmenter = Segmenter(weights=str(weights), device="cpu", full_decode=False)
    assert segmenter._make_pipeline(None).prepare(str(photo)).rgb.shape[:2] == (120, 160)  # 480 / 8 < 64 <= 480 / 4
    record = next(iter(segmenter.run([photo]))).record
    assert record["result"]["size"] == [480, 640]
    assert record["result"]["classes"] == [{"index": 1, "label": "shape", "pixels": 480 * 640, "fraction": 1.0}]
    assert segmenter._make_pipeline(tmp_path / "out").reduction is None  # overlays are of the photo in full


def test_classify_agrees_with_full_decoding_on_enlarged_digits(tmp_path, one_torch_thread):
    """The packaged LeNet-5 (32 x 32, exact resize) on digit photos enlarged to 640 x 640 JPEGs: decoded 8 times
    smaller (80 x 80) it gives the labels of the full decode."""
    from cvtool import Classifier

    digits = sorted((Path(__file__).resolve().parents[1] / "sample_images" / "digits").glob("*.png"))[:6]
    paths = []
    for i, digit in enumerate(digits):
        grey = cv2.imread(str(digit), cv2.IMREAD_GRAYSCALE)
        paths.append(save_jpeg(tmp_path / f"d{i}.jpg", np.repeat(cv2.resize(grey, (640, 640))[..., None], 3, 2)))
    clf = Classifier("lenet5_digits", device="cpu", full_decode=False)
    assert clf._make_pipeline(None).reduction(640, 640) == 8
    reduced = [r.record["result"]["top_k"][0]["label"] for r in clf.run(paths)]
    full = [r.record["result"]["top_k"][0]["label"] for r in clf.with_options(full_decode=True).run(paths)]
    assert len(reduced) == len(digits) and reduced == full


def test_the_cli_turns_reduced_decoding_on_with_no_full_decode(tmp_path):
    from tests.conftest import invoke_cli, jsonl

    digit = sorted((Path(__file__).resolve().parents[1] / "sample_images" / "digits").glob("*.png"))[0]
    grey = cv2.imread(str(digit), cv2.IMREAD_GRAYSCALE)
    photo = save_jpeg(tmp_path / "digit.jpg", np.repeat(cv2.resize(grey, (640, 640))[..., None], 3, 2))
    runs = [invoke_cli("classify", str(photo), "--model", "lenet5_digits", "--device", "cpu", "-f", "jsonl", *flag)
            for flag in ([], ["--no-full-decode"], ["--full-decode"])]
    assert [r.returncode for r in runs] == [0, 0, 0]
    labels = [jsonl(r.stdout)[0]["result"]["top_k"][0]["label"] for r in runs]
    assert labels[0] == labels[1] == labels[2]
