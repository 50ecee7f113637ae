"""Style transfer: the costs by hand, VGG layer names, and real optimisation runs on a small random
VGG-shaped network (ImageNet VGG weights cannot be downloaded here)."""

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import SAMPLES
from torch import nn
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.device import CPU
from cvtool.io.image import read_image
from cvtool.models.registry import ModelEntry, register, unregister
from cvtool.models.vgg_features import VGGFeatures, layer_names
from cvtool.ops.preprocess import Preprocess
from cvtool.ops.style import content_cost, gram_matrix, style_layer_cost
from cvtool.pipelines.stylize import StyleSettings, Stylizer, gram_distance

LAYERS = dict(content_layer="relu3_1", style_layers=("relu1_1", "relu2_1", "relu3_1"))


class TinyVGG(nn.Module):
    """VGG's layout (3x3 conv + ReLU blocks between 2x2 max-pools) at a few channels."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers, channels = [], 3
        for width, convs in ((8, 2), (16, 2), (16, 3), (16, 3)):
            for _ in range(convs):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


@pytest.fixture
def tiny_vgg(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tinyvgg.pt"
    torch.save(TinyVGG().state_dict(), path)
    register(ModelEntry(name="test_tinyvgg", task="classify", family="vgg", builder=TinyVGG,
                        preprocess=lambda: Preprocess(crop_size=32, resize_size=32),
                        classes=lambda: [str(i) for i in range(10)], feature_stack=lambda m: m.features))
    yield path
    unregister("test_tinyvgg")


def test_gram_matrix_and_costs_by_hand():
    a = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[0.0, 1.0], [3.0, 0.0]]]])  # 1 x C=2 x 2 x 2
    gram = gram_matrix(a)[0]
    # rows of the unrolled activations: [1, 2, 0, 1] and [0, 1, 3, 0]
    assert gram.tolist() == [[6.0, 2.0], [2.0, 10.0]]
    b = a + 1
    assert content_cost(a, b).item() == pytest.approx(8 / (4 * 2 * 2 * 2))
    diff = (gram_matrix(a)[0] - gram_matrix(b)[0]) ** 2
    assert style_layer_cost(gram_matrix(a), b).item() == pytest.approx(diff.sum().item() / (4 * 2**2 * 4**2))


def test_vgg19_layer_names_follow_the_papers():
    from torchvision.models import vgg19

    with torch.device("meta"):
        names = layer_names(vgg19().features)
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names.index("relu4_2") == 22 and names.index("relu5_1") == 29 and len(names) == 37


def test_feature_extractor_stops_at_the_deepest_layer_and_keeps_activations():
    features = TinyVGG().features
    extractor = VGGFeatures(features, ["relu1_1", "relu2_1"], pool="avg")
    assert len(extractor.stack) == 7 and isinstance(extractor.stack[4], nn.AvgPool2d)
    x = torch.rand(1, 3, 16, 16)
    out = extractor(x)
    assert set(out) == {"relu1_1", "relu2_1"}
    # the same activations by hand, from the convolutions' own weights: conv1_1 is features[0], conv1_2 [2],
    # conv2_1 [5]; the 2x2 pool between the blocks averages (pool="avg")
    conv = lambda i, t: nn.functional.conv2d(t, features[i].weight, features[i].bias, padding=1)  # noqa: E731
    relu1_1 = conv(0, x).relu()
    relu2_1 = conv(5, nn.functional.avg_pool2d(conv(2, relu1_1).relu(), 2)).relu()
    assert torch.allclose(out["relu1_1"], relu1_1, atol=1e-6) and torch.allclose(out["relu2_1"], relu2_1, atol=1e-6)
    with pytest.raises(Exception, match="unknown VGG layer"):
        VGGFeatures(TinyVGG().features, ["relu9_9"])


def _stylizer(settings: StyleSettings, style: np.ndarray) -> Stylizer:
    torch.manual_seed(0)
    stylizer = Stylizer(TinyVGG().features, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), settings, CPU)
    stylizer.set_styles([style])
    return stylizer


@pytest.mark.parametrize("optimizer, lr", [("lbfgs", 1.0), ("adam", 0.01)])
def test_optimisation_moves_the_textures_towards_the_style(optimizer, lr):
    content = read_image(SAMPLES / "photos" / "chelsea.jpg")
    style = read_image(SAMPLES / "photos" / "coffee.jpg")
    settings = StyleSettings(size=64, steps=40, optimizer=optimizer, lr=lr, style_weight=1e4, **LAYERS)
    stylizer = _stylizer(settings, style)
    history = []
    result, losses = stylizer.stylize(content, lambda report: history.append(report.losses["style"]))
    assert result.shape == (43, 64, 3) and result.dtype == np.uint8
    assert len(history) == 40
    assert history[-1] < 0.2 * history[0]  # the style cost falls a lot...
    windows = [np.mean(history[i : i + 10]) for i in range(0, 40, 10)]
    assert all(b < a for a, b in zip(windows, windows[1:])), windows  # ...and steadily, 10 steps at a time
    size = result.shape[:2]
    assert gram_distance(stylizer, result, size) < 0.25 * gram_distance(stylizer, cv2.resize(content, size[::-1]), size)


def test_preserve_color_keeps_the_content_chroma_and_multiscale_runs():
    content = read_image(SAMPLES / "photos" / "chelsea.jpg")
    style = read_image(SAMPLES / "photos" / "coffee.jpg")
    result, _ = _stylizer(StyleSettings(size=64, steps=6, preserve_color=True, scales=2, **LAYERS), style).stylize(content)
    small = cv2.resize(content, result.shape[1::-1], interpolation=cv2.INTER_AREA)
    chroma = lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2YCrCb)[..., 1:].astype(int)  # noqa: E731
    assert np.abs(chroma(result) - chroma(small)).mean() < 3


def test_cli_writes_the_image_the_record_and_intermediates(tiny_vgg, tmp_path):
    content, style = SAMPLES / "photos" / "chelsea.jpg", SAMPLES / "photos" / "coffee.jpg"
    out = tmp_path / "result.png"
    result = CliRunner().invoke(app, [
        "stylize", str(content), str(style), "--vgg", "test_tinyvgg", "--weights", str(tiny_vgg), "--size", "48",
        "--steps", "6", "--save-every", "3", "--content-layer", "relu3_1", "--style-layers", "relu1_1,relu2_1",
        "--out", str(out), "-f", "jsonl"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["task"] == "stylize" and record["outputs"] == [str(out)]
    assert record["result"]["size"] == [32, 48] and set(record["result"]["losses"]) == {"content", "style", "tv", "total"}
    assert read_image(out).shape == (32, 48, 3)
    assert (tmp_path / "result.step0003.png").exists()


def test_cli_needs_a_style_and_reuses_styles_for_many_contents(tiny_vgg, tmp_path):
    runner = CliRunner()
    alone = runner.invoke(app, ["stylize", str(SAMPLES / "photos" / "chelsea.jpg")])
    assert alone.exit_code == 2 and "give a style image" in alone.output
    many = runner.invoke(app, [
        "stylize", str(SAMPLES / "photos" / "chelsea.jpg"), str(SAMPLES / "photos" / "astronaut.jpg"),
        "--style", str(SAMPLES / "photos" / "coffee.jpg"), "--vgg", "test_tinyvgg", "--weights", str(tiny_vgg),
        "--size", "32", "--steps", "2", "--content-layer", "relu2_1", "--style-layers", "relu1_1",
        "--out", str(tmp_path / "styled"), "-f", "jsonl"])
    assert many.exit_code == 0, many.output
    assert sorted(p.name for p in (tmp_path / "styled").iterdir()) == [".cvtool-outputs", "astronaut.stylized.png", "chelsea.stylized.png"]
    broken = tmp_path / "starry.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    offline = runner.invoke(app, ["--offline", "stylize", str(SAMPLES / "photos" / "chelsea.jpg"), str(broken)])
    # the style image is read before the VGG weights are sought (a download of 548 MB for vgg19)
    assert offline.exit_code == 1 and offline.stderr.strip().splitlines() == [
        f"cvtool: {broken}: truncated or corrupt PNG (no IEND chunk)"]


def _tiny_video(path, frames=5, size=(48, 32), fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 40 * i, np.uint8)
        cv2.circle(frame, (10 + 5 * i, 16), 6, (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def test_train_style_then_stylize_images_and_video_in_one_pass(tiny_vgg, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    trained = runner.invoke(app, [
        "train", "style", str(SAMPLES / "photos" / "coffee.jpg"), "--data", str(SAMPLES / "photos"), "--vgg",
        "test_tinyvgg", "--vgg-weights", str(tiny_vgg), "--epochs", "3", "--img-size", "32", "--batch-size", "2",
        "--width", "4", "--lr", "1e-2", "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    assert {"best.pt", "last.pt", "metrics.csv", "curves.png", "summary.json"} <= {p.name for p in run.iterdir()}
    rows = list(__import__("csv").DictReader(open(run / "metrics.csv")))
    assert len(rows) == 3 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # the summary names the epoch best.pt holds (it said "best epoch None" while writing best.pt)
    from cvtool.models.checkpoint import load_weights_file

    summary = json.loads((run / "summary.json").read_text())
    best = min(rows, key=lambda row: float(row["val_loss"]))
    assert summary["best_epoch"] == int(best["epoch"]) == load_weights_file(run / "best.pt").meta["epoch"]
    assert f"best epoch {summary['best_epoch']}; {run}/best.pt" in trained.stderr

    video = _tiny_video(tmp_path / "clip.avi")
    out = tmp_path / "styled"
    result = runner.invoke(app, ["stylize", str(SAMPLES / "photos" / "chelsea.jpg"), str(video), "--model",
                                 str(run / "best.pt"), "--out", str(out), "-f", "jsonl"])
    assert result.exit_code == 0, result.output
    image_record, *frame_records = [json.loads(line) for line in result.stdout.splitlines()]
    assert image_record["model"] == "fast_style" and image_record["result"]["size"] == [300, 451]
    assert read_image(out / "chelsea.stylized.png").shape == (300, 451, 3)
    assert [(r["frame"], r["time_s"], r["result"]["size"]) for r in frame_records] == [
        (i, i / 10, [32, 48]) for i in range(5)]
    capture = cv2.VideoCapture(str(out / "clip.stylized.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5 and int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 48
    capture.release()
    tiled = runner.invoke(app, ["stylize", str(SAMPLES / "photos" / "chelsea.jpg"), "--model", str(run / "best.pt"),
                                "--tile", "128", "--overlap", "16", "--out", str(tmp_path / "tiled.png"), "-f", "jsonl"])
    assert tiled.exit_code == 0, tiled.output
    assert read_image(tmp_path / "tiled.png").shape == (300, 451, 3)


def test_train_style_offline_names_its_own_weights_option(tmp_path):
    """The loss network's weights are given with --vgg-weights, and the offline message says so (not --weights)."""
    result = CliRunner().invoke(app, ["--offline", "train", "style", str(SAMPLES / "photos" / "coffee.jpg"), "--data",
                                      str(SAMPLES / "photos"), "--epochs", "1", "--out", str(tmp_path / "run")],
                                env={"CVTOOL_OFFLINE": "1"})
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("cvtool: weights file vgg16-") and line.endswith("or pass --vgg-weights FILE")
    assert not (tmp_path / "run").exists()
