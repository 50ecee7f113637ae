"""`cvtool train localize`: classification with localisation, one object per image, on the training engine.

Data: the detection layouts (cvtool.train.detection_data: VOC XML, YOLO txt, COCO JSON). An image with no box
is a Pc = 0 example; one with more than one box is refused, cut to its largest box or left out (`--multi`).
Each image is decoded once, stretched whole to img_size x img_size (heads.square_preprocess), and its box
kept as (bx, by, bh, bw) fractions of the image. The network, its loss and the decoding of its outputs are
cvtool.models.localizer's; the scores (`localization_scores`) are this module's, used by training's validation,
`cvtool val localize` and bench/eval_localize.py alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from cvtool.models.localizer import TARGET_COLUMNS, box_iou, centre_to_corners, decode, localization_loss
from cvtool.ops.preprocess import Preprocess
from cvtool.train import plots
from cvtool.train.datasets import DataError, augmentation_rng, brightness_contrast, sample_index
from cvtool.train.recipes import LocalizeTrainArgs

MULTI = ("refuse", "largest", "skip")  # what an image with more than one box becomes (--multi)
PC_THRESHOLD = 0.5  # Pc at or above it: "there is an object" (validation; `cvtool localize --conf`'s default)
IOU_HIT = 0.5  # a box at IoU >= this with the truth is a hit


# -- data ---------------------------------------------------------------------------------------------------

@dataclass
class OneBoxImages:
    """Images with at most one box each: what localisation trains on."""

    paths: list[Path]
    targets: np.ndarray  # N x 6 (TARGET_COLUMNS): pc, bx, by, bh, bw (fractions of the image), class index
    classes: list[str]
    pixels: list = field(default_factory=list)  # S x S x 3 uint8 arrays, stretched; after `decode_images`
    skipped: list[str] = field(default_factory=list)
    multi_boxes: int = 0  # images with more than one box (cut to the largest, or left out)

    def subset(self, indices) -> "OneBoxImages":
        indices = list(indices)
        return OneBoxImages([self.paths[i] for i in indices], self.targets[indices], self.classes,
                            [self.pixels[i] for i in indices] if self.pixels else [], multi_boxes=self.multi_boxes)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def strata(self) -> list[int]:
        """Per image its class index, or len(classes) for a negative: what a stratified split keeps in proportion."""
        n = len(self.classes)
        return [int(c) if pc > 0 else n for pc, c in zip(self.targets[:, 0], self.targets[:, 5])]


def one_box_images(spec: str | Path, multi: str = "refuse") -> OneBoxImages:
    """The detection data at `spec` as one-box targets (boxes still in pixels; `decode_images` makes them
    fractions once each image's size is known)."""
    from cvtool.train.detection_data import open_detection_data

    if multi not in MULTI:
        raise DataError(f"--multi {multi!r}: choose from {', '.join(MULTI)}")
    try:
        data = open_detection_data(spec)
    except DataError as exc:  # e.g. an empty folder: the line names the data it is about
        if exc.path is None:
            raise DataError(exc.reason, spec) from None
        raise
    paths, rows, multi_boxes = [], [], 0
    for path, boxes, labels in zip(data.paths, data.boxes, data.labels):
        if len(boxes) > 1:
            multi_boxes += 1
            if multi == "refuse":
                raise DataError(f"{len(boxes)} boxes; localisation takes one object per image (--multi largest keeps "
                                "the largest box, --multi skip leaves such images out)", path)
            if multi == "skip":
                continue
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keep = int(np.argmax(areas))
            boxes, labels = boxes[keep : keep + 1], labels[keep : keep + 1]
        paths.append(Path(path))
        if len(boxes):
            rows.append([1.0, *boxes[0].tolist(), float(labels[0])])
        else:
            rows.append([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    if not paths:
        raise DataError("no images left (every image had more than one box)", spec)
    targets = np.asarray(rows, dtype=np.float32).reshape(-1, len(TARGET_COLUMNS))
    if not (targets[:, 0] > 0).any():
        raise DataError("no image has a box: localisation needs Pc = 1 examples", spec)
    return OneBoxImages(paths, targets, list(data.classes), multi_boxes=multi_boxes)


def _stretched(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    flag = cv2.INTER_AREA if side < w and side < h else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(rgb, (side, side), interpolation=flag))


def decode_images(data: OneBoxImages, side: int, on_skip=None) -> OneBoxImages:
    """Read every image once, stretched to side x side; the boxes become (bx, by, bh, bw) fractions of the image.
    An unreadable image is left out (`on_skip` hears one line naming it)."""
    from cvtool.errors import InputError
    from cvtool.io.image import read_image

    keep, pixels, skipped = [], [], list(data.skipped)
    targets = data.targets.copy()
    for i, path in enumerate(data.paths):
        try:
            rgb = read_image(path)
        except InputError as exc:
            skipped.append(str(exc))
            if on_skip:
                on_skip(str(exc))
            continue
        h, w = rgb.shape[:2]
        if targets[i, 0] > 0:
            x1, y1, x2, y2 = targets[i, 1:5]
            x1, x2 = np.clip([x1, x2], 0, w) / w
            y1, y2 = np.clip([y1, y2], 0, h) / h
            targets[i, 1:5] = [(x1 + x2) / 2, (y1 + y2) / 2, y2 - y1, x2 - x1]
        keep.append(i)
        pixels.append(_stretched(rgb, side))
    if not keep:
        raise DataError("none of the images could be read", data.paths[0].parent)
    out = OneBoxImages([data.paths[i] for i in keep], targets[keep], data.classes, pixels, skipped, data.multi_boxes)
    return out


def split(data: OneBoxImages, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: `fraction` of each class and of the negatives held out (a fixed `seed`)."""
    from cvtool.train.datasets import stratified_split

    return stratified_split(data.strata, fraction, seed)


class Jitter:
    """Training augmentation that keeps the box right: a horizontal flip (bx -> 1 - bx), a random scale and shift
    that keep the box inside the image, and brightness/contrast jitter."""

    def __init__(self, *, hflip: bool = True, scale: float = 0.15, shift: float = 0.1, colour: float = 0.2):
        self.hflip, self.scale, self.shift, self.colour = hflip, scale, shift, colour

    def __call__(self, image: np.ndarray, target: np.ndarray, rng: np.random.Generator):
        side = image.shape[0]
        target = target.copy()
        s = 1 + rng.uniform(-self.scale, self.scale)
        tx, ty = rng.uniform(-self.shift, self.shift, size=2)
        if target[0] > 0:  # the box must stay inside: shrink the shift (and the zoom) until it does
            x1, y1, x2, y2 = centre_to_corners(target[None, 1:5])[0]
            s = min(s, 1 / max(x2 - x1, y2 - y1, 1e-6))
            lo_x, hi_x = -((x1 - 0.5) * s + 0.5), 1 - ((x2 - 0.5) * s + 0.5)
            lo_y, hi_y = -((y1 - 0.5) * s + 0.5), 1 - ((y2 - 0.5) * s + 0.5)
            tx = float(np.clip(tx, min(lo_x, hi_x), max(lo_x, hi_x)))
            ty = float(np.clip(ty, min(lo_y, hi_y), max(lo_y, hi_y)))
            target[1] = (target[1] - 0.5) * s + 0.5 + tx
            target[2] = (target[2] - 0.5) * s + 0.5 + ty
            target[3:5] *= s
        matrix = np.array([[s, 0, (0.5 - 0.5 * s + tx) * side], [0, s, (0.5 - 0.5 * s + ty) * side]], dtype=np.float32)
        out = cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if self.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
            if target[0] > 0:
                target[1] = 1 - target[1]
        if self.colour:
            out = brightness_contrast(out, rng, contrast=self.colour, brightness=self.colour * 64)
        return np.ascontiguousarray(out), target


class LocalizationDataset:
    """(preprocessed S x S image, its 6-number target), augmented for training."""

    takes_augmentation_seeds = True  # __getitem__((index, seed)): see cvtool.train.engine.EpochBatches

    def __init__(self, data: OneBoxImages, preprocess: Preprocess, jitter: Jitter | None = None):
        self.data, self.preprocess, self.jitter = data, preprocess, jitter

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item):
        index, seed = sample_index(item)
        image, target = self.data.pixels[index], self.data.targets[index]
        if self.jitter is not None:
            image, target = self.jitter(image, target, augmentation_rng(seed))
        return torch.from_numpy(self.preprocess(image)), torch.from_numpy(np.asarray(target, dtype=np.float32))


# -- scores -------------------------------------------------------------------------------------------------

def localization_scores(pc: np.ndarray, classes: np.ndarray, boxes: np.ndarray, targets: np.ndarray,
                        threshold: float = PC_THRESHOLD) -> dict:
    """The figures of predictions against targets (N x 6, boxes as (bx, by, bh, bw) fractions; `boxes` N x 4
    x1 y1 x2 y2 fractions): pc_accuracy (Pc >= threshold agrees with Pc*), then on the images with an object:
    class_accuracy, mean_iou, iou50 (share at IoU >= 0.5), and accuracy (the share of all images fully right: a
    negative with Pc below the threshold; a positive found, of the right class, at IoU >= 0.5)."""
    pc, classes, boxes, targets = (np.asarray(v) for v in (pc, classes, boxes, targets))
    truth = targets[:, 0] > 0
    found = pc >= threshold
    positives = int(truth.sum())
    iou = box_iou(boxes[truth], centre_to_corners(targets[truth, 1:5])) if positives else np.zeros(0)
    right_class = classes[truth] == targets[truth, 5].astype(np.int64)
    hits = found[truth] & right_class & (iou >= IOU_HIT)
    n = len(targets)
    return {
        "accuracy": float((hits.sum() + (~found[~truth]).sum()) / n) if n else 0.0,
        "pc_accuracy": float((found == truth).mean()) if n else 0.0,
        "class_accuracy": float(right_class.mean()) if positives else 0.0,
        "mean_iou": float(iou.mean()) if positives else 0.0,
        "iou50": float((iou >= IOU_HIT).mean()) if positives else 0.0,
        "images": n,
        "positives": positives,
        "negatives": n - positives,
    }


@dataclass
class _Seen:
    pc: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    targets: list = field(default_factory=list)


class LocalizationTask:
    name = "localize"

    def __init__(self, backbone: str, classes: list[str], preprocess: Preprocess, *, pretrained: bool,
                 progress: bool = False):
        self.backbone, self.classes, self.preprocess = backbone, classes, preprocess
        self.pretrained, self.progress = pretrained, progress

    def build_model(self) -> nn.Module:
        from cvtool.models.localizer import LocalizerNet

        return LocalizerNet(len(self.classes), self.backbone, pretrained=self.pretrained, progress=self.progress)

    def loss(self, outputs, targets):
        return localization_loss(outputs, targets)

    def start_metrics(self) -> _Seen:
        return _Seen()

    def update_metrics(self, state: _Seen, outputs, targets) -> None:
        decoded = decode(outputs.detach().float().cpu().numpy())
        state.pc.append(decoded["pc"])
        state.classes.append(decoded["class"])
        state.boxes.append(decoded["box"])
        state.targets.append(targets.cpu().numpy())

    def finish_metrics(self, state: _Seen) -> dict[str, float]:
        scores = localization_scores(np.concatenate(state.pc), np.concatenate(state.classes),
                                     np.concatenate(state.boxes), np.concatenate(state.targets))
        return {k: v for k, v in scores.items() if isinstance(v, float)}

    def checkpoint_fields(self) -> dict:
        return {"arch": "localizer", "task": "localize", "classes": list(self.classes),
                "preprocess": self.preprocess.to_dict()}


# -- plots --------------------------------------------------------------------------------------------------

def save_examples(images: list, targets: np.ndarray, decoded: dict, classes: list[str], path: Path,
                  limit: int = 12) -> str:
    """Validation images with the true box (green) and the predicted one (red, solid where Pc >= 0.5): up to
    three quarters of `limit` with an object, the rest without, evenly spread over the set."""
    plt = plots.pyplot()
    positive = np.flatnonzero(targets[:, 0] > 0)
    negative = np.flatnonzero(targets[:, 0] == 0)
    take_neg = min(len(negative), max(limit - len(positive), limit // 4))
    take_pos = min(len(positive), limit - take_neg)
    spread = lambda idx, k: idx[np.linspace(0, len(idx) - 1, k).round().astype(int)] if k else idx[:0]  # noqa: E731
    order = np.concatenate([spread(positive, take_pos), spread(negative, take_neg)]).astype(int)
    images = [images[i] for i in order]
    targets = targets[order]
    decoded = {key: np.asarray(decoded[key])[order] for key in ("pc", "box", "class")}
    n = len(order)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set(xticks=[], yticks=[])
        if k >= n:
            ax.axis("off")
            continue
        side = images[k].shape[0]
        ax.imshow(images[k])
        truth = targets[k]
        if truth[0] > 0:
            x1, y1, x2, y2 = centre_to_corners(truth[None, 1:5])[0] * side
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=2))
        pc = float(decoded["pc"][k])
        x1, y1, x2, y2 = decoded["box"][k] * side
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", lw=2,
                                   ls="-" if pc >= PC_THRESHOLD else ":"))
        label = classes[int(decoded["class"][k])] if pc >= PC_THRESHOLD else "none"
        wanted = classes[int(truth[5])] if truth[0] > 0 else "none"
        ax.set_title(f"{label} Pc {pc:.2f} (truth {wanted})", fontsize=8)
    return plots.save_figure(fig, path)


# -- the recipe ---------------------------------------------------------------------------------------------

def input_preprocess(backbone: str, img_size: int | None) -> Preprocess:
    """The backbone's normalisation, the whole image stretched to img_size (default: the backbone's crop, at most
    128: ImageNet's 224 costs 3x the CPU time for a one-box answer)."""
    from cvtool.models.heads import square_preprocess
    from cvtool.models.registry import get_entry

    entry = get_entry(backbone, "classify")
    entry.check_network()
    own = entry.preprocess().crop_size or 128
    return square_preprocess(entry, img_size or min(own, 128))


def check_input_size(backbone: str, preprocess: Preprocess) -> None:
    """Refuse, before any data is read, a size the backbone cannot take (LeNet-5 takes 32 x 32 only)."""
    from cvtool.errors import UsageError
    from cvtool.models.heads import BackboneHead

    size = int(preprocess.crop_size or 0)
    with torch.no_grad():
        try:
            BackboneHead(backbone, 7).eval()(torch.zeros(1, preprocess.channels, size, size))
        except (RuntimeError, ValueError) as exc:
            detail = (str(exc).strip().splitlines() or [""])[0]
            raise UsageError(f"--img-size {size}: {backbone} cannot take {size}x{size} images ({detail})") from None


def prepare_data(args: LocalizeTrainArgs, preprocess: Preprocess, seed: int, on_skip=None):
    side = int(preprocess.crop_size or 0)
    data = decode_images(one_box_images(args.data, args.multi), side, on_skip)
    if args.val:
        val = decode_images(one_box_images(args.val, args.multi), side, on_skip)
        if val.classes != data.classes:
            raise DataError(f"validation classes {val.classes[:5]} differ from the training classes "
                            f"{data.classes[:5]}", args.val)
        return data, val
    train_idx, val_idx = split(data, args.val_split, seed)
    return data.subset(train_idx), data.subset(val_idx)


def run_training(args: LocalizeTrainArgs, cfg, run_dir: Path, device: torch.device, *, resume: bool = False,
                 callbacks=None, on_skip=None, progress: bool = True) -> dict:
    """Train (or resume) a localiser into `run_dir`; return the summary also written to summary.json."""
    import time

    from cvtool.train.engine import Trainer

    start = time.perf_counter()
    cpu_start = time.process_time()
    preprocess = input_preprocess(args.arch, args.img_size)
    check_input_size(args.arch, preprocess)
    train_data, val_data = prepare_data(args, preprocess, cfg.seed, on_skip)
    classes = train_data.classes
    task = LocalizationTask(args.arch, classes, preprocess, pretrained=args.pretrained and not resume,
                            progress=progress)
    trainer = Trainer(task, LocalizationDataset(train_data, preprocess, Jitter(hflip=args.hflip)),
                      LocalizationDataset(val_data, preprocess), cfg, run_dir, device, callbacks=callbacks,
                      args=vars(args).copy(), extra_fields={"arch_kwargs": {"backbone": args.arch}}, ema=args.ema)
    if resume:
        trainer.resume(run_dir / "last.pt")
    state = trainer.fit()
    if not trainer.is_main:
        return trainer.share_summary(None)
    best = trainer.load_best_into(run_dir / "best.pt")
    model = trainer.scored_model.eval()
    raw = []
    with torch.inference_mode():
        for inputs, _ in trainer.val_loader:
            raw.append(model(inputs.to(device)).float().cpu().numpy())
    decoded = decode(np.concatenate(raw))
    val_scores = localization_scores(decoded["pc"], decoded["class"], decoded["box"], val_data.targets)
    written = [plots.save_curves(state.history, run_dir / "curves.png")] if state.history else []
    written.append(save_examples(val_data.pixels, val_data.targets, decoded, classes, run_dir / "examples.png"))
    summary = {
        "task": "localize",
        "arch": "localizer",
        "backbone": args.arch,
        "img_size": preprocess.crop_size,
        "classes": classes,
        "train_images": len(train_data),
        "train_negatives": int((train_data.targets[:, 0] == 0).sum()),
        "val_images": len(val_data),
        "val_negatives": int((val_data.targets[:, 0] == 0).sum()),
        "multi_box_images": train_data.multi_boxes,
        "skipped_files": len(train_data.skipped) + len(val_data.skipped),
        "epochs": state.epoch,
        "best_epoch": best,
        "val": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in val_scores.items()},
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "plots": written,
        "checkpoints": {"best": str(run_dir / "best.pt"), "last": str(run_dir / "last.pt")},
    }
    return trainer.finish(summary)


def resumed_arguments(run_dir: Path, epochs: int | None):
    from cvtool.train.engine import stored_run

    args, cfg = stored_run(run_dir, epochs)
    return LocalizeTrainArgs(**args), cfg
