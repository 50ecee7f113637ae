"""Segmentation: U-Net shapes, tiling, rendering, the segment pipeline on a network whose answer is
known, data loading, metrics, and a short real training run."""

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.errors import UsageError
from cvtool.io.render import class_palette, indexed_png, overlay
from cvtool.models.layers import DoubleConv
from cvtool.models.registry import ModelEntry, register, unregister
from cvtool.models.unet import UNet
from cvtool.ops.preprocess import Preprocess
from cvtool.ops.tiling import tiled_logits
from cvtool.train.segmentation import (IGNORE_INDEX, dice_loss, open_segmentation_data, read_mask,
                                       scores_from_confusion)


@pytest.mark.parametrize("size, depth", [((64, 96), 4), ((32, 32), 2), ((48, 80), 3)])
def test_unet_output_matches_input_and_transpose_convs_double_resolution(size, depth):
    model = UNet(num_classes=3, in_channels=1, width=4, depth=depth).eval()
    assert model(torch.zeros(2, 1, *size)).shape == (2, 3, *size)
    for up in model.up:  # each transpose conv: 2x2 kernel, stride 2 -> exactly twice the size, half the channels
        out = up(torch.zeros(1, up.in_channels, 5, 7))
        assert out.shape == (1, up.in_channels // 2, 10, 14)
    # the merge after each skip connection takes the concatenation: twice the level's channels
    assert [m[0][0].in_channels for m in model.merge] == [2 * w for w in (4 * 2**i for i in reversed(range(depth)))]


def test_unet_width_scales_parameters_quadratically():
    count = lambda w: sum(p.numel() for p in UNet(2, 1, width=w, depth=4).parameters())  # noqa: E731
    assert 3.8 < count(32) / count(16) < 4.1
    assert isinstance(UNet().down[0], DoubleConv)


@pytest.mark.parametrize("tile, overlap", [(16, 4), (32, 8), (64, 0), (100, 10)])
def test_tiling_reproduces_a_pointwise_network_exactly(tile, overlap):
    image = torch.randn(1, 70, 45)
    conv = torch.nn.Conv2d(1, 3, 1)
    with torch.no_grad():
        expected = conv(image[None])[0]
        got = tiled_logits(conv, image, num_classes=3, tile=tile, overlap=overlap, batch_size=3)
    assert got.shape == (3, 70, 45)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_tiling_rejects_overlap_of_half_a_tile():
    with pytest.raises(UsageError, match="less than half"):
        tiled_logits(lambda x: x, torch.zeros(1, 8, 8), num_classes=1, tile=8, overlap=4)


def test_overlay_blends_colours_and_leaves_background_untouched():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [2, 0]], np.uint8)
    palette = class_palette()
    out = overlay(rgb, labels, 0.5, palette)
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [int(v) for v in (100 * 0.5 + palette[1] * 0.5 + 0.5)]
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0] and palette[15].tolist() == [192, 128, 128]


def test_indexed_png_holds_class_ids_and_palette(tmp_path):
    labels = np.array([[0, 1, 2], [20, 1, 0]], np.uint8)
    (tmp_path / "m.png").write_bytes(indexed_png(labels))
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P" and np.array_equal(np.asarray(image), labels)
    assert image.getpalette()[3:6] == [128, 0, 0]
    assert np.array_equal(read_mask(tmp_path / "m.png"), labels)


@pytest.fixture
def threshold_model(tmp_path):
    """A real (1x1 convolution) network with a known answer: class 1 = bright pixels, class 0 = dark."""
    conv = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1)
        conv.bias.zero_()
    path = tmp_path / "threshold.pt"
    torch.save(conv.state_dict(), path)
    register(ModelEntry(
        name="test_threshold", task="segment", family="test", builder=lambda num_classes=2: torch.nn.Conv2d(1, num_classes, 1),
        preprocess=lambda: Preprocess(crop_size=None, resize_size=None, mean=(0.5,), std=(0.5,), grayscale=True,
                                      resize_mode="none"),
        classes=lambda: ["dark", "bright"],
    ))
    yield path
    unregister("test_threshold")


def _square_image(path):
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:30, 20:50] = 255  # 20 x 30 = 600 bright pixels of 2400
    cv2.imwrite(str(path), image)
    return image


def test_segment_writes_exact_mask_overlay_counts_and_class_masks(threshold_model, tmp_path):
    image = _square_image(tmp_path / "square.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "square.png"), "-m", "test_threshold", "--weights",
                                      str(threshold_model), "--out", str(out), "--save-mask", "-f", "jsonl"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["result"] == {"size": [40, 60], "classes": [
        {"index": 0, "label": "dark", "pixels": 1800, "fraction": 0.75},
        {"index": 1, "label": "bright", "pixels": 600, "fraction": 0.25}]}
    expected = (image[..., 0] > 127).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(out / "square.mask.png")), expected)
    shown = cv2.cvtColor(cv2.imread(str(out / "square.overlay.png")), cv2.COLOR_BGR2RGB)
    assert shown[0, 0].tolist() == [0, 0, 0] and shown[20, 30].tolist() == [192, 128, 128]  # 255*.5 + 128*.5
    assert np.array_equal(cv2.imread(str(out / "square.mask-bright.png"), cv2.IMREAD_GRAYSCALE), expected * 255)
    assert sorted(p.name for p in out.iterdir()) == [".cvtool-outputs",  # the manifest of what cvtool wrote
        "square.mask-bright.png", "square.mask-dark.png", "square.mask.png", "square.overlay.png"]


