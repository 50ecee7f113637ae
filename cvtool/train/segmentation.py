"""`cvtool train segment`: image/mask folder pairs, CE + Dice loss, IoU/Dice/pixel-accuracy metrics.

The U-Net paper's recipe is there by options: elastic deformations (`elastic`), its border-weighted cross-entropy
(`loss="weighted-ce"`: w0, sigma), mirrored context beyond the image borders (`mirror_pad`), width 64 (`width`).
For two-class data every validation also scores the connected cell regions: ISBI 2012's Rand F-score (`rand_f`,
1 - the adapted Rand error) and the variation of information (split / merge), reported for best.pt and for the
last epoch's model; `select="rand"` picks best.pt by the Rand F-score instead of mIoU."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvtool.errors import InputError, UsageError
from cvtool.io.image import IMAGE_SUFFIXES, read_image
from cvtool.models.registry import ModelEntry
from cvtool.ops.preprocess import Preprocess
from cvtool.train.datasets import SEGMENT_IMAGE_DIRS, SEGMENT_MASK_DIRS, DataError
from cvtool.train.recipes import SegmentTrainArgs

IGNORE_INDEX = 255


@dataclass
class MaskedImages:
    images: list  # H x W x 3 uint8 RGB, or the image's path (read when needed: data larger than memory)
    masks: list  # H x W uint8 class ids (IGNORE_INDEX = not scored), or the mask's path
    classes: list[str]
    names: list[str]
    skipped: list[str]
    binary: bool = False  # masks stored as 0/255: class = value > 127
    warnings: list[str] = field(default_factory=list)  # what looks wrong in the data but can be trained as given

    def subset(self, indices) -> "MaskedImages":
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        return MaskedImages(pick(self.images), pick(self.masks), self.classes, pick(self.names), [], self.binary)

    def image(self, index: int) -> np.ndarray:
        image = self.images[index]
        return image if isinstance(image, np.ndarray) else read_image(image)

    def mask(self, index: int) -> np.ndarray:
        mask = self.masks[index]
        return mask if isinstance(mask, np.ndarray) else _class_ids(read_mask(mask), self.binary)


def _class_ids(mask: np.ndarray, binary: bool) -> np.ndarray:
    return (mask > 127).astype(np.uint8) if binary else mask.astype(np.uint8)


def _find_dir(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"no {what} folder (expected one of: {', '.join(names)})", root)


def read_mask(path: Path) -> np.ndarray:
    """Class ids from an indexed (palette) or greyscale PNG; colour masks are ambiguous and refused."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format == "JPEG":  # its values are class ids only away from edges
                raise InputError("mask is a JPEG, whose lossy compression changes class ids along every edge; "
                                 "save masks as PNG", path)
            if image.mode not in ("P", "L", "I;16", "I"):
                raise InputError(f"mask is {image.mode}; expected an indexed (palette) or greyscale PNG of class ids", path)
            return np.asarray(image).astype(np.int64)
    except InputError:
        raise
    except Exception:
        raise InputError("not a readable mask image", path) from None


