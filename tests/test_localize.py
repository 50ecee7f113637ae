"""Classification with localisation (issue 33): `cvtool train localize`, `cvtool localize`, `cvtool val localize`.

Known answers where there are some (the loss term by term, decoding, the augmentation moving the box with the
pixels); a small generated set (one bright disk or square at a known box on a dark noisy background, plus empty
images as the Pc = 0 examples) trained for a few epochs with LeNet-5 at 32 px, scored against the baseline of
always answering the training set's mean box; the record, formats, --out files, ONNX export, the server endpoint
and the one-line errors. A real-data run (the pet photos) is behind @pytest.mark.slow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import SHARED, invoke_cli, run_cli

CLASSES = ("circle", "square")


def write_shapes(root: Path, n: int = 96, negatives: int = 32, size: int = 64, seed: int = 0) -> Path:
    """YOLO layout: images/NNN.png, labels/NNN.txt (one `class cx cy w h` line, or empty: no object), classes.txt."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    for i in range(n + negatives):
        image = rng.normal(60, 15, (size, size, 3)).clip(0, 255).astype(np.uint8)
        line = ""
        if i < n:
            r = int(rng.integers(8, 20))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            kind = i % 2
            if kind == 0:
                cv2.circle(image, (cx, cy), r, (230, 230, 230), -1)
            else:
                cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), (230, 230, 230), -1)
            line = f"{kind} {cx / size} {cy / size} {2 * r / size} {2 * r / size}\n"
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), image)
        (root / "labels" / f"{i:03d}.txt").write_text(line)
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("loc") / "shapes")


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory) -> dict:
    import cvtool

    run = tmp_path_factory.mktemp("locrun") / "run"
    torch.set_num_threads(1)
    return cvtool.train.localize(str(shapes), arch="lenet5", epochs=8, lr=3e-3, batch_size=16, out=str(run),
                                 device="cpu")


# -- the model: loss, decoding, head --------------------------------------------------------------------------

def test_the_loss_counts_box_and_class_only_where_pc_is_1():
    from cvtool.models.localizer import BOX_WEIGHT, localization_loss

    raw = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0],    # Pc logit 0, box all 0.5, classes (2, 0)
                        [1.0, 3.0, -3.0, 1.0, 1.0, 0.0, 5.0]])  # a negative: only its Pc counts
    targets = torch.tensor([[1.0, 0.25, 0.5, 0.5, 0.75, 1.0], [0.0, 0.9, 0.9, 0.9, 0.9, 0.0]])
    bce_pos = math.log(2)  # -log sigmoid(0)
    box = (0.25 ** 2 + 0 + 0 + 0.25 ** 2)
    ce = -math.log(math.exp(0) / (math.exp(2) + math.exp(0)))  # class 1 of logits (2, 0)
    bce_neg = -math.log(1 - 1 / (1 + math.exp(-1.0)))  # Pc* = 0 at logit 1
    expected = (bce_pos + BOX_WEIGHT * box + ce + bce_neg) / 2
    assert localization_loss(raw, targets).item() == pytest.approx(expected, rel=1e-5)
    # the negative's box and class outputs have no gradient at all
    raw.requires_grad_(True)
    localization_loss(raw, targets).backward()
    assert torch.all(raw.grad[1, 1:] == 0) and raw.grad[1, 0] != 0
    assert torch.all(raw.grad[0, [0, 1, 4, 5, 6]] != 0)  # the positive's Pc, its wrong box sides, its classes


def test_decode_gives_corners_as_fractions_and_probabilities():
    from cvtool.models.localizer import decode

    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    raw = np.array([[logit(0.9), logit(0.4), logit(0.5), logit(0.2), logit(0.6), 0.0, math.log(3)]], np.float32)
    out = decode(raw)
    assert out["pc"][0] == pytest.approx(0.9, abs=1e-6)
    # bx 0.4, by 0.5, bh 0.2, bw 0.6 -> x 0.1..0.7, y 0.4..0.6
    assert out["box"][0] == pytest.approx([0.1, 0.4, 0.7, 0.6], abs=1e-6)
    assert out["class_probs"][0] == pytest.approx([0.25, 0.75], abs=1e-6) and out["class"][0] == 1


