"""The GPU data path, run on CPU tensors: JPEGs read for the device decoder (cvtool.io.device_decode) give
read_image's pixels, and the batched torch preprocessing (cvtool.ops.device_preprocess) gives the per-image
OpenCV path's (Preprocess, letterbox). On the CPU torchvision's decode_jpeg is libjpeg-turbo, as OpenCV's:
pixels identical here (bound stated: at most 2 levels); nvJPEG on a GPU differs by its IDCT and upsampling,
which bench/gpu_check.py measures. The resizes: within 1 uint8 level (OpenCV's fixed-point weights)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cvtool.errors import InputError  # noqa: E402
from cvtool.io.device_decode import DeviceRead, decode_on_device, read_for_device  # noqa: E402
from cvtool.io.image import read_image  # noqa: E402
from cvtool.ops.device_preprocess import letterbox_batch, preprocess_images  # noqa: E402
from cvtool.ops.letterbox import letterbox  # noqa: E402
from cvtool.ops.preprocess import Preprocess  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from badinputs import make_bad_corpus  # noqa: E402
from iccprofile import DISPLAY_P3_LIKE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "sample_images" / "photos").glob("*.jpg"))


def _jpeg(path: Path, rgb: np.ndarray, **save) -> Path:
    from PIL import Image

    Image.fromarray(rgb).save(path, "JPEG", quality=90, **save)
    return path


def _with_orientation(path: Path, rgb: np.ndarray, orientation: int) -> Path:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(path, rgb, exif=exif)


def _decoded(paths, **kwargs):
    reads = [read_for_device(p, **kwargs) for p in paths]
    return reads, decode_on_device(reads, "cpu")


def _assert_close(tensor, reference: np.ndarray, levels: int = 2):
    assert tuple(tensor.shape) == reference.shape and tensor.dtype == torch.uint8
    assert int(np.abs(tensor.numpy().astype(int) - reference.astype(int)).max()) <= levels


def test_jpegs_go_to_the_device_decoder_and_give_read_images_pixels():
    reads, images = _decoded(PHOTOS)
    assert all(r.data is not None and r.rgb is None for r in reads)  # all three: the device decoder's
    for path, read, image in zip(PHOTOS, reads, images):
        reference = read_image(path)
        assert read.size == reference.shape[:2]
        _assert_close(image, reference)


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied_on_the_device_as_read_image_applies_it(tmp_path, orientation):
    rgb = read_image(PHOTOS[1])[:, :301]  # not square: a quarter turn shows in the shape
    path = _with_orientation(tmp_path / f"turned{orientation}.jpg", rgb, orientation)
    (read,), (image,) = _decoded([path])
    reference = read_image(path)
    assert read.data is not None and read.orientation == orientation
    assert read.size == reference.shape[:2]
    _assert_close(image, reference)


def test_files_the_device_decoder_cannot_take_are_decoded_on_the_cpu(tmp_path):
    """PNG, a CMYK JPEG and a JPEG with a wide-gamut ICC profile (read_image converts it to sRGB): the CPU
    path's own pixels, exactly."""
    from PIL import Image

    rgb = read_image(PHOTOS[2])
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", "JPEG", quality=90)
    _jpeg(tmp_path / "wide.jpg", rgb, icc_profile=DISPLAY_P3_LIKE)
    paths = [tmp_path / "photo.png", tmp_path / "cmyk.jpg", tmp_path / "wide.jpg"]
    reads, images = _decoded(paths)
    for path, read, image in zip(paths, reads, images):
        assert read.data is None and read.rgb is not None, path.name
        np.testing.assert_array_equal(image.numpy(), read_image(path))
    import cv2

    unconverted = cv2.imread(str(tmp_path / "wide.jpg"))[..., ::-1].astype(int)
    assert np.abs(read_image(tmp_path / "wide.jpg").astype(int) - unconverted).mean() > 1  # converted to sRGB


def test_bad_files_get_read_images_errors(tmp_path):
    expected = make_bad_corpus(tmp_path)
    for name, reason in expected.items():
        path = tmp_path / name
        if reason:
            with pytest.raises(InputError) as device_error:
                read_for_device(path, max_pixels=40_000_000)
            with pytest.raises(InputError) as cpu_error:
                read_image(path, max_pixels=40_000_000)
            assert str(device_error.value) == str(cpu_error.value) and reason in str(device_error.value)
        else:
            (image,) = decode_on_device([read_for_device(path)], "cpu")
            np.testing.assert_array_equal(image.numpy(), read_image(path))


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path):
    path = _jpeg(tmp_path / "big.jpg", np.zeros((300, 400, 3), np.uint8))
    with pytest.raises(InputError, match=r"400x300 = 120,000 pixels, over the limit of 100,000"):
        read_for_device(path, max_pixels=100_000)
    assert read_for_device(path, max_pixels=120_000).data is not None


