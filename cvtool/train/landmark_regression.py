"""`cvtool train landmarks` (cvtool.train.landmarks): N (x, y) points regressed from a square crop, on the one
training engine.

Data: a folder of images with iBUG `.pts` files (beside each image, or in a `labels/` folder beside `images/`;
with or without the `version: 1 / n_points: N / { ... }` header), a CSV (`path,x0,y0,x1,y1,...`, header optional)
or a JSON list (`[{"path": ..., "points": [[x, y], ...]}]`, or `{"images": [...]}`) of points in pixels. Each image
is decoded once into a patch around its face (1.5 x the crop, at 1.5 x the network's side), so augmentation
(rotation, box shift and scale, flips that swap left/right pairs, brightness/contrast) moves points and pixels
with one affine map per sample (cvtool.ops.landmarks). The loss is L1 on the points as fractions of the crop;
validation scores the normalised mean error in image pixels (inter-ocular for iBUG 68 / dlib 5 points, the box
diagonal otherwise) and the failure rates at 0.08 and 0.10; best.pt is the lowest NME.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvtool.errors import InputError, UsageError
from cvtool.io.image import IMAGE_SUFFIXES, read_image
from cvtool.ops import landmarks as geo
from cvtool.tasks.landmarks import DEFAULT_MIN_FACE
from cvtool.train.datasets import DataError, brightness_contrast, check_val_split
from cvtool.train.recipes import LandmarksTrainArgs

PATCH = 1.5  # the decoded patch: this times the crop's side (room for rotations and shifts)
OUTSIDE_SLACK = 0.25  # a point this far (x the points' box side) outside its image is a labelling error
LABEL_DIRS = ("labels", "annotations", "landmarks")
IMAGE_DIRS = ("images", "image", "imgs")
REGIONS = ("box", "image")
FIT_MIN_IOU = 0.3  # a detection counts as the annotated face at this IoU with the points' (square) box
DEFAULT_FIT_MIN_FACE = float(DEFAULT_MIN_FACE)  # px: the detector's smallest face, as `cvtool landmarks` has it


# -- reading ---------------------------------------------------------------------------------------------------

def read_pts(path: str | Path) -> np.ndarray:
    """An iBUG .pts file -> N x 2 float64, with or without the `version / n_points / { }` header."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read ({getattr(exc, 'strerror', None) or exc.__class__.__name__})", path) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    declared = None
    if lines and lines[0].lower().startswith("version"):
        body = lines[1:]
        if not body or not body[0].lower().startswith("n_points"):
            raise DataError("malformed .pts: 'version' is not followed by 'n_points: N'", path)
        try:
            declared = int(body[0].split(":", 1)[1])
        except (IndexError, ValueError):
            raise DataError(f"malformed .pts: {body[0]!r} is not 'n_points: N'", path) from None
        body = body[1:]
        if not body or body[0] != "{" or "}" not in body:
            raise DataError("malformed .pts: the points are not between '{' and '}'", path)
        lines = body[1:body.index("}")]
    points = []
    for number, line in enumerate(lines, 1):
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise DataError(f"malformed .pts: point {number} is {line[:40]!r}, not 'x y'", path) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataError(f"malformed .pts: point {number} is not finite", path)
        points.append((x, y))
    if not points:
        raise DataError("no points in this .pts file", path)
    if declared is not None and declared != len(points):
        raise DataError(f"n_points says {declared} but the file holds {len(points)}", path)
    return np.array(points, np.float64)


@dataclass
class LandmarkData:
    sources: list[str]
    points: list[np.ndarray]  # N x 2 pixels, one set per image
    origin: str
    labels: list[str] = field(default_factory=list)  # where each image's points came from (for error lines)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, indices) -> "LandmarkData":
        return LandmarkData([self.sources[i] for i in indices], [self.points[i] for i in indices], self.origin,
                            [self.labels[i] for i in indices])


def _folder_pairs(root: Path) -> tuple[list[Path], list[Path | None]]:
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root)
    label_dirs = [image_dir] + [root / d for d in LABEL_DIRS if (root / d).is_dir()]
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    labels = [next((d / f"{p.stem}.pts" for d in label_dirs if (d / f"{p.stem}.pts").is_file()), None)
              for p in images]
    return images, labels


