"""`cvtool val`: a trained (or pretrained) model scored on a labelled set, without training.

The data layouts are those `cvtool train` reads; the scores are the training recipes' own code (one
home per metric): classification's `evaluate_checkpoint`/`per_class_report`, detection's `coco_map`
(pycocotools), segmentation's `scores_from_confusion`. Detection and segmentation run the images
through the same objects as `cvtool detect` / `cvtool segment` (cvtool.api), so a score here is the
score of what those commands print. Each entry returns a JSON-ready summary; plots go to `out`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from cvtool.errors import UsageError
from cvtool.ops.boxes import DETECT_CONF, DETECT_IOU, DETECT_MAX_DET  # training's validation uses the same


def _out_dir(out, task: str, data) -> Path | None:
    """--out for the plots: a folder outside those the task reads from `data`, made if missing."""
    from cvtool.io.outputs import check_out_dir, check_outside_data
    from cvtool.train.datasets import data_folders

    if out is None:
        return None
    check_outside_data(out, data_folders(task, data), f"--out {out}")
    check_out_dir(Path(out))
    return Path(out)


def classify(data: str | Path, *, weights: str | Path | None = None, model: str | None = None, device: str = "auto",
             batch_size: int = 64, out: str | Path | None = None,
             on_skip: Callable[[str], None] | None = None) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix (confusion.png in `out`) of a
    classifier on an ImageFolder tree, a `path,label` CSV or MNIST IDX files (classes matched by name)."""
    from cvtool.device import resolve_device
    from cvtool.train import plots
    from cvtool.train.classification import evaluate_checkpoint

    _need_model(weights, model)
    out_dir = _out_dir(out, "classify", data)
    report = evaluate_checkpoint(Path(weights) if weights is not None else None, str(data), resolve_device(device),
                                 model=model, batch_size=batch_size, on_skip=on_skip)
    summary = {"task": "classify", "data": str(data), **report, "plots": []}
    if out_dir is not None:  # per_class lists the model's classes in its order
        summary["plots"].append(plots.save_confusion(np.array(report["confusion_matrix"]), list(report["per_class"]),
                                                     out_dir / "confusion.png"))
    return summary


def detect(data: str | Path, *, weights: str | Path | None = None, model: str | None = None, device: str = "auto",
           conf: float = DETECT_CONF, iou: float = DETECT_IOU, max_det: int = DETECT_MAX_DET, batch_size: int = 8,
           out: str | Path | None = None, on_skip: Callable[[str], None] | None = None) -> dict:
    """pycocotools mAP@0.5 and mAP@0.5:0.95, per-class AP@0.5 and the PR curve (pr_curve.png in `out`) of a
    detector on VOC / YOLO / COCO data, its boxes found as `cvtool detect --conf CONF --iou IOU` finds them.
    An image that cannot be read is left out of the scores (`on_skip` is told; `skipped_files` counts them)."""
    import torch

    from cvtool.api import Detector
    from cvtool.io.inputs import InputItem
    from cvtool.train.detection import coco_map, detection_tensors, save_pr_curve
    from cvtool.train.datasets import DataError
    from cvtool.train.detection_data import open_detection_data

    _need_model(weights, model)
    out_dir = _out_dir(out, "detect", data)
    boxed = open_detection_data(data)
    # PyTorch, as training validates: never a cached ONNX export (`auto`), whose numbers differ by float rounding
    detector = Detector(model, weights=weights, conf=conf, iou=iou, max_det=max_det, device=device, backend="torch")
    remap = _class_map(boxed.classes, detector.classes, data)
    results = list(detector.run([InputItem(str(p)) for p in boxed.paths], batch_size=batch_size))
    truth, found, skipped = [], [], 0
    for boxes, labels, result in zip(boxed.boxes, boxed.labels, results):
        if not result.ok:  # as training does: reported, and not scored
            skipped += 1
            if on_skip is not None:
                on_skip(f"{result.path}: {result.error}")
            continue
        truth.append({"boxes": torch.from_numpy(boxes).float().reshape(-1, 4),
                      "labels": torch.tensor([remap[int(c)] for c in labels], dtype=torch.int64)})
        found.append(detection_tensors(result.result["detections"]))
    if not truth:
        raise DataError("no image could be read", data)
    present = sorted({int(c) for t in truth for c in t["labels"]})
    scored_classes = [detector.classes[i] for i in present]
    # only the classes of the data are scored (a COCO detector's other 79 classes have no ground truth)
    index = {model_index: k for k, model_index in enumerate(present)}
    truth = [{"boxes": t["boxes"], "labels": torch.tensor([index[int(c)] for c in t["labels"]], dtype=torch.int64)}
             for t in truth]
    kept = []
    for found_boxes, found_scores, found_labels in found:
        keep = torch.tensor([int(c) in index for c in found_labels], dtype=torch.bool)
        kept.append([found_boxes[keep], found_scores[keep],
                     torch.tensor([index[int(c)] for c in found_labels[keep]], dtype=torch.int64)])
    scores = coco_map(truth, kept, scored_classes)
    summary = {"task": "detect", "data": str(data), "model": detector.loaded.name,
               "weights_sha256": detector.weights_sha256, "images": len(truth), "skipped_files": skipped,
               "boxes": int(sum(len(t["boxes"]) for t in truth)), "conf": conf, "iou": iou, "max_det": max_det,
               "map50": scores["map50"], "map50_95": scores["map50_95"],
               "ap50_per_class": {k: round(v, 4) for k, v in scores["ap50_per_class"].items()}, "plots": []}
    if out_dir is not None:
        summary["plots"].append(save_pr_curve(scores["pr_curve"], out_dir / "pr_curve.png"))
    return summary