def test_a_jpeg_the_decoder_refuses_fails_alone_and_the_batch_goes_on(tmp_path):
    """A JPEG with a valid header whose scan is garbage: the batch is retried one file at a time, and that file
    gets what the CPU path makes of it (here: its error, or its pixels where libjpeg-turbo recovers)."""
    data = bytearray(PHOTOS[0].read_bytes())
    start = data.index(b"\xff\xda")  # start of scan: scramble the entropy-coded data after its header
    data[start + 20 : start + 400] = b"\xff\x00" * 190
    data[start + 400 : start + 402] = b"\xff\xd0"  # a restart marker where none belongs
    bad = tmp_path / "scrambled.jpg"
    bad.write_bytes(bytes(data))
    reads = [read_for_device(p) for p in (PHOTOS[1], bad, PHOTOS[2])]
    images = decode_on_device(reads, "cpu")
    _assert_close(images[0], read_image(PHOTOS[1]))
    _assert_close(images[2], read_image(PHOTOS[2]))
    try:
        reference = read_image(bad)
    except InputError as exc:
        assert isinstance(images[1], InputError) and str(images[1]) == str(exc)
    else:
        assert images[1].shape == reference.shape


def _awkward_images():
    photos = [read_image(p) for p in PHOTOS]
    return photos + [photos[1][:40, :13].copy(), np.ascontiguousarray(photos[2][::3, ::2]), photos[0][:5, :600].copy()]


@pytest.mark.parametrize("pre", [
    Preprocess(224, 256),  # torchvision's classifiers: shorter side, centre crop
    Preprocess(224, 232, interpolation="bicubic"),
    Preprocess(None, 520),  # torchvision's segmenters: shorter side, no crop
    Preprocess(28, 28, mean=(0.5,), std=(0.5,), grayscale=True, resize_mode="exact"),  # LeNet-5
    Preprocess(256, None, resize_mode="none"),  # a crop alone (padded when small)
], ids=["crop224", "bicubic", "shorter520", "lenet", "crop-only"])
def test_batched_preprocessing_matches_the_per_image_opencv_path(pre):
    images = _awkward_images()
    out = preprocess_images([torch.from_numpy(rgb) for rgb in images], pre)
    for rgb, tensor in zip(images, out):
        reference = pre(rgb)
        assert tuple(tensor.shape) == reference.shape and tensor.dtype == torch.float32
        levels = np.abs(reference - tensor.numpy()) * np.asarray(pre.std, np.float32)[:, None, None] * 255
        assert levels.max() <= 1.0 + 1e-3 and levels.mean() <= 0.2


def test_batched_letterbox_matches_opencvs_and_its_boxes():
    images = _awkward_images()
    batch, boxes = letterbox_batch([torch.from_numpy(rgb) for rgb in images], 320)
    assert tuple(batch.shape) == (len(images), 3, 320, 320)
    for rgb, tensor, box in zip(images, batch, boxes):
        reference, reference_box = letterbox(rgb, 320)
        assert box == reference_box
        levels = np.abs(reference.transpose(2, 0, 1).astype(np.float32) - tensor.numpy() * 255)
        assert levels.max() <= 1.0 + 1e-3 and levels.mean() <= 0.1


# -- wired into the pipelines: what a CUDA placement takes, forced on the CPU ---------------------------------

def _run(pipeline, paths, batch_size=4):
    from cvtool.io.inputs import InputItem
    from cvtool.pipelines.runner import run

    return list(run(pipeline, [InputItem(str(p)) for p in paths], batch_size=batch_size, workers=2))


def _inputs(tmp_path) -> list[Path]:
    """The photos, one turned by EXIF, a PNG (the CPU's) and a missing file (its error in its place)."""
    from PIL import Image

    turned = _with_orientation(tmp_path / "turned.jpg", read_image(PHOTOS[1]), 6)
    Image.fromarray(read_image(PHOTOS[2])).save(tmp_path / "coffee.png")
    return [*PHOTOS, turned, tmp_path / "coffee.png", tmp_path / "missing.jpg"]


def test_classify_decoding_on_the_device_gives_the_cpu_paths_records(tmp_path):
    from cvtool.models.loading import load_model
    from cvtool.models.registry import get_entry
    from cvtool.pipelines.classify import ClassifyPipeline

    torch.manual_seed(0)
    weights = tmp_path / "mobilenet.pt"
    torch.save(get_entry("mobilenet_v3_small").build().state_dict(), weights)
    model = load_model("mobilenet_v3_small", task="classify", weights=weights, progress=False)
    paths = _inputs(tmp_path)
    on_device = ClassifyPipeline(model, top_k=3, decode_on_device=True)
    assert on_device.decode_on_device and isinstance(on_device.prepare(str(PHOTOS[0])), DeviceRead)
    cpu = _run(ClassifyPipeline(model, top_k=3, full_decode=True), paths)
    device = _run(on_device, paths)
    assert [r["path"] for r in device] == [str(p) for p in paths]
    assert device[-1]["error"] == cpu[-1]["error"] == "no such file"
    for a, b in zip(device[:-1], cpu[:-1]):
        assert [t["index"] for t in a["result"]["top_k"]] == [t["index"] for t in b["result"]["top_k"]]
        assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["result"]["top_k"], b["result"]["top_k"])) < 5e-3