def test_backbone_head_gives_the_asked_width_for_any_registered_classifier():
    from cvtool.errors import UsageError, WeightsError
    from cvtool.models.heads import BackboneHead, square_preprocess
    from cvtool.models.registry import get_entry

    for name, side in (("lenet5", 32), ("mobilenet_v3_small", 64)):
        pre = square_preprocess(get_entry(name, "classify"), side)
        assert (pre.crop_size, pre.resize_size, pre.resize_mode) == (side, side, "exact")
        net = BackboneHead(name, 9).eval()
        assert tuple(net(torch.zeros(2, pre.channels, side, side)).shape) == (2, 9)
    with pytest.raises(WeightsError, match="lenet5 has no pretrained weights"):
        BackboneHead("lenet5", 9, pretrained=True)
    with pytest.raises(UsageError, match="not a classify model"):
        BackboneHead("localizer", 9)


def test_the_augmentation_moves_the_box_with_the_pixels():
    from cvtool.models.localizer import centre_to_corners
    from cvtool.train.localization import Jitter

    side = 64
    image = np.zeros((side, side, 3), np.uint8)
    image[10:30, 20:50] = 255  # x 20..50, y 10..30
    target = np.array([1.0, 35 / side, 20 / side, 20 / side, 30 / side, 0.0], np.float32)
    jitter = Jitter(hflip=True, colour=0.0)
    for seed in range(12):
        out, moved = jitter(image, target, np.random.default_rng(seed))
        ys, xs = np.nonzero(out[..., 0] > 127)
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / side
        assert centre_to_corners(moved[None, 1:5])[0] == pytest.approx(found, abs=1.5 / side), seed
        assert 0 <= found.min() and found.max() <= 1


# -- data --------------------------------------------------------------------------------------------------

def test_images_without_a_box_are_pc_0_and_several_boxes_are_refused_or_handled(tmp_path):
    from cvtool.train.datasets import DataError
    from cvtool.train.localization import decode_images, one_box_images

    root = write_shapes(tmp_path / "d", n=4, negatives=2)
    data = decode_images(one_box_images(root), 32)
    assert data.targets[:, 0].tolist() == [1, 1, 1, 1, 0, 0]
    line = (root / "labels" / "000.txt").read_text().split()
    assert data.targets[0, 1:5] == pytest.approx([float(v) for v in (line[1], line[2], line[4], line[3])], abs=1e-6)
    (root / "labels" / "001.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.5 0.4\n")
    with pytest.raises(DataError, match=r"001.txt.*|001.png.*") as refused:
        one_box_images(root)
    assert "2 boxes; localisation takes one object per image" in str(refused.value)
    assert "\n" not in str(refused.value)
    largest = one_box_images(root, "largest")
    assert len(largest) == 6 and largest.multi_boxes == 1 and largest.targets[1, 5] == 1
    assert len(one_box_images(root, "skip")) == 5


# -- training, and what it writes -----------------------------------------------------------------------------

def _mean_box_baseline(shapes: Path, trained: dict) -> float:
    """Mean IoU on the validation images of always answering the training images' mean box."""
    from cvtool.models.localizer import box_iou, centre_to_corners
    from cvtool.train.localization import decode_images, one_box_images, split

    data = decode_images(one_box_images(shapes), 32)
    train_idx, val_idx = split(data, 0.2, 0)
    train, val = data.targets[train_idx], data.targets[val_idx]
    mean = train[train[:, 0] > 0, 1:5].mean(0)
    truth = val[val[:, 0] > 0, 1:5]
    return float(box_iou(np.repeat(centre_to_corners(mean[None]), len(truth), 0), centre_to_corners(truth)).mean())


