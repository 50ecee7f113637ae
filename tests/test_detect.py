"""Detection: box arithmetic and NMS by hand, the detect pipeline on a network whose answer is known
(exact pixel coordinates, COCO and YOLO output), and a real torchvision detector end to end."""

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import SAMPLES, jsonl, run_cli
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.io.render import class_palette, draw_detections
from cvtool.models.registry import ModelEntry, get_entry, register, unregister
from cvtool.ops.boxes import filter_detections


def test_iou_and_per_class_nms_by_hand():
    from torchvision.ops import box_iou

    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert box_iou(a, b).tolist() == [[pytest.approx(50 / 150), 0.0]]  # overlap 5x10, union 100 + 100 - 50

    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    labels = torch.tensor([1, 1, 2, 1])
    # box 1 overlaps box 0 (IoU 9/11 > 0.45, same class): suppressed; box 2 is another class: kept;
    # box 3 is below the score threshold
    order, mask = filter_detections(boxes, scores, labels, conf=0.2, iou=0.45, max_det=10)
    assert scores[mask][order].tolist() == [pytest.approx(0.9), pytest.approx(0.7)]
    order, mask = filter_detections(boxes, scores, labels, conf=0.2, iou=0.95, max_det=10)  # 9/11 < 0.95: kept
    assert len(order) == 3
    order, mask = filter_detections(boxes, scores, labels, conf=0.0, iou=0.45, max_det=1)
    assert scores[mask][order].tolist() == [pytest.approx(0.9)]
    order, mask = filter_detections(boxes, scores, labels, conf=0.0, iou=0.45, max_det=10, keep_labels=torch.tensor([2]))
    assert labels[mask][order].tolist() == [2]


class FixedBoxes(torch.nn.Module):
    """A detector with a known answer: one 'square' box over the image's central half, one 'bar' along
    its top quarter, in the input's own pixel coordinates (as torchvision's detectors report them)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, images):
        outputs = []
        for image in images:
            _, h, w = image.shape
            boxes = torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4], [0, 0, w, h / 4]]) * self.scale
            points = torch.stack([torch.linspace(0, w - 1, 17), torch.full((17,), h / 2), torch.ones(17)], dim=1)
            outputs.append({"boxes": boxes, "scores": torch.tensor([0.9, 0.6]), "labels": torch.tensor([1, 2]),
                            "keypoints": torch.stack([points, points])})
        return outputs


@pytest.fixture
def fixed_detector(tmp_path):
    path = tmp_path / "fixed.pt"
    torch.save(FixedBoxes().state_dict(), path)
    from cvtool.models.torchvision_detectors import RAW_PIXELS

    register(ModelEntry(name="test_fixed", task="detect", family="test", builder=FixedBoxes,
                        preprocess=lambda: RAW_PIXELS, classes=lambda: ["__background__", "square", "bar"],
                        head_is_classes=False))
    yield path
    unregister("test_fixed")


def test_boxes_are_in_the_original_images_pixels_and_outputs_are_written(fixed_detector, tmp_path):
    image = np.full((120, 200, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "scene.png"), image)
    out = tmp_path / "out"
    runner = CliRunner()
    base = ["detect", str(tmp_path / "scene.png"), "-m", "test_fixed", "--weights", str(fixed_detector)]
    result = runner.invoke(app, [*base, "--out", str(out), "--save-crops", "-f", "jsonl"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["result"] == {"size": [120, 200], "detections": [
        {"label": "square", "index": 1, "score": 0.9, "box": [50.0, 30.0, 150.0, 90.0]},
        {"label": "bar", "index": 2, "score": 0.6, "box": [0.0, 0.0, 200.0, 30.0]}]}
    assert sorted(p.name for p in out.iterdir()) == [".cvtool-outputs", "scene.crop000-square.jpg", "scene.crop001-bar.jpg", "scene.detect.jpg"]
    assert cv2.imread(str(out / "scene.crop000-square.jpg")).shape == (60, 100, 3)

    conf = json.loads(runner.invoke(app, [*base, "--conf", "0.7", "-f", "jsonl"]).stdout)
    assert [d["label"] for d in conf["result"]["detections"]] == ["square"]
    only_bar = json.loads(runner.invoke(app, [*base, "--classes", "bar", "-f", "jsonl"]).stdout)
    assert [d["label"] for d in only_bar["result"]["detections"]] == ["bar"]

    coco = _coco(fixed_detector, [tmp_path / "scene.png"])
    assert coco["images"] == [{"id": 1, "file_name": str(tmp_path / "scene.png"), "width": 200, "height": 120}]
    # torchvision's layout ('__background__' first): the class index is the COCO id
    assert coco["annotations"][0]["bbox"] == [50.0, 30.0, 100.0, 60.0] and coco["annotations"][0]["category_id"] == 1
    assert coco["categories"] == [{"id": 1, "name": "square"}, {"id": 2, "name": "bar"}]
    nothing = _coco(fixed_detector, [tmp_path / "scene.png"], conf=0.95)
    assert nothing["annotations"] == [] and nothing["categories"] == coco["categories"]  # listed all the same
    with_points = json.loads(runner.invoke(app, [*base, "--keypoints", "--out", str(tmp_path / "kp"), "-f", "jsonl"]).stdout)
    points = with_points["result"]["detections"][0]["keypoints"]
    assert len(points) == 17 and points[0] == [0.0, 60.0, 1] and points[16] == [199.0, 60.0, 1]
    assert "keypoints" not in record["result"]["detections"][0]  # only when asked for
    yolo = runner.invoke(app, [*base, "-f", "yolo"]).stdout.splitlines()
    assert yolo[0] == f"{tmp_path / 'scene.png'} 1 0.500000 0.500000 0.500000 0.500000 0.9000"


def _coco(weights, paths, *, conf=0.25, model="test_fixed"):
    """`-f coco` as the detect command writes it: the pipeline's own writers through make_writer."""
    import io

    from cvtool.io.inputs import InputItem
    from cvtool.io.records import make_writer
    from cvtool.models.loading import load_model
    from cvtool.pipelines import detect as task
    from cvtool.pipelines.runner import run
    from cvtool.tasks.detect import SPEC

    pipeline = task.DetectPipeline(load_model(model, task="detect", weights=weights), conf=conf)
    stream = io.StringIO()
    writer = make_writer("coco", SPEC.columns, SPEC.rows, stream=stream, extra_formats=pipeline.extra_formats)
    for record in run(pipeline, [InputItem(str(p)) for p in paths]):
        writer.write(record)
    writer.close()
    return json.loads(stream.getvalue())


