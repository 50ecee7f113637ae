"""`cvtool train detect`: data layouts, box-preserving augmentation, and a short real training run
whose checkpoint `cvtool detect` then uses, with boxes in the original image's pixels."""

import json

import numpy as np
import pytest
import torch
from synthetic_boxes import write_shapes_voc
from typer.testing import CliRunner

import cvtool.errors
from cvtool.cli import app
from cvtool.train.detection import DetectionDataset, coco_map, letterboxed
from cvtool.train.detection_data import open_detection_data


def _train(shapes, run, *extra):
    result = CliRunner().invoke(app, ["train", "detect", str(shapes), "--img-size", "160", "--width", "8", "--lr", "5e-3",
                                      "--batch-size", "8", "--mosaic", "0", "--out", str(run), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_voc(tmp_path_factory.mktemp("det") / "shapes", n=100)


def test_voc_yolo_and_coco_layouts_give_the_same_boxes(shapes, tmp_path):
    voc = open_detection_data(shapes)
    assert voc.classes == ["circle", "square"] and len(voc.paths) == 100
    yolo = tmp_path / "yolo"
    (yolo / "labels").mkdir(parents=True)
    (yolo / "images").symlink_to(shapes / "images")
    (yolo / "classes.txt").write_text("circle\nsquare\n")
    images, annotations = [], []
    for i, (path, boxes, labels) in enumerate(zip(voc.paths, voc.boxes, voc.labels)):
        lines = [f"{c} {(x1 + x2) / 320} {(y1 + y2) / 320} {(x2 - x1) / 160} {(y2 - y1) / 160}"
                 for (x1, y1, x2, y2), c in zip(boxes.tolist(), labels.tolist())]
        (yolo / "labels" / f"{path.stem}.txt").write_text("\n".join(lines) + "\n")
        images.append({"id": i + 1, "file_name": path.name, "width": 160, "height": 160})
        annotations += [{"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1]} for (x1, y1, x2, y2), c in zip(boxes.tolist(), labels.tolist())]
    (shapes / "coco.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                  "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]}))
    for other in (open_detection_data(yolo), open_detection_data(shapes / "coco.json")):
        assert other.classes == voc.classes
        for a, b in zip(voc.boxes, other.boxes):
            np.testing.assert_allclose(a, b, atol=1e-3)


def _voc(root, objects: str, tag: str = "annotation"):
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    import cv2

    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((40, 60, 3), np.uint8))
    (root / "annotations" / "a.xml").write_text(f"<{tag}><filename>a.png</filename>{objects}</{tag}>")
    return root


def _obj(name="cat", box=("1", "2", "30", "20")):
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name><bndbox>{coords}</bndbox></object>"