def open_segmentation_data(root: str | Path, class_names: list[str] | None = None, on_skip=None) -> MaskedImages:
    """`root/images/*` with `root/masks/<same stem>.png`. Binary masks stored as 0/255 become classes 0/1;
    otherwise pixel values are class ids and 255 is ignored."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("no such directory", root)
    image_dir, mask_dir = _find_dir(root, SEGMENT_IMAGE_DIRS, "images"), _find_dir(root, SEGMENT_MASK_DIRS, "masks")
    from cvtool.train.datasets import in_memory_budget

    masks_by_stem = {p.stem: p for p in mask_dir.iterdir() if p.is_file()}
    images, masks, names, skipped, paths = [], [], [], [], []
    budget, held, values = in_memory_budget(), 0, set()
    warnings: list[str] = []
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        mask_path = masks_by_stem.get(path.stem)
        try:
            if mask_path is None:
                raise InputError("no mask with the same name in " + mask_dir.name, path)
            image, mask = read_image(path), read_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise InputError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image {image.shape[1]}x{image.shape[0]}", path)
        except InputError as exc:
            skipped.append(str(exc))
            if on_skip:
                on_skip(str(exc))
            continue
        values.update(np.unique(mask).tolist())
        held += image.nbytes + mask.shape[0] * mask.shape[1]  # masks are held as uint8
        # pixels are kept while they fit in the in-memory budget, else read again when needed
        images.append(image if held <= budget else None)
        masks.append(mask if held <= budget else None)
        names.append(path.name)
        paths.append((path, mask_path))
    if not images:
        raise DataError("no usable image/mask pairs", root)
    values = np.array(sorted(values))
    binary = set(values.tolist()) <= {0, 255}
    if binary:
        default_names = ["background", "foreground"]
    else:
        if values[values != IGNORE_INDEX].max() >= IGNORE_INDEX:
            raise DataError(f"mask values go up to {values.max()}; class ids must be below {IGNORE_INDEX}", root)
        default_names = [f"class_{i}" for i in range(int(values[values != IGNORE_INDEX].max()) + 1)]
        warnings.extend(sparse_class_ids(values[values != IGNORE_INDEX]))
    if held > budget:
        images, masks = [image for image, _ in paths], [mask for _, mask in paths]
    else:
        masks = [_class_ids(m, binary) for m in masks]
    if class_names and len(class_names) != len(default_names):
        raise UsageError(f"--class-names gives {len(class_names)} names but the masks hold {len(default_names)} classes")
    return MaskedImages(images, masks, class_names or default_names, names, skipped, binary, warnings)


def sparse_class_ids(ids: np.ndarray) -> list[str]:
    """A warning when the masks use fewer than half of the class ids up to their largest: every missing id is
    trained as a class with no pixels (a palette mask saved as grey levels gives 0, 38, 75, 113: 114 classes)."""
    classes = int(ids.max()) + 1
    if classes <= 2 or 2 * len(ids) >= classes:
        return []
    shown = ", ".join(str(int(i)) for i in ids[:8]) + (", ..." if len(ids) > 8 else "")
    return [f"the masks use {len(ids)} class ids of 0-{classes - 1} ({shown}), so {classes} classes are trained, "
            f"{classes - len(ids)} of them with no pixels; if these values are grey levels (a palette mask saved "
            f"as grey?), save the masks with class ids 0-{len(ids) - 1}"]


class SegmentationDataset:
    """Random crops and flips applied identically to image and mask (training); whole images otherwise.

    Options (training): `elastic` (sigma, grid: see cvtool.ops.elastic) warps image, mask and weights with one
    displacement field; `mirror_pad` pixels of mirrored image (cv2.BORDER_REFLECT) around each image let crops
    reach beyond its borders, the mirrored pixels unscored (ignore index, weight 0), as the paper's overlap-tile
    strategy gives the network context there. `weights` (border weight map options, or None): items are then
    (image, {"mask", "weight"}); the map is computed once per image on the unwarped mask, cached, and warped
    with the same field (bilinear) rather than recomputed, which would cost a distance transform per cell per
    sample; the field is smooth (a 3x3 lattice) so distances change by a few percent at most."""

    takes_augmentation_seeds = True  # __getitem__((index, seed)): see cvtool.train.engine.EpochBatches

    def __init__(self, data: MaskedImages, preprocess: Preprocess, *, crop: int | None, multiple: int, train: bool,
                 elastic: dict | None = None, mirror_pad: int = 0, weights: dict | None = None):
        self.data, self.preprocess, self.crop, self.multiple, self.train = data, preprocess, crop, multiple, train
        self.elastic, self.mirror_pad, self.weights = elastic, mirror_pad, weights
        self._weight_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.data.images)

    def weight_map(self, index: int) -> np.ndarray:
        if index not in self._weight_cache:
            from cvtool.ops.regions import border_weight_map

            self._weight_cache[index] = border_weight_map(self.data.mask(index), num_classes=len(self.data.classes),
                                                          ignore_index=IGNORE_INDEX, **self.weights)
        return self._weight_cache[index]

    def __getitem__(self, item):
        from cvtool.train.datasets import sample_index

        index, seed = sample_index(item)
        image, mask = self.data.image(index), self.data.mask(index)
        weight = self.weight_map(index) if self.weights is not None else None
        if self.train:
            image, mask, weight = self._augment(image, mask, weight, seed)
        image, mask, weight = self._pad(image, mask, weight)
        target = torch.from_numpy(mask.astype(np.int64))
        if weight is not None:
            target = {"mask": target, "weight": torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))}
        return torch.from_numpy(self.preprocess(image)), target

    def _augment(self, image, mask, weight=None, seed=None):
        import cv2

        from cvtool.train.datasets import augmentation_rng

        rng = augmentation_rng(seed)  # the engine's per-sample seed: governed by seeding and resume
        if self.mirror_pad:
            p = self.mirror_pad
            image = cv2.copyMakeBorder(np.ascontiguousarray(image), p, p, p, p, cv2.BORDER_REFLECT)
            mask = cv2.copyMakeBorder(mask, p, p, p, p, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
            if weight is not None:
                weight = cv2.copyMakeBorder(weight, p, p, p, p, cv2.BORDER_CONSTANT, value=0.0)
        h, w = mask.shape
        if self.crop and (h > self.crop or w > self.crop):
            top, left = rng.integers(0, max(1, h - self.crop + 1)), rng.integers(0, max(1, w - self.crop + 1))
            # the elastic field samples up to a few sigma beyond the crop: warp a window with that margin
            margin = int(4 * self.elastic["sigma"]) if self.elastic else 0
            y0, y1 = max(0, top - margin), min(h, top + self.crop + margin)
            x0, x1 = max(0, left - margin), min(w, left + self.crop + margin)
            image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
            weight = weight[y0:y1, x0:x1] if weight is not None else None
            inner = (slice(top - y0, top - y0 + self.crop), slice(left - x0, left - x0 + self.crop))
        else:
            inner = (slice(None), slice(None))
        if self.elastic:
            from cvtool.ops import elastic

            field = elastic.displacement_field(mask.shape, rng, **self.elastic)
            image = elastic.warp_image(np.ascontiguousarray(image), field)
            mask = elastic.warp_mask(np.ascontiguousarray(mask), field, fill=IGNORE_INDEX)
            if weight is not None:  # bilinear at the edge of the scored area: unscored pixels weigh 0 still
                weight = np.where(mask == IGNORE_INDEX, 0.0, elastic.warp_map(weight, field)).astype(np.float32)
        image, mask = image[inner], mask[inner]
        weight = weight[inner] if weight is not None else None
        flips = []
        if rng.random() < 0.5:
            flips.append(lambda a: a[:, ::-1])
        if rng.random() < 0.5:
            flips.append(lambda a: a[::-1])
        for flip in flips:
            image, mask = flip(image), flip(mask)
            weight = flip(weight) if weight is not None else None
        weight = np.ascontiguousarray(weight) if weight is not None else None
        return np.ascontiguousarray(image), np.ascontiguousarray(mask), weight

    def _pad(self, image, mask, weight=None):
        h, w = mask.shape
        pad_h, pad_w = (-h) % self.multiple, (-w) % self.multiple
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
            weight = np.pad(weight, ((0, pad_h), (0, pad_w))) if weight is not None else None
        return image, mask, weight


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over classes, ignoring IGNORE_INDEX pixels: robust to class imbalance."""
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    probs = logits.float().softmax(1) * valid
    onehot = nn.functional.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * valid
    intersection = (probs * onehot).sum((0, 2, 3))
    sizes = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * intersection + 1) / (sizes + 1)).mean()


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Pixel cross-entropy times a per-pixel weight, averaged over the scored (not ignored) pixels: with all
    weights 1 it is the plain cross-entropy."""
    per_pixel = nn.functional.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = target != IGNORE_INDEX
    return (per_pixel * weight * valid).sum() / valid.sum().clamp(min=1)


def _ce(logits, target, weight=None):
    return nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def _weighted_ce(logits, target, weight=None):
    if weight is None:  # e.g. a torchvision segmenter's auxiliary head has no map of its own size: same size here
        return _ce(logits, target)
    return weighted_cross_entropy(logits, target, weight)


LOSSES = {
    "ce": _ce,
    "dice": lambda logits, target, weight=None: dice_loss(logits, target),
    "ce+dice": lambda logits, target, weight=None: _ce(logits, target) + dice_loss(logits, target),
    # the U-Net paper's loss: cross-entropy weighted by its border weight map (w0, sigma)
    "weighted-ce": _weighted_ce,
    "weighted-ce+dice": lambda logits, target, weight=None: _weighted_ce(logits, target, weight)
    + dice_loss(logits, target),
}
WEIGHTED_LOSSES = ("weighted-ce", "weighted-ce+dice")


def _split_target(targets):
    """(class-id mask, per-pixel weights or None) from what SegmentationDataset yields."""
    if isinstance(targets, dict):
        return targets["mask"], targets["weight"]
    return targets, None


def scores_from_confusion(matrix: np.ndarray) -> dict[str, Any]:
    """Pixel accuracy, per-class IoU and Dice, and their means, from a true x predicted pixel count matrix."""
    tp = np.diag(matrix).astype(np.float64)
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    total = matrix.sum()
    return {"pixel_accuracy": float(tp.sum() / total) if total else 0.0, "miou": float(np.nanmean(iou)),
            "mdice": float(np.nanmean(dice)), "iou": iou.tolist(), "dice": dice.tolist()}


SELECT = {"miou": "val_miou", "rand": "val_rand_f"}  # --select -> the validation metric that picks best.pt


# Two classes: the thresholds on class 1's probability each validation tries (cvtool.ops.regions.
# thresholded_labels); the one with the best mIoU is the decision the scores and the checkpoint use (mIoU, not
# pixel accuracy, which the majority class rules: on ISBI's membranes pixel accuracy picks lines too thin).
THRESHOLDS = tuple(round(0.2 + 0.05 * k, 2) for k in range(11))  # 0.2 ... 0.7


@dataclass
class SegmentMetrics:
    """One validation pass: the pixel confusion matrix; for two classes one per threshold instead, and each
    image's truth and labels at every threshold (bit-packed) for the region scores of the one chosen."""

    matrix: np.ndarray  # true x predicted pixel counts (two classes: THRESHOLDS x 2 x 2)
    images: list | None  # two classes: (truth's cells, labels per threshold, width), bit-packed, per image