def test_coco_category_ids_follow_the_checkpoint_or_start_at_one():
    from cvtool.pipelines.detect import coco_categories

    assert coco_categories(["cat", "dog"]) == {0: {"id": 1, "name": "cat"}, 1: {"id": 2, "name": "dog"}}
    assert coco_categories(["cat", "dog"], [17, 18]) == {0: {"id": 17, "name": "cat"}, 1: {"id": 18, "name": "dog"}}
    tv = coco_categories(["__background__", "person", "N/A", "car"])
    assert tv == {1: {"id": 1, "name": "person"}, 3: {"id": 3, "name": "car"}}


def test_drawn_boxes_use_the_class_colour_and_scale_with_the_image():
    rgb = np.zeros((400, 600, 3), np.uint8)
    drawn = draw_detections(rgb, [{"label": "square", "index": 1, "score": 0.9, "box": [100, 150, 300, 350]}])
    colour = class_palette()[(1 * 7 + 1) % 256].tolist()
    assert drawn[250, 100].tolist() == colour  # left edge, mid-height
    assert (drawn[250, 96:105] == colour).all(axis=1).sum() >= 2  # about 0.002 * (h + w) = 2 px wide
    assert drawn[250, 200].tolist() == [0, 0, 0]  # inside stays untouched


def test_a_real_torchvision_detector_end_to_end(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "ssdlite_random.pt"
    torch.save(get_entry("ssdlite320_mobilenet_v3_large").build().state_dict(), weights)
    photo = SAMPLES / "photos" / "astronaut.jpg"
    result = run_cli("detect", str(photo), "-m", "ssdlite320_mobilenet_v3_large", "--weights", str(weights),
                     "--conf", "0", "--max-det", "5", "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    detections = jsonl(result.stdout)[0]["result"]["detections"]
    assert len(detections) == 5 and all(0 <= d["box"][0] <= d["box"][2] <= 512 for d in detections)
    none = run_cli("detect", str(photo), "-m", "ssdlite320_mobilenet_v3_large", "--weights", str(weights),
                   "--conf", "1", "-f", "jsonl")
    assert jsonl(none.stdout)[0]["result"]["detections"] == []


def test_yolo_labels_are_of_the_box_cut_to_the_image():
    """A face's rectangle may reach past the photo: its label is the part inside (fractions in 0-1, which
    `train detect` reads), and a box with nothing inside has no line."""
    from cvtool.pipelines.detect import yolo_lines

    result = {"size": [40, 60], "detections": [{"index": 0, "score": 0.9, "box": [-10, 5, 30, 50]},
                                               {"index": 1, "score": 0.5, "box": [70, 5, 80, 20]}]}
    assert yolo_lines(result) == ["0 0.250000 0.562500 0.500000 0.875000 0.9000"]


def test_save_txt_writes_yolo_labels_that_train_detect_reads_back(fixed_detector, tmp_path):
    """The label -> train -> predict loop: `detect --save-txt --out DATA` on DATA/images writes DATA/labels/*.txt
    and DATA/classes.txt; `open_detection_data` (what train detect reads) gives back the same boxes, and a
    one-epoch `train detect` on them runs."""
    from cvtool.train.detection_data import open_detection_data

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    sizes = {"wide": (120, 200), "tall": (160, 96), "small": (64, 64)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(data / "images" / f"{name}.png"), np.full((h, w, 3), 90, np.uint8))
    base = ["detect", str(data / "images"), "-m", "test_fixed", "--weights", str(fixed_detector), "-f", "jsonl"]
    assert "--save-txt needs --out DIR" in CliRunner().invoke(app, [*base, "--save-txt"]).stderr
    result = CliRunner().invoke(app, [*base, "--save-txt", "--out", str(data)])
    assert result.exit_code == 0, result.output
    records = {r["path"]: r for r in jsonl(result.stdout)}
    assert (data / "classes.txt").read_text() == "__background__\nsquare\nbar\n"
    assert (data / "labels" / "wide.txt").read_text() == (
        "1 0.500000 0.500000 0.500000 0.500000 0.9000\n2 0.500000 0.125000 1.000000 0.250000 0.6000\n")
    assert str(data / "labels" / "wide.txt") in records[str(data / "images" / "wide.png")]["outputs"]

    read_back = open_detection_data(data)
    assert read_back.classes == ["__background__", "square", "bar"]
    for path, boxes, labels in zip(read_back.paths, read_back.boxes, read_back.labels):
        detections = records[str(path)]["result"]["detections"]
        assert labels.tolist() == [d["index"] for d in detections]
        np.testing.assert_allclose(boxes, [d["box"] for d in detections], atol=1e-3)

    trained = CliRunner().invoke(app, ["train", "detect", str(data), "--epochs", "1", "--img-size", "64", "--width", "4",
                                       "--batch-size", "2", "--val", str(data), "--out", str(tmp_path / "run")])
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "run" / "best.pt").exists()


def test_video_frames_get_crops_labels_and_frame_numbers_in_csv_and_coco(fixed_detector, tmp_path):
    import csv
    import io

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (80, 48))
    for i in range(4):
        writer.write(np.full((48, 80, 3), 40 * i, np.uint8))
    writer.release()
    out = tmp_path / "out"
    base = ["detect", str(video), "-m", "test_fixed", "--weights", str(fixed_detector), "--vid-stride", "2"]
    result = CliRunner().invoke(app, [*base, "--out", str(out), "--save-crops", "--save-txt", "-f", "jsonl"])
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert [r["frame"] for r in records] == [0, 2]
    assert records[1]["outputs"] == [str(out / "clip.detect.mp4"), str(out / "clip.f000002.crop000-square.jpg"),
                                     str(out / "clip.f000002.crop001-bar.jpg"), str(out / "labels" / "clip.f000002.txt")]
    assert cv2.imread(str(out / "clip.f000000.crop000-square.jpg")).shape == (24, 40, 3)
    assert (out / "labels" / "clip.f000000.txt").read_text().startswith("1 0.500000 0.500000 0.500000 0.500000 0.9000\n")

    rows = list(csv.DictReader(io.StringIO(CliRunner().invoke(app, [*base, "-f", "csv"]).stdout)))
    assert [(r["path"], r["frame"], r["label"]) for r in rows] == [
        (str(video), "0", "square"), (str(video), "0", "bar"), (str(video), "2", "square"), (str(video), "2", "bar")]
    coco = json.loads(CliRunner().invoke(app, [*base, "-f", "coco"]).stdout)
    assert [(i["id"], i["file_name"], i["frame"]) for i in coco["images"]] == [(1, str(video), 0), (2, str(video), 2)]
    assert coco["images"][1]["time_s"] == pytest.approx(0.2)
    assert [a["image_id"] for a in coco["annotations"]] == [1, 1, 2, 2]