@pytest.mark.parametrize("objects, reason", [
    (_obj(box=("1", "2", "abc", "20")), "object 1 (cat): <xmax> is 'abc', not a number"),
    (_obj() + _obj("dog", ("1", "2", "30")), "object 2 (dog): <ymax> is None, not a number"),
    (_obj(box=("30", "2", "1", "20")), "object 1 (cat): the box 30,2 to 1,20 is inverted (its right and bottom "
                                       "edges must not be before its left and top)"),
    (_obj(box=("1", "nan", "30", "20")), "object 1 (cat): <ymin> is 'nan', not a finite number"),
    ("<object><bndbox/></object>", "object 1 has no <name>"),
    ("<object><name>cat</name></object>", "object 1 (cat) has no <bndbox>"),
])
def test_a_malformed_voc_annotation_is_one_line_naming_the_file_and_object(tmp_path, objects, reason):
    root = _voc(tmp_path / "voc", objects)
    result = CliRunner().invoke(app, ["train", "detect", str(root), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == f"cvtool: {root / 'annotations' / 'a.xml'}: {reason}"
    assert not (tmp_path / "run").exists()


def test_voc_edge_cases_a_wrong_root_a_fifo_and_a_one_pixel_box(tmp_path):
    import os

    root = _voc(tmp_path / "other", _obj(), tag="doc")
    with pytest.raises(cvtool.errors.CvtoolError, match=r"a.xml: not a Pascal VOC annotation \(its root is <doc>"):
        open_detection_data(root)
    root = _voc(tmp_path / "fifo", _obj())
    (root / "annotations" / "a.xml").unlink()
    os.mkfifo(root / "annotations" / "a.xml")  # read as a file, it would wait for a writer for ever
    with pytest.raises(cvtool.errors.CvtoolError, match=r"a.xml: not a regular file \(a FIFO\)$"):
        open_detection_data(root)
    # VOC counts pixels inclusively: xmin == xmax is a box one pixel wide, data as any other
    data = open_detection_data(_voc(tmp_path / "thin", _obj(box=("5", "2", "5", "20"))))
    assert data.boxes[0].tolist() == [[5, 2, 5, 20]]


@pytest.mark.parametrize("label, classes, reason", [
    ("0 0.5 0.5 0.2", None, "line 1: expected `class cx cy w h` (5 columns, or 6 with a score), got 4"),
    ("\n0 0.5 0.5 0.2 0.2\ncat 0.5 0.5 0.2 0.2", None, "line 3: the class 'cat' is not a whole number >= 0"),
    ("\u00b2 0.5 0.5 0.2 0.2", None, "line 1: the class '\u00b2' is not a whole number >= 0"),
    ("2 0.5 0.5 0.2 0.2", "cat\ndog\n", "line 1: class 2, but {names} names 2 (0-1)"),
    ("0 0.5 0.5 x 0.2", None, "line 1: w is 'x', not a number"),
    ("0 0.5 0.5 0.2 0.2 high", None, "line 1: score is 'high', not a number"),
    ("0 50 40 20 10", None, "line 1: cx cy w h must be fractions of the image (0-1), got 50 40 20 10"),
    ("0 0.5 0.5 1.2 0.2", None, "line 1: cx cy w h must be fractions of the image (0-1), got 0.5 0.5 1.2 0.2"),
])
def test_a_malformed_yolo_label_is_one_line_naming_the_file_and_line(tmp_path, label, classes, reason):
    import cv2

    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((40, 60, 3), np.uint8))
    (root / "labels" / "a.txt").write_text(label + "\n")
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    with pytest.raises(cvtool.errors.CvtoolError) as info:
        open_detection_data(root)
    assert str(info.value) == f"{root / 'labels' / 'a.txt'}: {reason.format(names=root / 'classes.txt')}"


def test_yolo_labels_rounded_past_the_edge_or_empty_still_load(tmp_path):
    """What other tools (and rounding) write: 1.0000001 is 1, a box of width 0 is kept (as VOC's and COCO's);
    an empty classes.txt is one line."""
    import cv2

    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((40, 60, 3), np.uint8))
    (root / "labels" / "a.txt").write_text("0 1.0000001 0.5 0.2 0.5\n0 0.5 0.5 0.000000 0.25 0.31\n")
    data = open_detection_data(root)
    np.testing.assert_allclose(data.boxes[0], [[54, 10, 66, 30], [30, 15, 30, 25]], atol=1e-4)
    (root / "classes.txt").write_text("\n")
    with pytest.raises(cvtool.errors.CvtoolError, match="classes.txt: no class names in it"):
        open_detection_data(root)


def test_a_yolo_label_is_a_fraction_of_the_photo_as_shown_exif_rotation_applied(tmp_path):
    """A phone photo stored 60 wide x 40 high with EXIF orientation 6 is shown (and trained on) 40 wide x 60
    high: its label's fractions are of that (as Ultralytics reads them)."""
    from PIL import Image

    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    Image.new("RGB", (60, 40)).save(root / "images" / "phone.jpg", exif=exif.tobytes())
    (root / "labels" / "phone.txt").write_text("0 0.5 0.25 0.5 0.5 0.9\n")  # with a score column, as --save-txt
    data = open_detection_data(root)
    np.testing.assert_allclose(data.boxes[0], [[10, 0, 30, 30]])  # of 40 x 60, not of 60 x 40


