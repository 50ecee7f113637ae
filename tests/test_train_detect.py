"""`cvtool train detect`: data layouts, box-preserving augmentation, and a short real training run
whose checkpoint `cvtool detect` then uses, with boxes in the original image's pixels."""

import json

import numpy as np
import pytest
import torch
from synthetic_boxes import write_shapes_voc
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.train.detection import DetectionDataset, coco_map, letterboxed
from cvtool.train.detection_data import open_detection_data


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


def test_augmentation_keeps_boxes_on_their_objects(shapes):
    data = open_detection_data(shapes)
    images, boxes, labels, _ = letterboxed(data.subset(range(20)), 160)
    dataset = DetectionDataset(images, boxes, labels, train=True)
    torch.manual_seed(0)
    for index in range(20):
        image, target = dataset[index]
        for x1, y1, x2, y2 in target["boxes"].tolist():  # the shape's centre pixel differs from the grey border
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
            assert not np.allclose(image[:, cy, cx].numpy(), 114 / 255, atol=0.02)


def test_map_by_pycocotools_on_hand_made_cases():
    truth = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}]
    perfect = [(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.9]), torch.tensor([0]))]
    shifted = [(torch.tensor([[5.0, 0.0, 15.0, 10.0]]), torch.tensor([0.9]), torch.tensor([0]))]  # IoU 1/3
    assert coco_map(truth, perfect, ["a"])["map50"] == pytest.approx(1.0)
    assert coco_map(truth, shifted, ["a"])["map50"] == pytest.approx(0.0)


def test_short_training_learns_and_detect_uses_the_checkpoint(shapes, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "detect", str(shapes), "--epochs", "12", "--img-size", "160",
                                      "--width", "8", "--lr", "5e-3", "--out", str(run)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["val"]["map50"] > 0.15  # from 0 at epoch 1; the full target is measured by bench/eval_detect.py
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