def _csv_rows(path: Path) -> list[tuple[str, list[float], str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the CSV ({exc})", path) from None
    if rows and len(rows[0]) > 1:
        try:
            float(rows[0][1])
        except ValueError:
            rows = rows[1:]  # a header
    out = []
    for number, row in enumerate(rows, 1):
        cells = [c.strip() for c in row if c.strip() != ""]
        if len(cells) < 3 or (len(cells) - 1) % 2:
            raise DataError(f"row {number}: expected path,x0,y0,x1,y1,... (an even number of coordinates), "
                            f"got {len(cells) - 1}", path)
        try:
            values = [float(c) for c in cells[1:]]
        except ValueError:
            raise DataError(f"row {number}: a coordinate is not a number", path) from None
        out.append((cells[0], values, f"{path}:{number}"))
    return out


def _json_rows(path: Path) -> list[tuple[str, list[float], str]]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the JSON ({exc.__class__.__name__}: {exc})", path) from None
    items = content.get("images") if isinstance(content, dict) else content
    if not isinstance(items, list):
        raise DataError('expected a list of {"path", "points"} (or {"images": [...]})', path)
    out = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or "path" not in item or "points" not in item:
            raise DataError(f'entry {number}: expected {{"path": ..., "points": [[x, y], ...]}}', path)
        try:
            pts = np.asarray(item["points"], np.float64)
            if pts.ndim != 2 or pts.shape[1] != 2 or not len(pts):
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"entry {number}: points must be a list of [x, y] pairs", path) from None
        out.append((str(item["path"]), pts.reshape(-1).tolist(), f"{path}:{number}"))
    return out


def open_landmark_data(spec: str | Path, on_skip=None) -> LandmarkData:
    """Any of the layouts above -> paths and points, every point set checked: a malformed file, a point count
    that differs from the first image's, or no labelled image at all is a DataError naming the file."""
    path = Path(spec)
    sources, points, labels = [], [], []
    if path.is_dir():
        images, pts_files = _folder_pairs(path)
        if not images:
            raise DataError("no images in this folder (expected images with .pts files beside them or in labels/)",
                            path)
        for image, pts in zip(images, pts_files):
            if pts is None:
                if on_skip is not None:
                    on_skip(f"{image}: no .pts file for it (left out)")
                continue
            sources.append(str(image))
            points.append(read_pts(pts))
            labels.append(str(pts))
        if not sources:
            raise DataError("no image has a .pts file (beside it, or in labels/ with the same name)", path)
    elif path.is_file() and path.suffix.lower() in (".csv", ".json"):
        rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _json_rows(path)
        if not rows:
            raise DataError("no rows", path)
        for name, values, where in rows:
            image = Path(name) if Path(name).is_absolute() else path.parent / name
            sources.append(str(image))
            points.append(np.asarray(values, np.float64).reshape(-1, 2))
            labels.append(where)
    elif not path.exists():
        raise DataError("no such file or folder", path)
    else:
        raise DataError("expected a folder of images with .pts files, or a .csv / .json of points", path)
    first = len(points[0])
    for pts, where in zip(points, labels):
        if len(pts) != first:
            raise DataError(f"{len(pts)} points, but {labels[0]} has {first} (every image needs the same points)",
                            where)
    return LandmarkData(sources, points, str(path), labels)


def check_points_inside(points: np.ndarray, height: int, width: int, where: str) -> None:
    """A point further outside its image than OUTSIDE_SLACK x the points' box is a labelling error."""
    x1, y1, x2, y2 = geo.points_box(points)
    slack = OUTSIDE_SLACK * max(x2 - x1, y2 - y1, 1.0)
    outside = ((points[:, 0] < -slack) | (points[:, 0] > width - 1 + slack)
               | (points[:, 1] < -slack) | (points[:, 1] > height - 1 + slack))
    if outside.any():
        i = int(np.argmax(outside))
        raise DataError(f"point {i} ({points[i, 0]:.1f}, {points[i, 1]:.1f}) is outside the {width}x{height} image",
                        where)


# -- decoding and augmentation ---------------------------------------------------------------------------------

@dataclass
class Patches:
    """Each image's patch (uint8) around its crop, the points in patch pixels, the crop's square in the patch
    (cx, cy, side), and per image the pixels of the original per patch pixel along x and y (for errors in pixels)."""

    images: list[np.ndarray]
    points: list[np.ndarray]
    squares: list[tuple[float, float, float]]
    pixel_scale: list[tuple[float, float]]
    sources: list[str]
    skipped: list[str]


def base_matrix(region: str, points: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """The image -> patch map of one training image: box, a square 1.5 x the crop; image, the image stretched."""
    if region == "box":
        cx, cy, side = geo.crop_square(geo.points_box(points))
        return geo.crop_matrix(cx, cy, side * PATCH, round(size * PATCH))
    return image_matrix(height, width, size)


def image_matrix(height: int, width: int, size: int) -> np.ndarray:
    """The whole image stretched onto a `size` x `size` square (corner pixel centres onto corner pixel centres)."""
    return np.array([[(size - 1) / max(1, width - 1), 0, 0], [0, (size - 1) / max(1, height - 1), 0]], np.float64)


def decode_patches(data: LandmarkData, region: str, size: int, on_skip=None) -> Patches:
    images, points, squares, scales, sources, skipped = [], [], [], [], [], list(data.skipped)
    for source, pts, where in zip(data.sources, data.points, data.labels or data.sources):
        try:
            rgb = read_image(source)
        except InputError as exc:
            skipped.append(str(exc))
            if on_skip is not None:
                on_skip(str(exc))
            continue
        h, w = rgb.shape[:2]
        check_points_inside(pts, h, w, where)
        matrix = base_matrix(region, pts, h, w, size)
        side = round(size * PATCH) if region == "box" else size
        images.append(geo.warp(rgb, matrix, side))
        points.append(geo.apply(matrix, pts))
        centre = (side - 1) / 2
        squares.append((centre, centre, side / PATCH if region == "box" else side))
        scales.append((1 / matrix[0, 0], 1 / matrix[1, 1]))
        sources.append(source)
    if not images:
        raise DataError("no image could be read", data.origin)
    return Patches(images, points, squares, scales, sources, skipped)


class LandmarkDataset(torch.utils.data.Dataset):
    """(crop, target): the crop normalised as the backbone's preprocessing says, the target 2N point fractions of
    the crop followed by the original pixels per crop fraction along x and y (what the error is measured in)."""

    takes_augmentation_seeds = True

    def __init__(self, patches: Patches, preprocess, size: int, layout: geo.Layout, *, augment: bool = False,
                 hflip: bool = False, rotate: float = 0.0, jitter: float = 0.0):
        self.patches, self.preprocess, self.size, self.layout = patches, preprocess, size, layout
        self.augment, self.hflip, self.rotate, self.jitter = augment, hflip and bool(layout.pairs), rotate, jitter

    def __len__(self) -> int:
        return len(self.patches.images)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, 0)
        cx, cy, side = self.patches.squares[index]
        angle, flip = 0.0, False
        if self.augment:
            rng = np.random.default_rng(seed)
            cx += rng.uniform(-self.jitter, self.jitter) * side
            cy += rng.uniform(-self.jitter, self.jitter) * side
            side *= 1 + rng.uniform(-self.jitter, self.jitter)
            angle = rng.uniform(-self.rotate, self.rotate)
            flip = self.hflip and rng.random() < 0.5
        matrix = geo.crop_matrix(cx, cy, side, self.size, angle=angle, flip=flip)
        crop = geo.warp(self.patches.images[index], matrix, self.size)
        points = geo.apply(matrix, self.patches.points[index])
        if flip:
            points = points[list(self.layout.flip)]
        if self.augment:
            crop = brightness_contrast(crop, rng, contrast=0.3, brightness=25)
        target = geo.to_crop_fractions(points, self.size).reshape(-1)
        per_fraction = (self.size - 1) * side / self.size  # patch pixels per crop fraction (unrotated: validation)
        sx, sy = self.patches.pixel_scale[index]
        extra = [per_fraction * sx, per_fraction * sy]
        return (torch.from_numpy(self.preprocess(crop)),
                torch.tensor(np.concatenate([target, extra]), dtype=torch.float32))


# -- the task --------------------------------------------------------------------------------------------------

def landmark_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L1 on the point fractions (the first 2N columns of the targets)."""
    n = outputs.shape[1]
    return nn.functional.l1_loss(outputs.float(), targets[:, :n])


def errors_of(outputs: torch.Tensor, targets: torch.Tensor, layout: geo.Layout) -> np.ndarray:
    """Per sample: the NME in the original image's pixels."""
    n = outputs.shape[1]
    scale = targets[:, n:n + 2].double().cpu().numpy()[:, None, :]
    predicted = outputs.double().cpu().numpy().reshape(len(outputs), -1, 2) * scale
    truth = targets[:, :n].double().cpu().numpy().reshape(len(outputs), -1, 2) * scale
    return geo.nme(predicted, truth, layout)


class LandmarkTask:
    name = "landmarks"

    def __init__(self, build, layout: geo.Layout, preprocess, fields: dict):
        self._build, self.layout, self.preprocess, self.fields = build, layout, preprocess, fields

    def build_model(self) -> nn.Module:
        return self._build()

    def loss(self, outputs, targets):
        return landmark_loss(outputs, targets)

    def start_metrics(self) -> list:
        return []

    def update_metrics(self, state: list, outputs, targets) -> None:
        state.append(errors_of(outputs, targets, self.layout))

    def finish_metrics(self, state: list) -> dict[str, float]:
        errors = np.concatenate(state) if state else np.zeros(0)
        summary = geo.nme_summary(errors, self.layout)
        out = {"nme": summary["nme"] or 0.0, "neg_nme": -(summary["nme"] or 0.0)}
        out.update({k: v for k, v in summary.items() if k.startswith("failure_")})
        return out

    def checkpoint_fields(self) -> dict:
        return {"arch": "landmark_net", "task": "landmarks", "classes": point_names(self.layout),
                "preprocess": self.preprocess.to_dict(), **self.fields}


def point_names(layout: geo.Layout) -> list[str]:
    from cvtool.ops.face_align import FACE_5_NAMES, FACE_68_NAMES

    return list({"ibug68": FACE_68_NAMES, "dlib5": FACE_5_NAMES}.get(layout.name)
                or [f"p{i}" for i in range(layout.num_points)])


def parse_pairs(text: str | None) -> list[tuple[int, int]] | None:
    """`0:16,1:15` -> [(0, 16), (1, 15)]."""
    if not text:
        return None
    pairs = []
    for part in text.split(","):
        a, sep, b = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append((int(a), int(b)))
        except ValueError:
            raise UsageError(f"--flip-pairs {text!r}: expected A:B pairs of point indices, comma-separated") from None
    return pairs


def default_size(arch: str) -> int:
    from cvtool.models.registry import get_entry

    crop = get_entry(arch, "classify").preprocess().crop_size
    return 32 if crop == 32 else 128  # LeNet-5 is defined for 32 x 32; others take a 128 px crop well


def check_args(args: LandmarksTrainArgs) -> None:
    """What can be refused before any data is read."""
    from cvtool.models.registry import get_entry

    if args.region not in REGIONS:
        raise UsageError(f"--region {args.region!r}: choose box or image")
    if not args.val:
        check_val_split(args.val_split)
    get_entry(args.arch, "classify").check_network()
    parse_pairs(args.flip_pairs)


# -- fitting the face detector's boxes ---------------------------------------------------------------------------

def fit_detector(data: LandmarkData, faces: int, min_face: float = DEFAULT_FIT_MIN_FACE):
    """Run dlib's CNN face detector on up to `faces` training images and measure its boxes against the points'
    square boxes (cvtool.ops.landmarks.fit_boxes); None when no face matched."""
    from cvtool.models.face_detectors import FaceDetectorOptions, make_face_detector
    from cvtool.models.registry import get_entry

    detector = make_face_detector(get_entry("mmod", "face-detect"), FaceDetectorOptions(min_face=min_face))
    detected, truth = [], []
    for source, pts in list(zip(data.sources, data.points))[:faces]:
        try:
            rgb = read_image(source)
        except InputError:
            continue
        box = matched_face(detector.detect([rgb])[0], pts)
        if box is not None:
            detected.append(box)
            truth.append(geo.points_box(pts))
    return geo.fit_boxes(detected, truth, "mmod", min_face)


def matched_face(found, points: np.ndarray):
    """The detection (l, t, r, b inclusive, score) that is the annotated face: the best IoU with the points' square
    box, at least FIT_MIN_IOU; None when none is. Returned as x1, y1, x2, y2 with exclusive right/bottom edges."""
    cx, cy, side = geo.crop_square(geo.points_box(points), 1.0)
    square = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    best, best_iou = None, FIT_MIN_IOU
    for f in found:
        box = (float(f[0]), float(f[1]), float(f[2]) + 1, float(f[3]) + 1)
        iou = geo.box_iou(box, square)
        if iou >= best_iou:
            best, best_iou = box, iou
    return best


# -- training ----------------------------------------------------------------------------------------------------

def split(data: LandmarkData, fraction: float, seed: int) -> tuple[LandmarkData, LandmarkData]:
    if len(data) < 2:
        raise DataError(f"{len(data)} labelled image(s): holding out a validation image needs at least 2 (or --val)",
                        data.origin)
    order = np.random.default_rng(seed).permutation(len(data))
    n_val = min(len(data) - 1, max(1, round(len(data) * fraction)))
    return data.subset(sorted(order[n_val:].tolist())), data.subset(sorted(order[:n_val].tolist()))


def run_training(args: LandmarksTrainArgs, cfg, run_dir: Path, device: torch.device, *, resume: bool = False,
                 callbacks=None, on_skip=None, on_warning=None, progress: bool = True) -> dict:
    import time

    from cvtool.models.checkpoint import load_weights_file
    from cvtool.models.landmark_net import (BOX_FIT_FIELD, LAYOUT_FIELD, REGION_FIELD, LandmarkNet,
                                            landmark_preprocess)
    from cvtool.train import plots
    from cvtool.train.engine import Trainer

    start = time.perf_counter()
    check_args(args)
    size = args.img_size or default_size(args.arch)
    preprocess = landmark_preprocess(args.arch, size)
    data = open_landmark_data(args.data, on_skip)
    if args.val:
        train_data, val_data = data, open_landmark_data(args.val, on_skip)
        if len(val_data.points[0]) != len(data.points[0]):
            raise DataError(f"{len(val_data.points[0])} points per image, but the training data has "
                            f"{len(data.points[0])}", args.val)
    else:
        train_data, val_data = split(data, args.val_split, cfg.seed)
    num_points = len(train_data.points[0])
    try:
        layout = geo.layout_for(num_points, parse_pairs(args.flip_pairs))
    except ValueError as exc:
        raise UsageError(f"--flip-pairs: {exc}") from None
    warnings: list[str] = []
    if args.hflip and not layout.pairs:
        warnings.append(f"{num_points} points with no declared left/right pairs: trained without flips "
                        "(give --flip-pairs A:B,... to flip)")
    train_patches = decode_patches(train_data, args.region, size, on_skip)
    val_patches = decode_patches(val_data, args.region, size, on_skip)

    box_fit = None
    if args.region == "box" and args.fit_faces:
        if resume:
            box_fit = load_weights_file(run_dir / "last.pt").meta.get(BOX_FIT_FIELD)
        else:
            fitted = fit_detector(train_data, args.fit_faces)
            box_fit = fitted.to_dict() if fitted is not None else None
            if fitted is None:
                warnings.append(f"the face detector found none of the {min(args.fit_faces, len(train_data))} "
                                "annotated faces it was run on: `cvtool landmarks` will need --no-detect")
    for message in warnings:
        if on_warning is not None:
            on_warning(message)

    def build() -> nn.Module:
        return LandmarkNet(backbone=args.arch, num_points=num_points, pretrained=args.pretrained, progress=progress)

    fields = {LAYOUT_FIELD: layout.to_dict(), REGION_FIELD: args.region, BOX_FIT_FIELD: box_fit}
    task = LandmarkTask(build, layout, preprocess, fields)
    trainer = Trainer(
        task,
        LandmarkDataset(train_patches, preprocess, size, layout, augment=True, hflip=args.hflip, rotate=args.rotate,
                        jitter=args.jitter),
        LandmarkDataset(val_patches, preprocess, size, layout),
        cfg, run_dir, device, callbacks=callbacks, args=vars(args).copy(),
        extra_fields={"arch_kwargs": {"backbone": args.arch, "num_points": num_points}}, ema=args.ema,
    )
    if resume:
        trainer.resume(run_dir / "last.pt")
    state = trainer.fit()
    if not trainer.is_main:
        return trainer.share_summary(None)
    best = trainer.load_best_into(run_dir / "best.pt")
    val_metrics = trainer.evaluate(trainer.val_loader)
    curves = [plots.save_curves(state.history, run_dir / "curves.png")] if state.history else []
    train_seconds = sum(row.get("train_seconds", 0.0) for row in state.history)
    summary = {
        "task": "landmarks", "arch": "landmark_net", "backbone": args.arch, "points": num_points,
        "layout": layout.name, "normaliser": layout.normaliser, "region": args.region, "img_size": size,
        "train_images": len(train_patches.images), "val_images": len(val_patches.images),
        "skipped_files": len(train_patches.skipped) + len(val_patches.skipped),
        "epochs": state.epoch, "best_epoch": best,
        "val": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in val_metrics.items() if k != "neg_nme"},
        "box_fit": box_fit, "warnings": warnings, "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2), "plots": curves,
        "checkpoints": {"best": str(run_dir / "best.pt"), "last": str(run_dir / "last.pt")},
    }
    return trainer.finish(summary)


def resumed_arguments(run_dir: Path, epochs: int | None):
    from cvtool.train.engine import stored_run

    args, cfg = stored_run(run_dir, epochs)
    return LandmarksTrainArgs(**args), cfg