@pytest.mark.parametrize("doc, reason", [
    ("{", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ({"images": []}, "not a COCO detection file (no 'categories' field)"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 3, "name": "cat"}],
      "annotations": [{"image_id": 1, "category_id": 4, "bbox": [1, 2, 3, 4]}]},
     "annotations[0]: category_id 4 is not in categories"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 3, "name": "cat"}],
      "annotations": [{"image_id": 2, "category_id": 3, "bbox": [1, 2, 3, 4]}]},
     "annotations[0]: image_id 2 is not in images"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 3, "name": "cat"}],
      "annotations": [{"image_id": 1, "category_id": 3, "bbox": [1, 2, -3, 4]}]},
     "annotations[0]: the box 1,2 to -2,6 is inverted (its right and bottom edges must not be before its left and "
     "top)"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 3, "name": "cat"}],
      "annotations": [{"image_id": 1, "category_id": 3, "bbox": [1, True, 3, 4]}]},
     "annotations[0]: bbox has true, not a number"),
    ({"images": [{"id": 1, "file_name": 7}], "categories": [{"id": 3, "name": "cat"}]},
     "not a COCO detection file (a file_name is 7, not a string)"),
    ({"images": [], "categories": [{"id": "dog", "name": "dog"}]},
     "not a COCO detection file (a category id is \"dog\", not a whole number)"),
    ({"images": [], "categories": [], "annotations": None}, "not a COCO detection file (annotations is not a list)"),
    ([1, 2], "not a COCO detection file (unexpected structure)"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 3, "name": "cat"}],
      "annotations": [{"image_id": 1, "category_id": 3}]}, "annotations[0]: needs bbox, image_id and category_id"),
])
def test_a_malformed_coco_file_is_one_line_naming_it(tmp_path, doc, reason):
    path = tmp_path / "train.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(cvtool.errors.CvtoolError) as info:
        open_detection_data(path)
    assert str(info.value) == f"{path}: {reason}"


def test_augmentation_keeps_boxes_on_their_objects(shapes):
    data = open_detection_data(shapes)
    images, boxes, labels, *_ = letterboxed(data.subset(range(20)), 160)
    dataset = DetectionDataset(images, boxes, labels, train=True)
    torch.manual_seed(0)
    for index in range(20):
        image, target = dataset[index]
        for x1, y1, x2, y2 in target["boxes"].tolist():  # the shape's centre pixel differs from the grey border
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
            assert not np.allclose(image[:, cy, cx].numpy(), 114 / 255, atol=0.02)


def test_mosaic_tiles_four_images_and_keeps_boxes_on_their_objects(shapes):
    data = open_detection_data(shapes)
    images, boxes, labels, *_ = letterboxed(data.subset(range(20)), 160)
    plain = DetectionDataset(images, boxes, labels, train=True)
    mosaic = DetectionDataset(images, boxes, labels, train=True, mosaic=1.0)
    torch.manual_seed(0)
    counts = {"plain": 0, "mosaic": 0}
    for index in range(20):
        counts["plain"] += len(plain[index][1]["boxes"])
        image, target = mosaic[index]
        counts["mosaic"] += len(target["boxes"])
        for x1, y1, x2, y2 in target["boxes"].tolist():
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
            assert not np.allclose(image[:, cy, cx].numpy(), 114 / 255, atol=0.02)
    assert counts["mosaic"] > 1.5 * counts["plain"]  # a window on four images holds more objects than one


def test_map_by_pycocotools_on_hand_made_cases():
    truth = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}]
    perfect = [(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.9]), torch.tensor([0]))]
    shifted = [(torch.tensor([[5.0, 0.0, 15.0, 10.0]]), torch.tensor([0.9]), torch.tensor([0]))]  # IoU 1/3
    assert coco_map(truth, perfect, ["a"])["map50"] == pytest.approx(1.0)
    assert coco_map(truth, shifted, ["a"])["map50"] == pytest.approx(0.0)


def test_short_training_learns_and_detect_uses_the_checkpoint(shapes, tmp_path):
    run = tmp_path / "run"
    summary = _train(shapes, run, "--epochs", "20")
    assert summary["val"]["map50"] > 0.4  # from 0 at epoch 1 (0.5-0.6 seen); the slow test trains to >= 0.9
    assert {"best.pt", "last.pt", "metrics.csv", "curves.png", "pr_curve.png", "summary.json"} <= {
        p.name for p in run.iterdir()}
    data = open_detection_data(shapes)
    image = data.paths[0]
    found = CliRunner().invoke(app, ["detect", str(image), "--weights", str(run / "best.pt"), "--conf", "0.05",
                                     "-f", "jsonl"])
    assert found.exit_code == 0, found.output
    record = json.loads(found.stdout)
    assert record["model"] == "yolo" and record["result"]["size"] == [160, 160]
    from torchvision.ops import box_iou

    predicted = torch.tensor([d["box"] for d in record["result"]["detections"]]).reshape(-1, 4)
    assert len(predicted) and box_iou(torch.from_numpy(data.boxes[0]), predicted).max() > 0.3


@pytest.mark.slow
def test_synthetic_shapes_reach_map50_of_0_9(shapes, tmp_path):
    summary = _train(shapes, tmp_path / "run", "--epochs", "60")
    assert summary["val"]["map50"] >= 0.9