def test_training_learns_boxes_and_presence_better_than_the_mean_box(shapes, trained):
    run = Path(trained["run_dir"])
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "examples.png", "summary.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "summary.json").read_text())["val"] == trained["val"]
    assert (trained["train_images"], trained["val_images"]) == (102, 26)
    assert (trained["train_negatives"], trained["val_negatives"]) == (26, 6)
    val = trained["val"]
    baseline = _mean_box_baseline(shapes, trained)
    assert val["mean_iou"] > baseline + 0.2, (val, baseline)
    assert val["iou50"] >= 0.6
    majority = max(trained["val_negatives"], trained["val_images"] - trained["val_negatives"]) / trained["val_images"]
    assert val["pc_accuracy"] > majority, val
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_pc_accuracy", "val_class_accuracy", "val_mean_iou", "val_iou50", "val_accuracy"} <= set(header)
    from cvtool.models.checkpoint import load_weights_file

    loaded = load_weights_file(run / "best.pt")  # weights_only
    assert (loaded.arch, loaded.task, loaded.classes) == ("localizer", "localize", list(CLASSES))
    assert loaded.meta["arch_kwargs"] == {"backbone": "lenet5"}


def test_val_localize_scores_the_api_answers_as_training_scored_them(shapes, trained, tmp_path):
    """`cvtool val localize` on the same held-out images (written as their own folder) gives training's figures:
    the same decoding and scores, through the API objects."""
    import shutil

    from cvtool.train.localization import one_box_images, split, decode_images

    data = decode_images(one_box_images(shapes), 32)
    _, val_idx = split(data, 0.2, 0)
    held = tmp_path / "held"
    (held / "images").mkdir(parents=True)
    (held / "labels").mkdir()
    shutil.copy(shapes / "classes.txt", held)
    for i in val_idx:
        stem = data.paths[i].stem
        shutil.copy(data.paths[i], held / "images")
        shutil.copy(shapes / "labels" / f"{stem}.txt", held / "labels")
    result = invoke_cli("val", "localize", str(held), "--weights", str(Path(trained["run_dir"]) / "best.pt"),
                        "--out", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # LeNet-5 reads grey: the pipeline greys then shrinks, training shrank then greyed, so allow a pixel's worth
    for key in ("pc_accuracy", "class_accuracy", "iou50"):
        assert summary[key] == pytest.approx(trained["val"][key], abs=1 / 13), key
    assert summary["mean_iou"] == pytest.approx(trained["val"]["mean_iou"], abs=0.03)
    assert (summary["images"], summary["negatives"]) == (26, 6)
    assert (tmp_path / "plots" / "examples.png").is_file()


def test_localize_prints_one_box_class_and_pc_per_image_in_the_detect_formats(shapes, trained, tmp_path):
    import cvtool

    weights = str(Path(trained["run_dir"]) / "best.pt")
    images = [str(shapes / "images" / "000.png"), str(shapes / "images" / "100.png")]  # a circle, an empty one
    localizer = cvtool.Localizer(weights=weights, device="cpu")
    results = localizer(images)
    for res in results:
        r = res.result
        assert set(r) == {"size", "pc", "label", "index", "class_prob", "box", "detections"}
        assert r["size"] == [64, 64] and 0 <= r["pc"] <= 1 and r["label"] in CLASSES
        assert res.found == (r["pc"] >= 0.5) and len(r["detections"]) == int(res.found)
        assert all(0 <= v <= 64 for v in r["box"])
    first = results[0]
    # the box is the network's fractions times the input's own width and height: a 128 x 64 image
    from cvtool.models.loading import load_model
    from cvtool.models.localizer import decode

    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), cv2.resize(cv2.imread(images[0]), (128, 64)))
    answer = localizer(str(wide)).result
    loaded = load_model(None, task="localize", weights=weights)
    rgb = cv2.cvtColor(cv2.imread(str(wide)), cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        fractions = decode(loaded.module(torch.from_numpy(loaded.preprocess(rgb))[None]).numpy())
    assert answer["size"] == [64, 128]
    assert answer["box"] == pytest.approx((fractions["box"][0] * [128, 64, 128, 64]).tolist(), abs=0.01)
    assert answer["pc"] == pytest.approx(float(fractions["pc"][0]), abs=1e-4)
    assert answer["label"] == CLASSES[int(fractions["class"][0])]
    # the CLI: the same records (jsonl), a table row per image, COCO and YOLO text as detect writes them
    out = tmp_path / "out"
    jsonl = run_cli("localize", *images, "--weights", weights, "-f", "jsonl", "--out", str(out), "--device", "cpu")
    assert jsonl.returncode == 0, jsonl.stderr
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["result"] for r in records] == [r.result for r in results]
    assert sorted(p.name for p in out.glob("*.jpg")) == ["000.localize.jpg", "100.localize.jpg"]
    assert cv2.imread(str(out / "000.localize.jpg")).shape == (64, 64, 3)
    coco = json.loads(invoke_cli("localize", *images, "--weights", weights, "-f", "coco").stdout)
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    assert len(coco["annotations"]) == sum(r.found for r in results)
    yolo = invoke_cli("localize", *images, "--weights", weights, "-f", "yolo", "--conf", "0").stdout.splitlines()
    assert [line.split()[0] for line in yolo] == images  # --conf 0: every image has its one box
    assert [int(line.split()[1]) for line in yolo] == [r.result["index"] for r in results]
    assert float(yolo[0].split()[6]) == pytest.approx(first.pc, abs=1e-4)
    csv = invoke_cli("localize", images[0], "--weights", weights, "-f", "csv").stdout.splitlines()
    assert csv[0] == "path,frame,pc,label,class_prob,x1,y1,x2,y2,found,error"
    assert csv[1].split(",")[2:5] == [str(first.pc), first.label, str(first.class_prob)]