def localize(data: str | Path, *, weights: str | Path | None = None, model: str | None = None,
             device: str = "auto", conf: float | None = None, multi: str = "refuse", batch_size: int = 16,
             out: str | Path | None = None, on_skip: Callable[[str], None] | None = None) -> dict:
    """Pc accuracy, class accuracy, mean box IoU and the share at IoU >= 0.5 (cvtool.train.localization's
    `localization_scores`) of a `train localize` checkpoint on VOC / YOLO / COCO data (an image without a box:
    Pc* = 0), its answers those of `cvtool localize --conf CONF` (default: its own 0.5); examples.png in `out`."""
    from cvtool.api import Localizer
    from cvtool.io.inputs import InputItem
    from cvtool.tasks.localize import DEFAULT_CONF as LOCALIZE_CONF
    from cvtool.train.datasets import DataError
    from cvtool.train.localization import decode_images, localization_scores, one_box_images, save_examples

    _need_model(weights, model)
    out_dir = _out_dir(out, "localize", data)
    localizer = Localizer(model, weights=weights, device=device, backend="torch",
                          conf=LOCALIZE_CONF if conf is None else conf)
    truth = one_box_images(data, multi)
    remap = _class_map(truth.classes, localizer.classes, data)
    results = list(localizer.run([InputItem(str(p)) for p in truth.paths], batch_size=batch_size))
    kept, pc, classes, boxes, skipped = [], [], [], [], 0
    for k, result in enumerate(results):
        if not result.ok:
            skipped += 1
            if on_skip is not None:
                on_skip(f"{result.path}: {result.error}")
            continue
        h, w = result.result["size"]
        kept.append(k)
        pc.append(result.pc)
        classes.append(result.result["index"])
        boxes.append(np.array(result.result["box"]) / np.array([w, h, w, h]))
    if not kept:
        raise DataError("no image could be read", data)
    truth = decode_images(truth.subset(kept), 96)  # the boxes as fractions of each image (and small pixels to show)
    targets = truth.targets.copy()
    positive = targets[:, 0] > 0
    targets[positive, 5] = [remap[int(c)] for c in targets[positive, 5]]
    scores = localization_scores(np.array(pc), np.array(classes), np.stack(boxes), targets, threshold=localizer.conf)
    summary = {"task": "localize", "data": str(data), "model": localizer.loaded.name,
               "weights_sha256": localizer.weights_sha256, "conf": localizer.conf, "skipped_files": skipped,
               **{k: _round(v) if isinstance(v, float) else v for k, v in scores.items()}, "plots": []}
    if out_dir is not None:
        decoded = {"pc": np.array(pc), "box": np.stack(boxes), "class": np.array(classes)}
        summary["plots"].append(save_examples(truth.pixels, targets, decoded, localizer.classes,
                                              out_dir / "examples.png"))
    return summary