@pytest.fixture
def cached_mobilenet(tmp_path, monkeypatch):
    """A saved mobilenet_v3_small state_dict (seeded random weights) where cvtool's weights cache keeps
    the ImageNet file, with the network ruled out: --pretrained must load exactly this."""
    from torchvision.models import mobilenet_v3_small

    from cvtool.models import weights
    from cvtool.models.registry import get_entry

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CVTOOL_OFFLINE", "1")
    torch.manual_seed(1)
    state = mobilenet_v3_small().state_dict()
    path = weights.cached_path(get_entry("mobilenet_v3_small", "classify").weights.url)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    # stand-in weights cannot carry the published hash that cached files are checked against
    monkeypatch.setattr(weights, "_expected_hash", lambda url, sha256=None: None)
    return state


def test_pretrained_backbone_loads_the_classifier_weights(cached_mobilenet):
    from cvtool.models.yolo import YoloDetector
    from cvtool.train.detection import load_pretrained_backbone

    model = YoloDetector(2, width=4, img_size=96, backbone="mobilenet_v3_small")
    load_pretrained_backbone(model)
    torch.testing.assert_close(model.backbone.to16[0][0].weight, cached_mobilenet["features.0.0.weight"])
    torch.testing.assert_close(model.backbone.to32[-1][0].weight, cached_mobilenet["features.12.0.weight"])
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 3, 6, 6, 7)


def test_train_with_a_pretrained_backbone_then_detect(shapes, tmp_path, cached_mobilenet):
    run = tmp_path / "run"
    summary = _train(shapes, run, "--epochs", "1", "--img-size", "96", "--width", "4", "--backbone",
                     "mobilenet_v3_small", "--pretrained")
    assert summary["backbone"] == "mobilenet_v3_small" and summary["pretrained"] is True
    found = CliRunner().invoke(app, ["detect", str(open_detection_data(shapes).paths[0]), "--weights",
                                     str(run / "best.pt"), "--conf", "0", "-f", "jsonl"])
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["result"]["size"] == [160, 160]


def test_pretrained_needs_a_torchvision_backbone_and_its_weights(shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CVTOOL_OFFLINE", "1")
    base = ["train", "detect", str(shapes), "--epochs", "1", "--img-size", "96", "--width", "4"]
    csp = CliRunner().invoke(app, [*base, "--pretrained", "--out", str(tmp_path / "a")])
    assert csp.exit_code != 0 and "--pretrained needs --backbone" in csp.output
    missing = CliRunner().invoke(app, [*base, "--backbone", "resnet18", "--pretrained", "--out", str(tmp_path / "b")])
    assert missing.exit_code != 0 and "resnet18-" in missing.output and "offline" in missing.output
    assert "Traceback" not in missing.output
    unknown = CliRunner().invoke(app, [*base, "--backbone", "vgg99", "--out", str(tmp_path / "c")])
    assert unknown.exit_code != 0 and "unknown --backbone 'vgg99'" in unknown.output


def test_coco_training_data_keeps_its_category_ids_for_detect_coco_output(shapes, tmp_path):
    """A COCO JSON's own category ids (here 7 and 11) go into the checkpoint, and `-f coco` writes them."""
    from cvtool.models.loading import load_model
    from cvtool.pipelines.detect import DetectPipeline

    voc = open_detection_data(shapes)
    images, annotations, ids = [], [], {0: 7, 1: 11}
    for i, (path, boxes, labels) in enumerate(zip(voc.paths[:12], voc.boxes, voc.labels)):
        images.append({"id": i + 1, "file_name": str(path), "width": 160, "height": 160})
        annotations += [{"id": len(annotations) + 1, "image_id": i + 1, "category_id": ids[int(c)],
                         "bbox": [x1, y1, x2 - x1, y2 - y1]} for (x1, y1, x2, y2), c in zip(boxes.tolist(), labels.tolist())]
    data = tmp_path / "train.json"
    data.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 11, "name": "square"}, {"id": 7, "name": "circle"}]}))
    assert open_detection_data(data).category_ids == [7, 11]
    _train(data, tmp_path / "run", "--epochs", "1", "--img-size", "64")
    loaded = load_model(None, task="detect", weights=tmp_path / "run" / "best.pt")
    assert loaded.meta["coco_category_ids"] == [7, 11] and loaded.classes == ["circle", "square"]
    assert DetectPipeline(loaded).categories == {0: {"id": 7, "name": "circle"}, 1: {"id": 11, "name": "square"}}