def test_segment_tiled_equals_whole_and_class_filter(threshold_model, tmp_path):
    _square_image(tmp_path / "square.png")
    runner = CliRunner()
    base = ["segment", str(tmp_path / "square.png"), "-m", "test_threshold", "--weights", str(threshold_model), "-f", "jsonl"]
    whole = json.loads(runner.invoke(app, base).stdout)
    tiled = json.loads(runner.invoke(app, [*base, "--tile", "16", "--overlap", "4"]).stdout)
    assert whole["result"] == tiled["result"]
    only_dark = json.loads(runner.invoke(app, [*base, "--classes", "dark"]).stdout)
    assert only_dark["result"]["classes"] == [{"index": 0, "label": "dark", "pixels": 2400, "fraction": 1.0}]
    bad = runner.invoke(app, [*base, "--classes", "sky"])
    assert bad.exit_code == 2 and "sky not among this model's classes" in bad.output


def _pairs(root, n=6, size=64, seed=0, binary_255=True):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = (rng.normal(90, 20, (size, size))).clip(0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for _ in range(3):
            cx, cy, r = rng.integers(10, size - 10), rng.integers(10, size - 10), rng.integers(5, 10)
            cv2.circle(mask, (int(cx), int(cy)), int(r), 1, -1)
        image[mask == 1] = np.clip(image[mask == 1].astype(int) + 80, 0, 255)
        cv2.imwrite(str(root / "images" / f"{i}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), mask * (255 if binary_255 else 1))
    return root


def test_mask_conventions_and_bad_pairs(tmp_path):
    data = open_segmentation_data(_pairs(tmp_path / "binary"))
    assert data.classes == ["background", "foreground"] and set(np.unique(data.masks[0])) == {0, 1}
    ids = open_segmentation_data(_pairs(tmp_path / "ids", binary_255=False), class_names=["bg", "disk"])
    assert ids.classes == ["bg", "disk"]
    root = _pairs(tmp_path / "broken")
    (root / "masks" / "0.png").unlink()
    cv2.imwrite(str(root / "masks" / "1.png"), np.zeros((10, 10), np.uint8))
    cv2.imwrite(str(root / "masks" / "2.png"), np.zeros((64, 64, 3), np.uint8))
    (root / "masks" / "3.png").rename(root / "masks" / "3.jpg")
    cv2.imwrite(str(root / "masks" / "3.jpg"), cv2.imread(str(root / "masks" / "3.jpg"), cv2.IMREAD_GRAYSCALE))
    skipped = []
    data = open_segmentation_data(root, on_skip=skipped.append)
    assert len(data.images) == 2 and len(skipped) == 4
    assert f"{root / 'masks' / '3.jpg'}: mask is a JPEG, whose lossy compression changes class ids along every " \
           "edge; save masks as PNG" in skipped
    assert any("no mask with the same name" in s for s in skipped)
    assert any("mask is 10x10, image 64x64" in s for s in skipped)
    assert any("expected an indexed (palette) or greyscale PNG" in s for s in skipped)


def test_scores_and_dice_loss_against_hand_computation():
    matrix = np.array([[50, 10], [5, 35]])  # rows: truth, columns: prediction
    scores = scores_from_confusion(matrix)
    assert scores["pixel_accuracy"] == pytest.approx(0.85)
    assert scores["iou"] == pytest.approx([50 / 65, 35 / 50])
    assert scores["dice"] == pytest.approx([100 / 115, 70 / 85])
    target = torch.tensor([[[0, 1], [1, IGNORE_INDEX]]])
    perfect = torch.tensor([[[[9.0, -9], [-9, 0]], [[-9, 9], [9, 0]]]])
    assert dice_loss(perfect, target).item() < 0.01
    # all wrong: class 0 has 2 predicted, 1 true, 0 shared -> (0+1)/(3+1); class 1 likewise (1 predicted, 2 true)
    assert dice_loss(-perfect, target).item() == pytest.approx(1 - 0.25, abs=1e-3)


def test_short_training_run_learns_the_disks(tmp_path):
    from cvtool.train.engine import TrainConfig
    from cvtool.train.segmentation import SegmentTrainArgs, run_training

    root = _pairs(tmp_path / "disks", n=10)
    args = SegmentTrainArgs(str(root), width=8, depth=2, crop=48, val_split=0.2)
    cfg = TrainConfig(epochs=12, batch_size=4, lr=1e-2, seed=0, monitor="val_miou", val_batch_size=1)
    summary = run_training(args, cfg, tmp_path / "run", torch.device("cpu"))
    assert summary["val"]["miou"] > 0.75 and summary["val"]["iou_foreground"] > 0.6
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best.pt", "curves.png", "examples.png", "last.pt", "metrics.csv", "summary.json"]
    result = CliRunner().invoke(app, ["segment", str(root / "images" / "0.png"), "--weights",
                                      str(tmp_path / "run" / "best.pt"), "-f", "jsonl"])
    assert result.exit_code == 0, result.output
    labels = [c["label"] for c in json.loads(result.stdout)["result"]["classes"]]
    assert set(labels) == {"background", "foreground"}