class SegmentationTask:
    name = "segment"

    def __init__(self, entry: ModelEntry, classes: list[str], preprocess: Preprocess, arch_kwargs: dict, loss: str):
        if loss not in LOSSES:
            raise UsageError(f"unknown --loss {loss!r}; choose from {', '.join(LOSSES)}")
        self.entry, self.classes, self.preprocess, self.arch_kwargs = entry, classes, preprocess, arch_kwargs
        self._loss = LOSSES[loss]
        self.regions = len(classes) == 2  # cells (class 1) separated by membranes (class 0): region scores too
        self.decision_threshold: float | None = None  # the latest validation's; saved with the checkpoint after it

    def build_model(self) -> nn.Module:
        return self.entry.build(num_classes=len(self.classes), **self.arch_kwargs)

    def loss(self, outputs, targets):
        from cvtool.models.contract import segmentation_logits

        targets, weight = _split_target(targets)
        loss = self._loss(segmentation_logits(outputs), targets, weight)
        if isinstance(outputs, dict) and outputs.get("aux") is not None:
            loss = loss + 0.5 * self._loss(outputs["aux"], targets, weight)
        return loss

    def start_metrics(self) -> SegmentMetrics:
        n = len(self.classes)
        if self.regions:
            return SegmentMetrics(np.zeros((len(THRESHOLDS), 2, 2), dtype=np.int64), [])
        return SegmentMetrics(np.zeros((n, n), dtype=np.int64), None)

    def update_metrics(self, state: SegmentMetrics, outputs, targets) -> None:
        from cvtool.models.contract import segmentation_logits

        logits = segmentation_logits(outputs)
        truth = _split_target(targets)[0].cpu().numpy()
        if not self.regions:
            predicted = logits.argmax(1).cpu().numpy()
            valid = truth != IGNORE_INDEX
            np.add.at(state.matrix, (truth[valid], predicted[valid]), 1)
            return
        from cvtool.ops.regions import cell_regions, thresholded_labels

        probability = torch.softmax(logits.float(), 1)[:, 1].cpu().numpy()
        for image_truth, image_probability in zip(truth, probability):
            image_truth, image_probability = _whole_image(image_truth, image_probability)
            cells = cell_regions(image_probability > 0.5, foreground=True)  # the argmax's, grown at each threshold
            valid = image_truth != IGNORE_INDEX
            labels = np.stack([thresholded_labels(image_probability, t, cells) for t in THRESHOLDS])
            for k in range(len(THRESHOLDS)):
                state.matrix[k] += np.bincount(image_truth[valid].astype(np.int64) * 2 + labels[k][valid],
                                               minlength=4).reshape(2, 2)
            # bits, not bytes: a large validation set's masks stay small until the threshold is chosen
            state.images.append((np.packbits(valid & (image_truth == 1), axis=-1), np.packbits(labels, axis=-1),
                                 image_truth.shape[-1]))

    def finish_metrics(self, state: SegmentMetrics) -> dict[str, float]:
        matrix, chosen = state.matrix, None
        if self.regions:  # the threshold with the best mIoU; ties go to the one nearest 0.5
            miou = [scores_from_confusion(m)["miou"] for m in matrix]
            chosen = max(range(len(THRESHOLDS)), key=lambda k: (miou[k], -abs(THRESHOLDS[k] - 0.5)))
            matrix = matrix[chosen]
        scores = scores_from_confusion(matrix)
        flat = {k: v for k, v in scores.items() if not isinstance(v, list)}
        flat.update({f"iou_{name}": iou for name, iou in zip(self.classes, scores["iou"])})
        flat.update({f"dice_{name}": dice for name, dice in zip(self.classes, scores["dice"])})
        if state.images:
            from cvtool.ops.regions import region_scores

            pairs = [(np.unpackbits(cells, axis=-1, count=width), np.unpackbits(packed[chosen], axis=-1, count=width))
                     for cells, packed, width in state.images]
            regions = region_scores(pairs)
            flat.update({"adapted_rand_error": regions["adapted_rand_error"],
                         "rand_f": 1.0 - regions["adapted_rand_error"],
                         "vi_split": regions["vi_split"], "vi_merge": regions["vi_merge"]})
        if chosen is not None:
            self.decision_threshold = THRESHOLDS[chosen]
            flat["decision_threshold"] = THRESHOLDS[chosen]
        return flat

    def checkpoint_fields(self) -> dict:
        from cvtool.models.checkpoint import DECISION_THRESHOLD_FIELD

        fields = {"arch": self.entry.name, "task": "segment", "classes": list(self.classes),
                  "preprocess": self.preprocess.to_dict()}
        if self.decision_threshold is not None:
            fields[DECISION_THRESHOLD_FIELD] = self.decision_threshold
        return fields