def test_the_exported_onnx_graph_gives_the_same_records(trained, shapes, tmp_path):
    import cvtool

    weights = Path(trained["run_dir"]) / "best.pt"
    onnx_path = tmp_path / "loc.onnx"
    result = invoke_cli("export", str(weights), "-o", str(onnx_path))
    assert result.returncode == 0, result.stderr
    images = [str(p) for p in sorted((shapes / "images").glob("*.png"))[::16]]
    torch_results = cvtool.Localizer(weights=str(weights), device="cpu", backend="torch")(images)
    onnx_results = cvtool.Localizer(weights=str(onnx_path))(images)
    for a, b in zip(torch_results, onnx_results):
        assert a.pc == pytest.approx(b.pc, abs=2e-4) and a.label == b.label
        assert a.box == pytest.approx(b.box, abs=0.02)
    half = invoke_cli("export", str(weights), "-o", str(tmp_path / "half.onnx"), "--half")
    assert half.returncode == 0 and "box IoU with PyTorch" in half.stderr + half.stdout


def test_the_server_endpoint_answers_the_api_objects_record(trained, shapes):
    pytest.importorskip("fastapi")
    import cvtool
    from cvtool.serve.app import create_app
    from cvtool.serve.settings import Settings
    from test_serve_table import record, served

    weights = str(Path(trained["run_dir"]) / "best.pt")
    image = shapes / "images" / "003.png"
    app = create_app(Settings(log=False, allow_paths=Path(trained["run_dir"]), device="cpu"))
    answer, = served(app, ("/localize", {"weights": weights, "conf": 0.3}, image))
    expected = cvtool.Localizer(weights=weights, conf=0.3, device="cpu")(str(image)).to_dict()
    assert record(answer) == {k: v for k, v in expected.items() if k != "ms"}


def test_resume_carries_the_run_on(shapes, tmp_path):
    import cvtool

    run = tmp_path / "run"
    cvtool.train.localize(str(shapes), arch="lenet5", epochs=1, out=str(run), device="cpu")
    summary = cvtool.train.localize(resume=str(run), epochs=2, device="cpu")
    assert summary["epochs"] == 2 and len((run / "metrics.csv").read_text().splitlines()) == 3


# -- bad input: one line naming the file ------------------------------------------------------------------------

