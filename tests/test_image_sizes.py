"""Odd image sizes through every command: 1x1, single rows and columns, a few pixels, very thin and very
wide strips. Each input gets exactly one record (a result, or one error line for a size the model cannot
take), no traceback, exit code 0 or 1, and the rest of the batch is processed. Models are small
random-weight networks built and saved here."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import SHARED, SAMPLES, jsonl, run_cli
from PIL import Image
from typer.testing import CliRunner

SIZES = [(1, 1), (1, 500), (500, 1), (2, 2), (3, 7), (7, 3), (17, 1000), (1000, 17), (1, 4000), (4000, 1)]
NORMAL = (48, 64)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """The odd sizes, then an ordinary image last (so the batch must go on past all of them)."""
    root = tmp_path_factory.mktemp("sizes")
    rng = np.random.default_rng(0)
    paths = []
    for h, w in [*SIZES, NORMAL]:
        path = root / f"{h}x{w}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.registry import get_entry
    from cvtool.models.transformer_net import FAST_STYLE_PREPROCESS, TransformerNet
    from cvtool.models.unet import UNET_PREPROCESS, UNet
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    yolo = YoloDetector(num_classes=2, width=4, img_size=64)
    with torch.no_grad():  # random weights that do give boxes (the head starts with a rare-object prior)
        yolo.head.bias.zero_()
    save_checkpoint(root / "yolo.pt", arch="yolo", task="detect", state_dict=yolo.state_dict(), classes=["a", "b"],
                    preprocess=YOLO_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"anchors": yolo.anchors.tolist(), "width": 4, "img_size": 64}})
    unet = UNet(num_classes=2, in_channels=1, width=4, depth=3)  # inputs padded to multiples of 8
    save_checkpoint(root / "unet.pt", arch="unet", task="segment", state_dict=unet.state_dict(), classes=["bg", "fg"],
                    preprocess=UNET_PREPROCESS.to_dict(), extra={"arch_kwargs": {"width": 4, "depth": 3, "in_channels": 1}})
    style = TransformerNet(width=4, blocks=1)
    save_checkpoint(root / "style.pt", arch="fast_style", task="stylize", state_dict=style.state_dict(),
                    preprocess=FAST_STYLE_PREPROCESS.to_dict(), extra={"arch_kwargs": {"width": 4, "blocks": 1}})
    torch.save(get_entry("ssdlite320_mobilenet_v3_large").build().state_dict(), root / "ssd.pt")
    # torchvision's LR-ASPP at a 64-pixel shorter side (its own is 520): the same network, fast enough here
    lraspp = get_entry("lraspp_mobilenet_v3_large")
    pre = {**lraspp.preprocess().to_dict(), "resize_size": 64}
    save_checkpoint(root / "lraspp.pt", arch=lraspp.name, task="segment", state_dict=lraspp.build().state_dict(),
                    classes=lraspp.classes(), preprocess=pre)
    return {p.stem: p for p in root.iterdir()}


def _check(result, images, *, failing=(), sized=True):
    """One record per input in order; the failing sizes are one error line each, all others results."""
    assert "Traceback" not in result.stderr
    assert result.returncode == (1 if failing else 0), result.stderr
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == images
    errors = {r["path"] for r in records if "error" in r}
    assert errors == {p for p in images if p.rsplit("/", 1)[-1].removesuffix(".png") in failing}
    for record in records:
        if "error" not in record and sized:
            h, w = (int(v) for v in record["path"].rsplit("/", 1)[-1].removesuffix(".png").split("x"))
            assert record["result"]["size"] == [h, w]
    for path in errors:  # one line on stderr each, naming the file
        assert sum(line.startswith(f"cvtool: {path}: ") for line in result.stderr.splitlines()) == 1
    return records


def test_classify_lenet5_takes_every_size(images):
    records = _check(run_cli("classify", *images, "-m", "lenet5_digits", "-f", "jsonl"), images, sized=False)
    assert all(len(r["result"]["top_k"]) == 5 for r in records)


def test_detect_with_our_yolo_takes_every_size_and_boxes_stay_inside(images, models):
    records = _check(run_cli("detect", *images, "--weights", str(models["yolo"]), "--conf", "0.01", "-f", "jsonl"),
                     images)
    assert sum(len(r["result"]["detections"]) for r in records) > 0
    for record in records:
        h, w = record["result"]["size"]
        for det in record["result"]["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


def test_detect_with_a_torchvision_detector_takes_every_size(images, models):
    _check(run_cli("detect", *images, "-m", "ssdlite320_mobilenet_v3_large", "--weights", str(models["ssd"]),
                   "-f", "jsonl"), images)


@pytest.mark.parametrize("tile", [None, "32"])
def test_segment_with_a_unet_takes_every_size_whole_or_tiled(images, models, tmp_path, tile):
    extra = ["--tile", tile, "--overlap", "4"] if tile else []
    records = _check(run_cli("segment", *images, "--weights", str(models["unet"]), "--out", str(tmp_path), *extra,
                             "-f", "jsonl"), images)
    for record in records:  # the mask has the input's own size
        assert Image.open(record["outputs"][0]).size == tuple(reversed(record["result"]["size"]))


def test_segment_with_a_torchvision_segmenter_takes_every_size(images, models):
    _check(run_cli("segment", *images, "-m", "lraspp_mobilenet_v3_large", "--weights", str(models["lraspp"]),
                   "-f", "jsonl"), images)


def test_feed_forward_stylize_takes_every_size(images, models, tmp_path):
    records = _check(run_cli("stylize", *images, "--model", str(models["style"]), "--out", str(tmp_path), "-f", "jsonl"),
                     images)
    for record in records:
        assert Image.open(record["outputs"][0]).size == tuple(reversed(record["result"]["size"]))


def test_stylize_by_optimisation_names_the_sizes_vgg_cannot_take(images, tmp_path):
    from test_stylize import TinyVGG

    from cvtool.cli import app
    from cvtool.models.registry import ModelEntry, register, unregister
    from cvtool.ops.preprocess import Preprocess

    torch.manual_seed(0)
    torch.save(TinyVGG().state_dict(), tmp_path / "vgg.pt")
    register(ModelEntry(name="test_sizes_vgg", task="classify", family="vgg", builder=TinyVGG,
                        preprocess=lambda: Preprocess(crop_size=32, resize_size=32), classes=lambda: None,
                        feature_stack=lambda m: m.features))
    try:
        result = CliRunner().invoke(app, [
            "stylize", *images, "--style", str(SAMPLES / "photos" / "coffee.jpg"), "--vgg", "test_sizes_vgg",
            "--weights", str(tmp_path / "vgg.pt"), "--size", "64", "--steps", "1", "--content-layer", "relu3_1",
            "--style-layers", "relu1_1,relu2_1", "--out", str(tmp_path / "out"), "-f", "jsonl"])
    finally:
        unregister("test_sizes_vgg")
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [r["path"] for r in records] == images
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in records if "error" in r}
    # relu3_1 sits after two poolings: at least 4 pixels a side once fitted to --size 64 (a 1x1 image
    # becomes 64x64 and is fine; a 1x500 strip becomes 1x64 and is not)
    assert errors["1x500.png"] == ("image is 1x500 pixels (1x64 at size 64); style transfer through these VGG "
                                   "layers needs at least 4x4")
    assert set(errors) == {"1x500.png", "500x1.png", "17x1000.png", "1000x17.png", "1x4000.png", "4000x1.png"}
    assert records[-1]["result"]["size"] == [48, 64]


@pytest.mark.skipif(not (SHARED / "faces").is_dir(), reason="the shared face photos are not here")
def test_verify_face_gallery_takes_every_size(images, tmp_path):
    known = tmp_path / "known"
    known.mkdir()
    shutil.copy(SHARED / "faces" / "obama" / "obama1.jpg", known / "obama.jpg")
    result = run_cli("verify-face", "--gallery", str(known), *images, "-f", "jsonl")
    assert "Traceback" not in result.stderr and result.returncode in (0, 1), result.stderr
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == images
    assert all("error" in r or r["result"]["faces"] == [] for r in records)  # random pixels hold no face


@pytest.mark.parametrize("model", ["yolo", "unet"])
def test_exported_onnx_backends_take_every_size(images, models, model, tmp_path):
    pytest.importorskip("onnxruntime")
    command = "detect" if model == "yolo" else "segment"
    result = run_cli(command, *images, "--weights", str(models[model]), "--backend", "onnxruntime", "-f", "jsonl",
                     env={"CVTOOL_CACHE": str(tmp_path / "cache")})
    _check(result, images)


class _Exploding:
    """A pipeline whose predict fails on one input: the runner's last line of defence."""

    task, model_name, weights_sha256 = "test", "explode", None
    max_pixels, no_video_reason = None, "a test pipeline"

    def already_done(self, path):
        return False

    def prepare(self, path):
        return path

    def predict(self, samples):
        if "bad" in samples:
            raise RuntimeError("tensor sizes do not match\nsecond line")
        return [{"ok": s} for s in samples]


def test_an_unexpected_failure_in_predict_fails_only_its_own_input():
    from cvtool.io.inputs import InputItem
    from cvtool.pipelines.runner import run

    records = list(run(_Exploding(), [InputItem(p) for p in ["a", "bad", "c", "d"]], batch_size=4, workers=1))
    assert [r.get("error") or r["result"] for r in records] == [
        {"ok": "a"}, "could not be processed (RuntimeError: tensor sizes do not match)", {"ok": "c"}, {"ok": "d"}]


def test_a_usage_error_in_predict_still_stops_the_command():
    from cvtool.errors import UsageError
    from cvtool.io.inputs import InputItem
    from cvtool.pipelines.runner import run

    class Refusing(_Exploding):
        def predict(self, samples):
            raise UsageError("--tile must be a multiple of 16")

    with pytest.raises(UsageError):
        list(run(Refusing(), [InputItem("a")], workers=1))