def test_ema_follows_the_hand_computed_average_and_copies_buffers():
    from cvtool.train.ema import ModelEma

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9, tau=2.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    expected = model[0].weight.detach().clone()
    for step in range(1, 4):
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
        d = 0.9 * (1 - np.exp(-step / 2.0))  # the ramp: 0.354, 0.568, 0.699
        expected = d * expected + (1 - d) * model[0].weight.detach()
    torch.testing.assert_close(ema.module[0].weight, expected)
    assert ema.updates == 3 and not torch.equal(ema.module[0].weight, model[0].weight)
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean)  # copied, not averaged
    assert ema.module[1].num_batches_tracked == 3 and not ema.module[0].weight.requires_grad


def _run(shapes, run_dir, epochs, *, resume=False, **options):
    from cvtool.train.detection import DetectTrainArgs, run_training
    from cvtool.train.engine import TrainConfig

    args = DetectTrainArgs(str(shapes), img_size=64, width=4, anchors=1, **options)
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=5e-3, monitor="val_map50_95", warmup_epochs=1)
    return run_training(args, cfg, run_dir, torch.device("cpu"), resume=resume, progress=False)


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    return write_shapes_voc(tmp_path_factory.mktemp("small") / "shapes", n=20, size=64)


def test_close_mosaic_switches_mosaics_off_for_the_last_epochs(small_shapes, tmp_path, monkeypatch):
    from cvtool.train import detection

    made, epoch_of = [], {}
    original_mosaic, original_epoch = DetectionDataset._mosaic, detection.detection_trainer

    def counting(self, *a):  # the real mosaic, counted per epoch
        made.append(epoch_of["now"])
        return original_mosaic(self, *a)

    def trainer(*a, **kw):
        built = original_epoch(*a, **kw)
        run_epoch = built._run_epoch

        def tracked(epoch):
            epoch_of["now"] = epoch
            return run_epoch(epoch)

        built._run_epoch = tracked
        return built

    monkeypatch.setattr(DetectionDataset, "_mosaic", counting)
    monkeypatch.setattr(detection, "detection_trainer", trainer)
    summary = _run(small_shapes, tmp_path / "run", 3, mosaic=1.0, close_mosaic=1)
    assert summary["close_mosaic"] == 1 and summary["train_images"] == 16
    assert [made.count(e) for e in (1, 2, 3)] == [16, 16, 0]  # every image a mosaic, then none in the last epoch


def test_ema_checkpoints_resume_exactly_and_summary_reports_the_last_epoch(small_shapes, tmp_path):
    from cvtool.models.checkpoint import load_weights_file

    whole = _run(small_shapes, tmp_path / "whole", 2, ema=0.9)
    _run(small_shapes, tmp_path / "split", 1, ema=0.9)
    resumed = _run(small_shapes, tmp_path / "split", 2, ema=0.9, resume=True)
    a, b = load_weights_file(tmp_path / "whole" / "last.pt"), load_weights_file(tmp_path / "split" / "last.pt")
    assert a.meta["ema"]["updates"] == b.meta["ema"]["updates"] == 4  # 2 epochs x 2 batches of 8 (16 images)
    for key, value in a.state_dict.items():  # the average (the checkpoint's weights) and the raw weights
        torch.testing.assert_close(b.state_dict[key], value, rtol=0, atol=0)
        torch.testing.assert_close(b.meta["ema"]["train_state_dict"][key], a.meta["ema"]["train_state_dict"][key],
                                   rtol=0, atol=0)
    assert not torch.equal(a.state_dict["head.weight"], a.meta["ema"]["train_state_dict"]["head.weight"])
    best = load_weights_file(tmp_path / "whole" / "best.pt")  # for inference: the average alone, not the raw copy
    assert "train_state_dict" not in best.meta["ema"]
    assert whole["val"]["map50_95"] == resumed["val"]["map50_95"] and whole["ema"] == 0.9
    import csv

    last_row = list(csv.DictReader(open(tmp_path / "whole" / "metrics.csv")))[-1]
    assert whole["last"] == {"epoch": 2, "map50": pytest.approx(float(last_row["val_map50"])),
                             "map50_95": pytest.approx(float(last_row["val_map50_95"]))}


def test_an_ema_decay_outside_0_1_is_refused_in_one_line(small_shapes, tmp_path):
    from cvtool import train
    from cvtool.errors import UsageError

    with pytest.raises(UsageError) as refused:
        train.detect(small_shapes, ema=1.0, epochs=1, img_size=64, width=4, out=tmp_path / "run")
    assert str(refused.value) == "--ema 1.0: the decay of the weights' moving average must be in [0, 1) (0: off)"
    assert not (tmp_path / "run").exists()