def test_bad_data_is_one_line_naming_the_file(tmp_path):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    bad = write_shapes(tmp_path / "bad", n=3, negatives=1)
    (bad / "labels" / "002.txt").write_text("0 0.5 0.5 zero 0.2\n")
    multi = write_shapes(tmp_path / "multi", n=3, negatives=1)
    (multi / "labels" / "001.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.2 0.2\n")
    negatives_only = write_shapes(tmp_path / "neg", n=0, negatives=3)
    cases = [(empty, "no annotated images found"), (bad, "002.txt: line 1: w is 'zero', not a number"),
             (multi, "001.png: 2 boxes; localisation takes one object per image"),
             (negatives_only, "no image has a box"), (tmp_path / "missing", "expected images/ with annotations/")]
    for data, message in cases:
        result = invoke_cli("train", "localize", str(data), "--arch", "lenet5", "--epochs", "1", "--out",
                            str(tmp_path / f"run-{data.name}"))
        assert result.returncode != 0, data
        lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("cvtool: training ")]
        assert len(lines) == 1 and message in lines[0] and str(data) in lines[0], (data, result.stderr)
        assert not (tmp_path / f"run-{data.name}").exists()
    wrong = invoke_cli("train", "localize", str(bad), "--arch", "lenet5", "--multi", "some")
    assert wrong.returncode != 0 and "unknown --multi 'some'" in wrong.stderr
    not_a_backbone = invoke_cli("train", "localize", str(bad), "--arch", "yolo", "--epochs", "1")
    assert not_a_backbone.returncode != 0 and "not a classify model" in not_a_backbone.stderr
    too_big = invoke_cli("train", "localize", str(bad), "--arch", "lenet5", "--img-size", "64", "--epochs", "1",
                         "--out", str(tmp_path / "big"))
    assert too_big.returncode != 0 and "lenet5 cannot take 64x64 images" in too_big.stderr


def test_a_bad_image_is_an_error_record_and_the_batch_goes_on(trained, shapes, tmp_path):
    weights = str(Path(trained["run_dir"]) / "best.pt")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = run_cli("localize", str(broken), str(shapes / "images" / "000.png"), "--weights", weights,
                     "-f", "jsonl", "--device", "cpu")
    assert result.returncode != 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert "error" in records[0] and records[0]["path"] == str(broken) and "result" in records[1]


# -- real photos -------------------------------------------------------------------------------------------

PETS = SHARED / "pets_localization"


@pytest.mark.slow
@pytest.mark.skipif(not PETS.is_dir(), reason="../shared/datasets/pets_localization is not here")
def test_real_pet_heads_are_localised_better_than_the_mean_box(tmp_path):
    """The pet photos (VOC written from their CSV rows), species as the classes, resnet18 from scratch at 96 px
    for 10 epochs: the held-out head boxes beat always answering the training set's mean box. The margin is small
    (the heads sit near the middle; bench/eval_localize.py measured +0.045 mean IoU at 30 epochs, 128 px), so the
    test asks for +0.02 and a larger share at IoU >= 0.5."""
    import csv as csv_module

    import cvtool

    root = tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for label in sorted((PETS / "labels").glob("*.csv")):
        with label.open(newline="") as handle:
            row = next(csv_module.DictReader(handle))
        (root / "images" / f"{label.stem}.jpg").symlink_to(PETS / "images" / f"{label.stem}.jpg")
        (root / "annotations" / f"{label.stem}.xml").write_text(
            f"<annotation><filename>{label.stem}.jpg</filename><object><name>{row['species']}</name><bndbox>"
            f"<xmin>{row['xmin']}</xmin><ymin>{row['ymin']}</ymin><xmax>{row['xmax']}</xmax><ymax>{row['ymax']}"
            "</ymax></bndbox></object></annotation>")
    summary = cvtool.train.localize(str(root), arch="resnet18", epochs=10, img_size=96, out=str(tmp_path / "run"),
                                    device="cpu")
    from cvtool.models.localizer import box_iou, centre_to_corners
    from cvtool.train.localization import decode_images, one_box_images, split

    data = decode_images(one_box_images(root), 32)
    train_idx, val_idx = split(data, 0.2, 0)
    mean = data.targets[train_idx, 1:5].mean(0)
    truth = data.targets[val_idx, 1:5]
    baseline = float(box_iou(np.repeat(centre_to_corners(mean[None]), len(truth), 0), centre_to_corners(truth)).mean())
    baseline_hits = float((box_iou(np.repeat(centre_to_corners(mean[None]), len(truth), 0),
                                   centre_to_corners(truth)) >= 0.5).mean())
    assert summary["val"]["mean_iou"] > baseline + 0.02, (summary["val"], baseline)
    assert summary["val"]["iou50"] > baseline_hits, (summary["val"], baseline_hits)
    assert summary["val"]["pc_accuracy"] >= 0.95  # every image has its pet: Pc is learnt as "yes"