def segment(data: str | Path, *, weights: str | Path | None = None, model: str | None = None, device: str = "auto",
            tile: int | None = None, out: str | Path | None = None, rand: bool | None = None,
            threshold: float | None = None, on_skip: Callable[[str], None] | None = None) -> dict:
    """Per-class IoU and Dice, mIoU and pixel accuracy of a segmenter on images/ + masks/ (as `cvtool train
    segment` reads them; 255 is ignored), each image segmented as `cvtool segment` does. For two-class data
    (`rand`: None = whenever there are two classes) also ISBI 2012's foreground-restricted Rand score:
    the connected regions of class 1 (cells, between membranes) in truth and prediction compared by
    scikit-image's `adapted_rand_error`, truth's class-0 pixels ignored, and the variation of information split /
    merge of the same regions (`variation_of_information`). Example masks in `out`. `threshold`: two-class
    models' decision, as `Segmenter(threshold=)` (default: the checkpoint's)."""
    from cvtool.api import Segmenter
    from cvtool.train.segmentation import IGNORE_INDEX, open_segmentation_data, scores_from_confusion

    _need_model(weights, model)
    out_dir = _out_dir(out, "segment", data)
    masked = open_segmentation_data(data, on_skip=on_skip)
    segmenter = Segmenter(model, weights=weights, tile=tile, device=device, backend="torch",  # as training scores
                          threshold=threshold)
    classes = segmenter.classes
    n = len(classes)
    rand = n == 2 if rand is None else rand
    if rand and n != 2:
        raise UsageError(f"the Rand score is for two-class (membrane/cell) data; {segmenter.loaded.name} has {n} classes")
    matrix = np.zeros((n, n), dtype=np.int64)
    region_pairs: list[tuple[np.ndarray, np.ndarray]] = []
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i in range(len(masked.images)):
        truth = masked.mask(i).astype(np.int64)
        valid = truth != IGNORE_INDEX
        if truth[valid].size and truth[valid].max() >= n:
            raise UsageError(f"{masked.names[i]}: mask class id {int(truth[valid].max())} but {segmenter.loaded.name} "
                             f"has {n} classes")
        predicted = np.asarray(segmenter(masked.image(i)).mask, dtype=np.int64)
        matrix += np.bincount(truth[valid] * n + predicted[valid], minlength=n * n).reshape(n, n)
        if rand:
            region_pairs.append((truth, predicted))
        if len(examples) < 4:
            examples.append((masked.image(i), truth, predicted))
    scores = scores_from_confusion(matrix)
    summary = {"task": "segment", "data": str(data), "model": segmenter.loaded.name,
               "weights_sha256": segmenter.weights_sha256, "images": len(masked.images),
               "decision_threshold": segmenter.decision_threshold,
               "skipped_files": len(masked.skipped), "classes": classes,
               "pixel_accuracy": round(scores["pixel_accuracy"], 4), "miou": round(scores["miou"], 4),
               "mdice": round(scores["mdice"], 4),
               "iou": {c: _round(v) for c, v in zip(classes, scores["iou"])},
               "dice": {c: _round(v) for c, v in zip(classes, scores["dice"])},
               "confusion_matrix": matrix.tolist(), "plots": []}
    if rand:
        from cvtool.ops.regions import region_scores

        regions = region_scores(region_pairs)
        summary["rand"] = {"adapted_rand_error": round(regions["adapted_rand_error"], 4),
                           "foreground_rand_score": round(1 - regions["adapted_rand_error"], 4),
                           "per_image_error": regions["per_image_rand_error"],
                           "vi_split": round(regions["vi_split"], 4), "vi_merge": round(regions["vi_merge"], 4)}
    if out_dir is not None:
        summary["plots"].append(_save_examples(examples, out_dir / "examples.png"))
    return summary


def _round(value: float):
    return None if value is None or np.isnan(value) else round(float(value), 4)


def _need_model(weights, model) -> None:
    if weights is None and model is None:
        raise UsageError("give --weights FILE (a checkpoint from `cvtool train`) or --model NAME")


