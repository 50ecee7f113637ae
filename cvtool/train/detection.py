"""`cvtool train detect`: the YOLO-style detector on VOC / YOLO / COCO data, scored with pycocotools."""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from cvtool.io.image import read_image
from cvtool.models.yolo import YoloDetector, assign_targets, decode, yolo_loss
from cvtool.ops.anchors import best_possible_recall, kmeans_anchors
from cvtool.ops.boxes import DETECT_CONF, DETECT_IOU, DETECT_MAX_DET
from cvtool.ops.letterbox import letterbox
from cvtool.ops.tensors import image_to_tensor
from cvtool.models.checkpoint import COCO_IDS_FIELD
from cvtool.train import distributed
from cvtool.train.detection_data import BoxedImages, open_detection_data
from cvtool.train.recipes import DetectTrainArgs


@dataclass(frozen=True)
class OnDisk:
    """An image read (and letterboxed) when a DataLoader worker needs it: the lazy path for data sets
    larger than cvtool.train.datasets.in_memory_budget()."""

    path: Path
    size: int

    def load(self) -> np.ndarray:
        return letterbox(read_image(self.path), self.size)[0]


def letterboxed(data: BoxedImages, size: int, on_skip=None):
    """Decode every image once, letterboxed to size x size, with its boxes moved along; the pixels are
    kept while they fit in the in-memory budget, else (for every image) read again when needed.
    Returns (images, boxes, labels, kept indices, letterboxes): each image's Letterbox maps boxes back."""
    from cvtool.train.datasets import in_memory_budget

    images, boxes, labels, kept, boxes_of = [], [], [], [], []
    budget, held = in_memory_budget(), 0
    for i, (path, image_boxes, image_labels) in enumerate(zip(data.paths, data.boxes, data.labels)):
        try:
            boxed, box = letterbox(read_image(path), size)
        except Exception as exc:  # noqa: BLE001 — reported and skipped, like classification's bad files
            if on_skip:
                on_skip(str(exc))
            continue
        held += boxed.nbytes
        images.append(boxed if held <= budget else None)
        boxes.append(box.to_letterboxed(image_boxes).astype(np.float32) if len(image_boxes) else image_boxes)
        labels.append(image_labels)
        kept.append(i)
        boxes_of.append(box)
    if held > budget:
        images = [OnDisk(Path(data.paths[i]), size) for i in kept]
    return images, boxes, labels, kept, boxes_of