def dataset_options(args: SegmentTrainArgs) -> dict:
    """SegmentationDataset's augmentation and weight-map options from the run's arguments."""
    if args.loss not in LOSSES:
        raise UsageError(f"unknown --loss {args.loss!r}; choose from {', '.join(LOSSES)}")
    if (args.mirror_pad < 0 or args.elastic_sigma < 0 or args.elastic_grid < 2 or args.border_sigma <= 0
            or args.border_w0 < 0):
        raise UsageError("--mirror-pad, --elastic-sigma and --border-w0 must be >= 0, --elastic-grid >= 2, "
                         "--border-sigma > 0")
    weights = ({"w0": args.border_w0, "sigma": args.border_sigma, "class_balance": args.border_balance}
               if args.loss in WEIGHTED_LOSSES else None)
    elastic = {"sigma": args.elastic_sigma, "grid": args.elastic_grid} if args.elastic else None
    return {"elastic": elastic, "mirror_pad": args.mirror_pad, "weights": weights}


def resumed_arguments(run_dir: Path, epochs: int | None):
    from cvtool.train.engine import stored_run

    args, cfg = stored_run(run_dir, epochs)
    return SegmentTrainArgs(**args), cfg


def _arch_kwargs(entry: ModelEntry, args: SegmentTrainArgs) -> dict:
    """The run's arguments that are build options of `entry`'s network, as its registry entry declares them."""
    return {name: getattr(args, name) for name in entry.train_build_options}


