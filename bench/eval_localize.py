"""Classification with localisation (`cvtool train localize`) on real photos, CPU only, from scratch.

    python bench/eval_localize.py [--sets raccoon,pets] [--arch resnet18] [--epochs 30] [--img-size 128]
                                  [--detector-epochs 60] [--pets-classes species|breed]

Two sets, each split once with a fixed seed (0), a fifth held out:
- raccoon: ../shared/datasets/raccoon's photos with exactly one raccoon (149 of 163; duplicate photographs kept
  on one side, as bench/eval_detect.py does) plus Pc = 0 photos with no raccoon;
- pets: ../shared/datasets/pets_localization (296 Oxford-IIIT Pet photos, one head box each; classes the
  species, cat/dog, or --pets-classes breed), plus Pc = 0 photos with no cat or dog.
The Pc = 0 photos: ../shared/datasets/photos, membrane/image, style/content and style/style, and scikit-image's
bundled photos (for pets without chelsea, the cat, and photos/dog.jpg); the same negatives split by seed 0.
Everything is written as Pascal VOC (images/ + annotations/, an XML without objects for a negative) in a
temporary folder, the layout `cvtool train localize` reads; the pets' CSV rows become VOC boxes here.

Figures per set, on the held-out photos (and the floor: always answering the training photos' mean box, Pc = 1
and the majority class, `mean_box_baseline`; `--baseline-only` computes just that), through `cvtool val localize` (the API objects `cvtool localize` uses):
Pc accuracy, class accuracy, mean IoU and the share of boxes at IoU >= 0.5, and the training's CPU time (user +
system of the training process) and wall time with the load average. The reference on raccoon: our YOLO
(`cvtool train detect`, from scratch, same training photos, --detector-epochs) with its top-scored box per
held-out photo: the same IoU figures, and Pc accuracy with "found" = top score >= 0.25 (detect's default conf).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import timed  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
RACCOON, PETS = SHARED / "raccoon", SHARED / "pets_localization"
DUPLICATES = [{52, 74}, {65, 98}, {11, 116}, {83, 120}, {45, 21}]  # raccoon's PROVENANCE.md
# scikit-image's bundled photos (files in skimage/data), none of a raccoon; chelsea is a cat
SKIMAGE = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
           "gravel.png", "hubble_deep_field.jpg", "moon.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
           "motorcycle_left.png", "clock_motion.png", "ihc.png", "microaneurysms.png", "logo.png", "color.png")
NOT_FOR_PETS = {"chelsea.png", "dog.jpg"}  # a cat, a dog


def negatives(for_pets: bool) -> list[Path]:
    import skimage

    found = [*sorted((SHARED / "photos").glob("*.jpg")), *sorted((SHARED / "membrane" / "image").glob("*.png")),
             *sorted((SHARED / "style" / "content").glob("*.jpg")), *sorted((SHARED / "style" / "style").glob("*.jpg")),
             *(Path(skimage.__file__).parent / "data" / name for name in SKIMAGE)]
    return [p for p in found if p.is_file() and not (for_pets and p.name in NOT_FOR_PETS)]


def split_negatives(paths: list[Path], fraction: float = 0.2, seed: int = 0) -> tuple[list[Path], list[Path]]:
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = max(1, round(fraction * len(paths)))
    return [paths[i] for i in sorted(order[n_val:])], [paths[i] for i in sorted(order[:n_val])]


def voc(name: str, objects: list[tuple[str, float, float, float, float]]) -> str:
    body = "".join(f"<object><name>{c}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                   f"<ymax>{y2}</ymax></bndbox></object>" for c, x1, y1, x2, y2 in objects)
    return f"<annotation><filename>{name}</filename>{body}</annotation>\n"


def write_set(target: Path, positives: list[tuple[Path, str, list]], negs: list[Path]) -> Path:
    """VOC layout: symlinked images; positives' XML with their box, negatives' XML with none."""
    (target / "images").mkdir(parents=True)
    (target / "annotations").mkdir()
    for path, stem, objects in positives:
        (target / "images" / f"{stem}{path.suffix}").symlink_to(path)
        (target / "annotations" / f"{stem}.xml").write_text(voc(f"{stem}{path.suffix}", objects))
    for k, path in enumerate(negs):
        stem = f"neg{k:03d}_{path.stem}"
        (target / "images" / f"{stem}{path.suffix}").symlink_to(path)
        (target / "annotations" / f"{stem}.xml").write_text(voc(f"{stem}{path.suffix}", []))
    return target


def raccoon_split(fraction: float = 0.2, seed: int = 0):
    """Photos with exactly one raccoon, split with whole duplicate groups on one side (bench/eval_detect.py's rule)."""
    import xml.etree.ElementTree as ET

    one = []
    for xml in sorted((RACCOON / "annotations").glob("*.xml")):
        objects = ET.parse(xml).getroot().findall("object")
        if len(objects) != 1:
            continue
        box = objects[0].find("bndbox")
        coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        one.append((RACCOON / "images" / f"{xml.stem}.jpg", xml.stem, [("raccoon", *coords)]))

    def group(stem: str) -> frozenset:
        number = int(stem.rsplit("-", 1)[1])
        return next((frozenset(g) for g in DUPLICATES if number in g), frozenset({number}))

    groups: dict[frozenset, list] = {}
    for item in one:
        groups.setdefault(group(item[1]), []).append(item)
    ordered = [groups[key] for key in sorted(groups, key=sorted)]
    val: list = []
    for i in np.random.default_rng(seed).permutation(len(ordered)):
        if len(val) >= fraction * len(one):
            break
        val += ordered[i]
    val_stems = {v[1] for v in val}
    return [o for o in one if o[1] not in val_stems], sorted(val, key=lambda v: v[1])


def pets_split(classes: str, fraction: float = 0.2, seed: int = 0):
    """Every pet photo with its head box; a fifth of each breed held out."""
    items: dict[str, list] = {}
    for label in sorted((PETS / "labels").glob("*.csv")):
        with label.open(newline="") as handle:
            row = next(csv.DictReader(handle))
        name = row[classes]
        coords = [float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
        items.setdefault(row["breed"], []).append((PETS / "images" / f"{label.stem}.jpg", label.stem,
                                                   [(name, *coords)]))
    rng = np.random.default_rng(seed)
    train, val = [], []
    for breed in sorted(items):
        group = items[breed]
        order = rng.permutation(len(group))
        n_val = max(1, round(fraction * len(group)))
        val += [group[i] for i in sorted(order[:n_val])]
        train += [group[i] for i in sorted(order[n_val:])]
    return train, val


def cvtool(args: list[str], threads: int) -> tuple[dict, float, float, list[float]]:
    """Run `cvtool ARGS` (its JSON on stdout): (the JSON, wall s, CPU s of the process, load before/after)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    load = [os.getloadavg()[0]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with timed() as clock:
        result = subprocess.run([sys.executable, "-m", "cvtool", "-q", *args], capture_output=True, text=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load.append(os.getloadavg()[0])
    if result.returncode != 0:
        sys.exit(f"cvtool {' '.join(args)} failed: {result.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(result.stdout), clock.seconds, cpu, [round(v, 2) for v in load]


def detector_reference(weights: Path, val_dir: Path, conf: float = 0.25) -> dict:
    """Our YOLO's top-scored box per held-out photo, scored as a localiser's answer (localization_scores)."""
    from cvtool.api import Detector
    from cvtool.io.inputs import InputItem
    from cvtool.train.localization import decode_images, localization_scores, one_box_images

    truth = decode_images(one_box_images(val_dir), 32)
    detector = Detector(weights=weights, conf=0.001, device="cpu", backend="torch")
    pc, classes, boxes = [], [], []
    for result in detector.run([InputItem(str(p)) for p in truth.paths], batch_size=8):
        h, w = result.result["size"]
        best = max(result.detections, key=lambda d: d["score"], default=None)
        pc.append(best["score"] if best else 0.0)
        classes.append(best["index"] if best else 0)
        boxes.append(np.array(best["box"]) / [w, h, w, h] if best else np.zeros(4))
    scores = localization_scores(np.array(pc), np.array(classes), np.stack(boxes), truth.targets, threshold=conf)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def mean_box_baseline(train_dir: Path, val_dir: Path) -> dict:
    """What always answering the training photos' mean box (and their majority class, Pc = 1) scores on the held-out
    photos: the floor a localiser must clear (the pets' heads sit near the middle of their photos)."""
    from cvtool.models.localizer import centre_to_corners
    from cvtool.train.localization import decode_images, localization_scores, one_box_images

    train, val = (decode_images(one_box_images(d), 32) for d in (train_dir, val_dir))
    positive = train.targets[:, 0] > 0
    mean = train.targets[positive, 1:5].mean(0)
    majority = int(np.bincount(train.targets[positive, 5].astype(np.int64)).argmax())
    n = len(val)
    scores = localization_scores(np.ones(n), np.full(n, majority), np.repeat(centre_to_corners(mean[None]), n, 0),
                                 val.targets)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="raccoon,pets")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", default="1e-3")
    parser.add_argument("--detector-epochs", type=int, default=60, help="0: no detector reference.")
    parser.add_argument("--detector-img-size", type=int, default=256)
    parser.add_argument("--pets-classes", choices=("species", "breed"), default="species")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="eval_localize")
    parser.add_argument("--baseline-only", action="store_true",
                        help="Only the mean-box baseline of each set (no training): seconds.")
    args = parser.parse_args()
    for folder in (RACCOON, PETS, SHARED / "photos"):
        if not folder.is_dir():
            sys.exit(f"skipped: {folder} is not here (the shared data sets sit beside the project)")
    figures: dict = {"arch": f"localizer on {args.arch}, from scratch, {args.img_size} px (whole image stretched)",
                     "epochs": args.epochs, "threads": args.threads, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.sets.split(","):
            for_pets = name == "pets"
            train, val = pets_split(args.pets_classes) if for_pets else raccoon_split()
            neg_train, neg_val = split_negatives(negatives(for_pets))
            train_dir = write_set(tmp / name / "train", train, neg_train)
            val_dir = write_set(tmp / name / "val", val, neg_val)
            baseline = mean_box_baseline(train_dir, val_dir)
            if args.baseline_only:
                figures["sets"][name] = {"mean_box_baseline": baseline}
                continue
            run = tmp / name / "run"
            command = ["train", "localize", str(train_dir), "--val", str(val_dir), "--arch", args.arch,
                       "--epochs", str(args.epochs), "--img-size", str(args.img_size), "--batch-size",
                       str(args.batch_size), "--lr", args.lr, "--seed", "0", "--out", str(run)]
            summary, wall, cpu, load = cvtool(command, args.threads)
            held_out, _, _, _ = cvtool(["val", "localize", str(val_dir), "--weights", str(run / "best.pt")],
                                       args.threads)
            figure = {
                "data": (f"{name}: {len(train)} + {len(neg_train)} negatives train, {len(val)} + {len(neg_val)} "
                         "negatives held out (seed 0)" + (f"; classes {args.pets_classes}" if for_pets else "")),
                "classes": summary["classes"], "best_epoch": summary["best_epoch"],
                "held_out": {k: held_out[k] for k in ("pc_accuracy", "class_accuracy", "mean_iou", "iou50",
                                                      "accuracy", "images", "positives", "negatives")},
                "mean_box_baseline": baseline,
                "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1), "load_1min_before_after": load,
                "train_command": "cvtool " + " ".join(command),
            }
            if name == "raccoon" and args.detector_epochs:
                det_run = tmp / name / "detector"
                det_command = ["train", "detect", str(train_dir), "--val", str(val_dir), "--epochs",
                               str(args.detector_epochs), "--img-size", str(args.detector_img_size), "--batch-size",
                               "8", "--seed", "0", "--out", str(det_run)]
                _, det_wall, det_cpu, det_load = cvtool(det_command, args.threads)
                figure["reference_yolo_top_box"] = {
                    "held_out": detector_reference(det_run / "best.pt", val_dir),
                    "train_wall_s": round(det_wall, 1), "train_cpu_s": round(det_cpu, 1),
                    "load_1min_before_after": det_load, "train_command": "cvtool " + " ".join(det_command),
                }
            figures["sets"][name] = figure
            write_results(args.name, figures, echo=False)  # what is done so far survives an interruption
    write_results(args.name, figures)


if __name__ == "__main__":
    main()