def test_detect_decoding_on_the_device_gives_the_cpu_paths_boxes(tmp_path):
    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.loading import load_model
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector
    from cvtool.pipelines.detect import DetectPipeline

    torch.manual_seed(0)
    weights = tmp_path / "yolo.pt"
    save_checkpoint(weights, arch="yolo", task="detect", state_dict=YoloDetector(num_classes=3, width=8, img_size=160)
                    .state_dict(), classes=["a", "b", "c"], preprocess=YOLO_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"width": 8, "img_size": 160}})
    model = load_model(None, task="detect", weights=weights, progress=False)
    paths = _inputs(tmp_path)
    on_device = DetectPipeline(model, conf=0.0, max_det=10, decode_on_device=True)
    assert on_device.decode_on_device
    cpu = _run(DetectPipeline(model, conf=0.0, max_det=10, full_decode=True), paths)
    device = _run(on_device, paths)
    assert device[-1]["error"] == cpu[-1]["error"] == "no such file"
    for a, b in zip(device[:-1], cpu[:-1]):
        assert a["result"]["size"] == b["result"]["size"]
        x, y = (np.array([d["box"] for d in r["result"]["detections"]]).reshape(-1, 4) for r in (a, b))
        assert len(x) == len(y) > 0
        assert np.abs(x - y).max() <= 1.0  # each box within a pixel (the letterbox's uint8 rounding)


def test_segment_decoding_on_the_device_gives_the_cpu_paths_areas(tmp_path):
    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.loading import load_model
    from cvtool.models.unet import UNET_PREPROCESS, UNet
    from cvtool.pipelines.segment import SegmentPipeline

    torch.manual_seed(0)
    weights = tmp_path / "unet.pt"
    save_checkpoint(weights, arch="unet", task="segment", state_dict=UNet(num_classes=3, width=8, depth=2).state_dict(),
                    classes=["a", "b", "c"], preprocess=UNET_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"width": 8, "depth": 2}})
    model = load_model(None, task="segment", weights=weights, progress=False)
    paths = _inputs(tmp_path)
    on_device = SegmentPipeline(model, decode_on_device=True)
    assert on_device.decode_on_device and isinstance(on_device.prepare(str(PHOTOS[0])).tensor, DeviceRead)
    cpu = _run(SegmentPipeline(model, full_decode=True), paths)
    device = _run(on_device, paths)
    assert device[-1]["error"] == cpu[-1]["error"] == "no such file"
    for a, b in zip(device[:-1], cpu[:-1]):
        assert a["result"]["size"] == b["result"]["size"]
        pixels = {c["index"]: c["pixels"] for c in b["result"]["classes"]}
        total = b["result"]["size"][0] * b["result"]["size"][1]
        assert sum(abs(c["pixels"] - pixels.get(c["index"], 0)) for c in a["result"]["classes"]) <= 0.005 * total


def test_segment_counts_on_the_device_with_classes_and_a_resize(tmp_path):
    """A segmenter that resizes (shorter side 40) and --classes: the areas counted on the device (the labels resized
    back to each photo's size there) are the CPU path's; a thin strip, padded first on the host, shares the batch."""
    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.loading import load_model
    from cvtool.models.unet import UNet
    from cvtool.pipelines.segment import SegmentPipeline

    torch.manual_seed(1)
    weights = tmp_path / "unet.pt"
    pre = Preprocess(None, 40, mean=(0.5,), std=(0.5,), grayscale=True)
    save_checkpoint(weights, arch="unet", task="segment", state_dict=UNet(num_classes=3, width=8, depth=2).state_dict(),
                    classes=["a", "b", "c"], preprocess=pre.to_dict(), extra={"arch_kwargs": {"width": 8, "depth": 2}})
    model = load_model(None, task="segment", weights=weights, progress=False)
    _jpeg(tmp_path / "strip.jpg", read_image(PHOTOS[0])[:20, :400])
    paths = [*_inputs(tmp_path)[:-1], tmp_path / "strip.jpg"]
    device = _run(SegmentPipeline(model, classes=["b", "c"], decode_on_device=True), paths, batch_size=6)
    cpu = _run(SegmentPipeline(model, classes=["b", "c"], full_decode=True), paths, batch_size=6)
    assert [r["path"] for r in device] == [str(p) for p in paths]
    for a, b in zip(device, cpu):
        assert a["result"]["size"] == b["result"]["size"]
        pixels = {c["index"]: c["pixels"] for c in b["result"]["classes"]}
        total = b["result"]["size"][0] * b["result"]["size"][1]
        assert sum(c["pixels"] for c in a["result"]["classes"]) == total
        assert sum(abs(c["pixels"] - pixels.get(c["index"], 0)) for c in a["result"]["classes"]) <= 0.01 * total