class DetectionDataset:
    """Letterboxed images and boxes; training adds mosaics (with probability `mosaic`), flips,
    scale/shift jitter and colour jitter, all keeping the boxes right. For validation, with `letterboxes`
    and `originals` (each image's Letterbox and its boxes in its own pixels), each target also carries
    those, so the metrics score boxes in the original image's pixels as `cvtool val detect` does."""

    takes_augmentation_seeds = True  # __getitem__((index, seed)): see cvtool.train.engine.EpochBatches

    def __init__(self, images, boxes, labels, *, train: bool, hflip: bool = True, mosaic: float = 0.0,
                 letterboxes=None, originals=None):
        self.images, self.boxes, self.labels, self.train, self.hflip = images, boxes, labels, train, hflip
        self.mosaic = mosaic
        self.letterboxes, self.originals = letterboxes, originals
        # in shared memory, so DataLoader worker processes (persistent ones too) see it switched off
        self._mosaic_on = torch.ones(1).share_memory_()

    def set_mosaic(self, on: bool) -> None:
        self._mosaic_on[0] = float(on)

    @property
    def mosaic_on(self) -> bool:
        return bool(self.mosaic) and bool(self._mosaic_on[0] > 0)

    def __len__(self) -> int:
        return len(self.images)

    def _image(self, index: int) -> np.ndarray:
        image = self.images[index]
        return image if isinstance(image, np.ndarray) else image.load()

    def __getitem__(self, item):
        from cvtool.train.datasets import augmentation_rng, sample_index

        index, seed = sample_index(item)
        image, boxes = self._image(index), self.boxes[index].copy()
        labels = self.labels[index]
        if self.train:
            rng = augmentation_rng(seed)
            if self.mosaic_on and rng.random() < self.mosaic:
                image, boxes, labels = self._mosaic(index, image, rng)
            image, boxes, labels = self._augment(image, boxes, labels, rng)
        tensor = image_to_tensor(image)
        target = {"boxes": torch.from_numpy(boxes).float().reshape(-1, 4), "labels": torch.from_numpy(labels)}
        if not self.train and self.letterboxes is not None:
            target["letterbox"] = self.letterboxes[index]
            target["original_boxes"] = torch.from_numpy(np.asarray(self.originals[index], np.float32)).reshape(-1, 4)
        return tensor, target

    def _mosaic(self, index: int, first: np.ndarray, rng):
        """Four training images (this one and three others) tiled 2 x 2 at half size, then a random
        window of 0.5-1x the tiling's side scaled back: more objects and contexts per step."""
        size = first.shape[0]
        half = size // 2
        picks = [index, *rng.integers(0, len(self.images), size=3).tolist()]
        canvas = np.empty((2 * half, 2 * half, 3), np.uint8)
        all_boxes, all_labels = [], []
        for k, i in enumerate(picks):
            ox, oy = (k % 2) * half, (k // 2) * half
            tile = first if k == 0 else self._image(i)
            canvas[oy:oy + half, ox:ox + half] = cv2.resize(tile, (half, half), interpolation=cv2.INTER_AREA)
            if len(self.boxes[i]):
                all_boxes.append(self.boxes[i] * (half / size) + np.array([ox, oy, ox, oy], np.float32))
                all_labels.append(self.labels[i])
        side = rng.uniform(0.5, 1.0) * 2 * half
        x0, y0 = rng.uniform(0, 2 * half - side, size=2)
        scale = size / side
        matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]])
        image = cv2.warpAffine(canvas, matrix, (size, size), borderValue=(114, 114, 114))
        boxes = np.concatenate(all_boxes).reshape(-1, 4) if all_boxes else np.zeros((0, 4), np.float32)
        labels = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)
        boxes, labels = _keep_visible((boxes - np.array([x0, y0, x0, y0])) * scale, labels, size)
        return image, boxes, labels

    def _augment(self, image, boxes, labels, rng):
        size = image.shape[0]
        scale = rng.uniform(0.75, 1.25)
        shift = rng.uniform(-0.1, 0.1, size=2) * size
        matrix = np.array([[scale, 0, (1 - scale) * size / 2 + shift[0]], [0, scale, (1 - scale) * size / 2 + shift[1]]])
        image = cv2.warpAffine(image, matrix, (size, size), borderValue=(114, 114, 114))
        if len(boxes):
            boxes, labels = _keep_visible(boxes * scale + np.array([matrix[0, 2], matrix[1, 2]] * 2), labels, size)
        if self.hflip and rng.random() < 0.5:
            image = image[:, ::-1]
            if len(boxes):
                boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], axis=1)
        hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1:] *= rng.uniform(0.7, 1.3, size=2)
        image = cv2.cvtColor(hsv.clip(0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
        return np.ascontiguousarray(image), np.ascontiguousarray(boxes, dtype=np.float32), labels


def _keep_visible(boxes: np.ndarray, labels: np.ndarray, size: int):
    """Clip boxes to the image; drop those pushed mostly (70%) out of view, or thinner than 2 pixels."""
    clipped = boxes.clip(0, size)
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (visible > 0.3 * np.maximum(area, 1e-6)) & (clipped[:, 2] - clipped[:, 0] >= 2) & (clipped[:, 3] - clipped[:, 1] >= 2)
    return clipped[keep].astype(np.float32), labels[keep]


def collate(batch):
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def predictions(raw: torch.Tensor, anchors: torch.Tensor, letterboxes, classes: list[str], *, conf: float, iou: float,
                max_det: int) -> list[tuple]:
    """Per image: (boxes in its own pixels, scores, labels), exactly the boxes `cvtool detect --conf --iou
    --max-det` prints for it: the same steps in the same functions (the detector's decoding and clipping to
    the image, the pipeline's score threshold and per-class NMS, the records' rounding)."""
    from cvtool.models.yolo import detections_in_original_pixels
    from cvtool.ops.boxes import detection_record, filter_detections

    out = []
    for found in detections_in_original_pixels(*decode(raw, anchors), letterboxes):
        order, mask = filter_detections(found["boxes"], found["scores"], found["labels"], conf=conf, iou=iou,
                                        max_det=max_det)
        boxes, scores, labels = found["boxes"][mask][order], found["scores"][mask][order], found["labels"][mask][order]
        out.append(detection_tensors([detection_record(b, s, c, classes[int(c)]) for b, s, c in zip(boxes, scores, labels)]))
    return out


def detection_tensors(detections: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detection records (`cvtool detect`'s) -> (boxes N x 4, scores N, labels N), what `coco_map` scores."""
    return (torch.tensor([d["box"] for d in detections], dtype=torch.float32).reshape(-1, 4),
            torch.tensor([d["score"] for d in detections], dtype=torch.float32),
            torch.tensor([d["index"] for d in detections], dtype=torch.int64))


def coco_map(gt: list[dict], detections: list[list], classes: list[str]) -> dict:
    """mAP@0.5, mAP@0.5:0.95 and per-class AP@0.5 with pycocotools (not hand-written), plus the PR curve."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1, "width": 1, "height": 1} for i in range(len(gt))]
    annotations = []
    for i, target in enumerate(gt):
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    results = [{"image_id": i + 1, "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
               for i, (boxes, scores, labels) in enumerate(detections)
               for (x1, y1, x2, y2), s, label in zip(boxes.tolist(), scores.tolist(), labels.tolist())]
    if not annotations:
        return {"map50": 0.0, "map50_95": 0.0, "ap50_per_class": {}, "pr_curve": []}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)]}
        truth.createIndex()
        if not results:
            return {"map50": 0.0, "map50_95": 0.0, "ap50_per_class": {n: 0.0 for n in classes}, "pr_curve": []}
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    per_class = {}
    for k, name in enumerate(classes):
        p = precision[0, :, k, 0, -1]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
    curve = precision[0, :, :, 0, -1]
    curve = np.where(curve > -1, curve, np.nan)
    return {"map50": float(evaluator.stats[1]), "map50_95": float(evaluator.stats[0]), "ap50_per_class": per_class,
            "pr_curve": np.nan_to_num(np.nanmean(curve, axis=1)).round(4).tolist()}


class DetectionTask:
    name = "detect"

    def __init__(self, classes: list[str], anchors: np.ndarray, args: DetectTrainArgs):
        self.classes, self.args = classes, args
        self.anchors = torch.tensor(anchors, dtype=torch.float32)

    progress = False  # a download bar for pretrained backbone weights

    def build_model(self) -> nn.Module:
        model = YoloDetector(len(self.classes), anchors=self.anchors.tolist(), width=self.args.width,
                             img_size=self.args.img_size, backbone=self.args.backbone)
        if self.args.pretrained:
            load_pretrained_backbone(model, progress=self.progress)
        return model

    def loss(self, raw, targets):
        grid = raw.shape[2:4]
        boxes, labels = [t["boxes"].cpu() for t in targets], [t["labels"].cpu() for t in targets]
        target, mask = assign_targets(boxes, labels, self.anchors, grid, len(self.classes))
        # a training step under torchrun normalises by the global batch's counts (validation runs on rank 0
        # alone, without gradients, and by its own batch's)
        counts = distributed.all_reduce_sum if distributed.is_active() and torch.is_grad_enabled() else None
        return yolo_loss(raw, target, mask, self.anchors, gt_boxes=boxes, global_counts=counts)

    def start_metrics(self) -> dict:
        return {"gt": [], "det": []}

    def update_metrics(self, state: dict, raw, targets) -> None:
        """Scores what `cvtool val detect` scores for the same checkpoint: its conf, IoU and max_det, boxes
        in each image's own pixels (clipped to it), ground truth as the annotations give it."""
        if targets and "letterbox" in targets[0]:
            letterboxes, truth = [t["letterbox"] for t in targets], [t["original_boxes"] for t in targets]
        else:  # no letterboxes given: score in the letterboxed square
            from cvtool.ops.letterbox import Letterbox

            letterboxes = [Letterbox(1.0, 1.0, 0, 0) for _ in targets]
            truth = [t["boxes"] for t in targets]
        state["det"] += predictions(raw.float(), self.anchors.to(raw.device), letterboxes, self.classes,
                                    conf=DETECT_CONF, iou=DETECT_IOU, max_det=DETECT_MAX_DET)
        state["gt"] += [{"boxes": b.cpu(), "labels": t["labels"].cpu()} for b, t in zip(truth, targets)]

    def finish_metrics(self, state: dict) -> dict[str, float]:
        scores = coco_map(state["gt"], state["det"], self.classes)
        self.last_scores = scores
        return {"map50": scores["map50"], "map50_95": scores["map50_95"]}

    def checkpoint_fields(self) -> dict:
        from cvtool.models.yolo import YOLO_PREPROCESS

        return {"arch": "yolo", "task": "detect", "classes": list(self.classes), "preprocess": YOLO_PREPROCESS.to_dict()}


def load_pretrained_backbone(model: YoloDetector, *, progress: bool = False) -> None:
    """The backbone's torchvision classifier weights, from cvtool's weights cache (downloaded once
    where the network allows; CVTOOL_OFFLINE=1 or no network: a one-line WeightsError)."""
    from cvtool.errors import WeightsError
    from cvtool.models.checkpoint import load_weights_file
    from cvtool.models.registry import get_entry
    from cvtool.models.yolo import load_backbone_weights

    if model.backbone_name == "csp":
        raise WeightsError("--pretrained needs --backbone resnet18 or mobilenet_v3_small; csp is trained from scratch")
    entry = get_entry(model.backbone_name, "classify")
    loaded = load_weights_file(entry.weights.local_path(progress=progress, alternative=None))
    load_backbone_weights(model, loaded.state_dict, str(loaded.path))


def save_pr_curve(curve: list[float], path: Path) -> str:
    from cvtool.train.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(np.linspace(0, 1, len(curve)), curve)
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall at IoU 0.5", xlim=(0, 1), ylim=(0, 1.02))
    return save_figure(fig, path)


def detection_trainer(*args, close_mosaic: int = 0, **kwargs):
    """The engine's Trainer with the detector's own training-loop option, `close_mosaic` N: the last N epochs
    train without mosaics (the training set's switch, seen by DataLoader workers too), so the final epochs see
    whole photos as they come at test time. (`ema`, the weights' moving average, is the engine's.)"""
    from cvtool.train.engine import Trainer

    class DetectionTrainer(Trainer):
        def mosaic_epoch(self, epoch: int) -> bool:
            return not (close_mosaic and epoch > self.cfg.epochs - close_mosaic)

        def _run_epoch(self, epoch: int) -> dict:
            self.train_loader.dataset.set_mosaic(self.mosaic_epoch(epoch))
            return super()._run_epoch(epoch)

    return DetectionTrainer(*args, **kwargs)


def run_training(args: DetectTrainArgs, cfg, run_dir: Path, device, *, resume=False, callbacks=None, on_skip=None,
                 progress: bool = True) -> dict:
    from cvtool.train import plots

    start = time.perf_counter()
    data = open_detection_data(args.data)
    if args.val:
        train_data, val_data = data, open_detection_data(args.val)
    else:
        order = np.random.default_rng(cfg.seed).permutation(len(data.paths))
        n_val = max(1, round(len(order) * args.val_split))
        train_data, val_data = data.subset(sorted(order[n_val:])), data.subset(sorted(order[:n_val]))
    train = letterboxed(train_data, args.img_size, on_skip)
    val = letterboxed(val_data, args.img_size, on_skip)
    shapes = np.concatenate([b[:, 2:] - b[:, :2] for b in train[1] if len(b)])
    anchors = kmeans_anchors(shapes, args.anchors, seed=cfg.seed)
    task = DetectionTask(data.classes, anchors, args)
    task.progress = progress
    trainer = detection_trainer(
        task, DetectionDataset(*train[:3], train=True, hflip=args.hflip, mosaic=args.mosaic),
        DetectionDataset(*val[:3], train=False, letterboxes=val[4], originals=[val_data.boxes[i] for i in val[3]]),
        cfg, run_dir, device, callbacks=callbacks, args=vars(args).copy(),
        collate_fn=collate,
        extra_fields={"arch_kwargs": {"anchors": anchors.tolist(), "width": args.width, "img_size": args.img_size,
                                      "backbone": args.backbone},
                      # COCO JSON data: its own category ids, so `detect -f coco` writes the same ids
                      **({COCO_IDS_FIELD: data.category_ids} if data.category_ids is not None else {})},
        ema=args.ema, close_mosaic=args.close_mosaic,
    )
    if resume:
        trainer.resume(run_dir / "last.pt")
    state = trainer.fit()
    if not trainer.is_main:  # rank 0 scores, plots and writes the summary; the others get it
        return trainer.share_summary(None)
    last_row = state.history[-1]  # the last epoch's model (last.pt), scored as best.pt is
    best_epoch = trainer.load_best_into(run_dir / "best.pt")
    report = trainer.evaluate(trainer.val_loader)
    scores = task.last_scores
    plots.save_curves(state.history, run_dir / "curves.png")
    save_pr_curve(scores["pr_curve"], run_dir / "pr_curve.png")
    summary = {
        "task": "detect", "arch": "yolo", "backbone": args.backbone, "pretrained": args.pretrained, "classes": data.classes, "train_images": len(train[0]),
        "val_images": len(val[0]), "anchors": anchors.round(1).tolist(),
        "anchor_recall_at_0.5": round(best_possible_recall(shapes, anchors), 4), "epochs": state.epoch,
        "best_epoch": best_epoch, "val": {**report, "ap50_per_class": scores["ap50_per_class"]},
        "last": {"epoch": last_row["epoch"], "map50": last_row.get("val_map50"), "map50_95": last_row.get("val_map50_95")},
        "ema": args.ema or None, "close_mosaic": args.close_mosaic,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return trainer.finish(summary)


def resumed_arguments(run_dir: Path, epochs: int | None):
    from cvtool.train.engine import stored_run

    args, cfg = stored_run(run_dir, epochs)
    # a run from before mosaics stores no `mosaic` and trained without them (the default is 0.5 since)
    return DetectTrainArgs(**{"mosaic": 0.0, **args}), cfg