def _class_map(data_classes: list[str], model_classes: list[str], data) -> list[int]:
    """The data's class index -> the model's, by name (YOLO data without classes.txt: by index)."""
    if all(name in model_classes for name in data_classes):
        return [model_classes.index(name) for name in data_classes]
    if all(name == f"class_{i}" for i, name in enumerate(data_classes)) and len(data_classes) <= len(model_classes):
        return list(range(len(data_classes)))
    unknown = [name for name in data_classes if name not in model_classes]
    raise UsageError(f"{data}: classes not known to the model: {', '.join(unknown[:5])}")


def _save_examples(examples, path: Path) -> str:
    from cvtool.io.render import class_palette
    from cvtool.train.plots import pyplot, save_figure

    plt = pyplot()
    palette = class_palette()
    fig, axes = plt.subplots(len(examples), 3, figsize=(9, 3 * len(examples)), squeeze=False)
    for row, (image, truth, predicted) in zip(axes, examples):
        for ax, picture, title in zip(row, (image, palette[truth % len(palette)], palette[predicted % len(palette)]),
                                      ("image", "truth", "predicted")):
            ax.imshow(picture)
            ax.set(title=title, xticks=[], yticks=[])
    return save_figure(fig, path)


def landmarks(data: str | Path, *, weights: str | Path | None = None, model: str | None = None,
              device: str = "auto", boxes: str = "points", on_skip: Callable[[str], None] | None = None) -> dict:
    """The normalised mean error (inter-ocular for iBUG 68 / dlib 5 points, else the box diagonal) and the failure
    rates at 0.08 and 0.10 of a landmark model on labelled points (the layouts `cvtool train landmarks` reads),
    through the object `cvtool landmarks` runs. `boxes`: "points" crops each face around its true points (the
    training convention, as training validates); "detector" runs the face detector and takes the detection that
    is the annotated face (`cvtool landmarks`' own boxes; faces it misses are counted, not scored). A whole-image
    model (`--region image`) takes each image whole either way."""
    from cvtool.api import LandmarkDetector
    from cvtool.errors import InputError
    from cvtool.io.image import read_image
    from cvtool.ops import landmarks as geo
    from cvtool.train.datasets import DataError
    from cvtool.train.landmark_regression import check_points_inside, matched_face, open_landmark_data

    _need_model(weights, model)
    if boxes not in ("points", "detector"):
        raise UsageError(f"--boxes {boxes!r}: choose points or detector")
    labelled = open_landmark_data(data, on_skip=on_skip)
    finder = LandmarkDetector(model, weights=weights, device=device, backend="torch", no_detect=boxes == "points")
    pipeline = finder._pipeline
    detector = finder.face_detector
    if boxes == "detector" and pipeline.region == "box" and detector is None:
        raise UsageError(f"{weights or model}: trained without measuring a face detector's boxes (--fit-faces 0); "
                         "score it with --boxes points")
    if len(labelled.points[0]) != pipeline.layout.num_points:
        raise UsageError(f"{data}: {len(labelled.points[0])} points per image, but {finder.loaded.name} predicts "
                         f"{pipeline.layout.num_points}")
    predicted, truth, skipped, missed = [], [], 0, 0
    for source, pts, where in zip(labelled.sources, labelled.points, labelled.labels):
        try:
            rgb = read_image(source)
        except InputError as exc:
            skipped += 1
            if on_skip is not None:
                on_skip(str(exc))
            continue
        height, width = rgb.shape[:2]
        check_points_inside(pts, height, width, where)
        if pipeline.region == "image":
            found = pipeline.points_in(rgb, [pipeline.faces_of(rgb)[0][0]])[0]
        elif boxes == "points":
            found = finder.points_for(rgb, [geo.points_box(pts)], reference=True)[0]
        else:
            assert detector is not None  # checked above
            box = matched_face(detector.detect([rgb])[0], pts)
            if box is None:
                missed += 1
                continue
            found = finder.points_for(rgb, [box])[0]
        predicted.append(found)
        truth.append(pts)
    if not truth:
        raise DataError("no face could be scored", data)
    errors = geo.nme(np.stack(predicted), np.stack(truth), pipeline.layout)
    return {"task": "landmarks", "data": str(data), "model": finder.loaded.name,
            "weights_sha256": finder.weights_sha256, "boxes": boxes if pipeline.region == "box" else "image",
            "images": len(truth), "skipped_files": skipped, "missed_by_detector": missed,
            "layout": pipeline.layout.name, **geo.nme_summary(errors, pipeline.layout)}