def run_training(args: SegmentTrainArgs, cfg, run_dir: Path, device, *, resume=False, callbacks=None, on_skip=None,
                 on_warning=None) -> dict:
    from cvtool.models.registry import get_entry
    from cvtool.train import plots
    from cvtool.train.engine import Trainer

    start = time.perf_counter()
    entry = get_entry(args.arch, "segment")
    arch_kwargs = _arch_kwargs(entry, args)
    preprocess = entry.train_preprocess(arch_kwargs)
    data = open_segmentation_data(args.data, args.class_names, on_skip)
    if on_warning is not None:
        for warning in data.warnings:
            on_warning(warning)
    if args.val:
        train_data, val_data = data, open_segmentation_data(args.val, data.classes, on_skip)
    else:
        n = len(data.images)
        if n < 2:
            raise DataError("need at least 2 image/mask pairs to hold one out (or pass --val)", args.data)
        order = np.random.default_rng(cfg.seed).permutation(n)
        n_val = max(1, round(n * args.val_split))
        train_data, val_data = data.subset(sorted(order[n_val:])), data.subset(sorted(order[:n_val]))
    task = SegmentationTask(entry, data.classes, preprocess, arch_kwargs, args.loss)
    if cfg.monitor == SELECT["rand"] and not task.regions:
        raise UsageError(f"--select rand scores the cells between membranes: it needs two classes, "
                         f"{args.data} has {len(data.classes)} ({', '.join(data.classes)})")
    multiple = entry.train_multiple_of(**arch_kwargs)
    options = dataset_options(args)
    trainer = Trainer(
        task,
        SegmentationDataset(train_data, preprocess, crop=args.crop, multiple=multiple, train=True, **options),
        SegmentationDataset(val_data, preprocess, crop=None, multiple=multiple, train=False,
                            weights=options["weights"]),
        cfg, run_dir, device, callbacks=callbacks, args=vars(args).copy(), extra_fields={"arch_kwargs": arch_kwargs},
        ema=args.ema,
    )
    if resume:
        trainer.resume(run_dir / "last.pt")
    state = trainer.fit()
    if not trainer.is_main:  # rank 0 scores, plots and writes the summary; the others get it
        return trainer.share_summary(None)
    # the last epoch's model first (the model holds it now), then best.pt: both are reported
    last_report = trainer.evaluate(trainer.val_loader)
    best_epoch = trainer.load_best_into(run_dir / "best.pt")
    report = trainer.evaluate(trainer.val_loader)
    plots.save_curves(state.history, run_dir / "curves.png")
    save_examples(trainer.scored_model, val_data, trainer.val_loader, run_dir / "examples.png", device,
                  threshold=task.decision_threshold)
    summary = {
        "task": "segment", "arch": entry.name, "classes": data.classes, "train_images": len(train_data.images),
        "val_images": len(val_data.images), "val_names": val_data.names, "skipped_files": len(data.skipped),
        "epochs": state.epoch, "best_epoch": best_epoch, "val": report, "val_last_epoch": last_report,
        "ema": args.ema or None, "seconds": round(time.perf_counter() - start, 2), "warnings": data.warnings,
    }
    return trainer.finish(summary)


