"""Train and evaluate the YOLO-style detector on the raccoon set, through the CLI, CPU only.

    python bench/eval_detect.py [--epochs 80] [--img-size 320]

Needs ../shared/datasets/raccoon (163 photos, one class, Pascal VOC XML). A fixed validation split
of ~20% (seed 0) keeps each group of duplicate photographs on one side (see its PROVENANCE.md), so
no validation photo is also trained on. Figures: mAP@0.5 and mAP@0.5:0.95 by pycocotools on that
split, the wall time, and the training budget. From scratch: no pretrained backbone here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "raccoon"
DUPLICATES = [{52, 74}, {65, 98}, {11, 116}, {83, 120}, {45, 21}]  # from the data set's PROVENANCE.md


def split(stems: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """About `fraction` of the images for validation, whole duplicate groups at a time."""
    def group_of(stem: str) -> frozenset:
        number = int(stem.rsplit("-", 1)[1])
        return next((frozenset(g) for g in DUPLICATES if number in g), frozenset({number}))

    groups: dict[frozenset, list[str]] = {}
    for stem in stems:
        groups.setdefault(group_of(stem), []).append(stem)
    ordered = [groups[key] for key in sorted(groups, key=sorted)]
    val: list[str] = []
    for i in np.random.default_rng(seed).permutation(len(ordered)):
        if len(val) >= fraction * len(stems):
            break
        val += ordered[i]
    return sorted(set(stems) - set(val)), sorted(val)


def link_subset(stems: list[str], target: Path) -> Path:
    (target / "images").mkdir(parents=True)
    (target / "annotations").mkdir()
    for stem in stems:
        (target / "images" / f"{stem}.jpg").symlink_to(DATA / "images" / f"{stem}.jpg")
        (target / "annotations" / f"{stem}.xml").symlink_to(DATA / "annotations" / f"{stem}.xml")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is not here (the shared data sets sit beside the project)")
    stems = sorted(p.stem for p in (DATA / "annotations").glob("*.xml"))
    train, val = split(stems, 0.2, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        command = ["train", "detect", str(link_subset(train, tmp / "train")), "--val", str(link_subset(val, tmp / "val")),
                   "--epochs", str(args.epochs), "--img-size", str(args.img_size), "--width", str(args.width),
                   "--batch-size", "16", "--lr", "5e-3", "--seed", "0"]
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "cvtool", "-q", *command, "--out", str(tmp / "run")],
                                capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"training failed: {result.stderr.strip()}")
        summary = json.loads(result.stdout)
    write_results("eval_detect_raccoon", {
        "data": f"raccoon, {len(train)} train / {len(val)} validation images (duplicate groups kept together, seed 0)",
        "arch": f"yolo (ours), width {args.width}, {args.img_size} px, 3 k-means anchors {summary['anchors']}, from scratch",
        "epochs": args.epochs, "best_epoch": summary["best_epoch"], "device": "cpu",
        "val_map50": round(summary["val"]["map50"], 4), "val_map50_95": round(summary["val"]["map50_95"], 4),
        "target_map50": 0.5, "train_wall_s": round(wall, 1), "train_command": "cvtool " + " ".join(command),
    })


if __name__ == "__main__":
    main()