def _whole_image(truth: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One validation image's truth and class-1 probability without the padding _pad added (ignored pixels past
    the image's own extent), as `cvtool segment` sees the image."""
    rows, cols = np.nonzero((truth != IGNORE_INDEX).any(1))[0], np.nonzero((truth != IGNORE_INDEX).any(0))[0]
    if rows.size:
        truth, probability = truth[: rows[-1] + 1, : cols[-1] + 1], probability[: rows[-1] + 1, : cols[-1] + 1]
    return truth, probability


@torch.inference_mode()
def save_examples(model, data: MaskedImages, loader, path: Path, device, limit: int = 4,
                  threshold: float | None = None) -> str:
    """A PNG grid, one row per validation image: the image, the true mask, the predicted mask (two classes: at
    the chosen `threshold`, as `cvtool segment` decides)."""
    from cvtool.io.atomic import atomic_write_bytes
    from cvtool.io.render import class_palette
    from cvtool.models.contract import segmentation_logits
    import cv2

    palette = class_palette()
    palette[1] = (255, 255, 255) if len(data.classes) == 2 else palette[1]
    rows = []
    model.eval()
    for i, (inputs, targets) in enumerate(loader):
        if i >= limit:
            break
        logits = segmentation_logits(model(inputs.to(device))).float()
        mask = data.mask(i)
        h, w = mask.shape
        if threshold is None:
            predicted = logits.argmax(1)[0].cpu().numpy()
        else:
            from cvtool.ops.regions import thresholded_labels

            predicted = thresholded_labels(torch.softmax(logits, 1)[0, 1, :h, :w].cpu().numpy(), threshold)
        image = data.image(i)
        truth = palette[np.where(mask == IGNORE_INDEX, 0, mask)]
        rows.append(np.hstack([image, truth, palette[predicted[:h, :w]]]))
    grid = np.vstack([cv2.resize(r, (768, round(768 * r.shape[0] / r.shape[1]))) for r in rows])
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    atomic_write_bytes(path, encoded.tobytes())
    return str(path)
