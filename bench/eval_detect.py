"""Train and evaluate the YOLO-style detector on the raccoon set, through the CLI, CPU only.

    python bench/eval_detect.py [--epochs 100] [--img-size 320] [--width 16] [--mosaic 0.5] [--out DIR]

Needs ../shared/datasets/raccoon (163 photos, one class, Pascal VOC XML). A fixed validation split
of ~20% (seed 0) keeps each group of duplicate photographs on one side (see its PROVENANCE.md), so
no validation photo is also trained on. Figures: mAP@0.5 and mAP@0.5:0.95 by pycocotools on that
split, and the training budget as both wall time and the training process's CPU time (user +
system, from getrusage of the subprocess), with the load average around it: on a shared machine the
wall time says more about the neighbours than about the recipe. From scratch: no pretrained backbone.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--mosaic", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", default="5e-3")
    parser.add_argument("--threads", type=int, default=1,
                        help="Torch threads of the training process (1: on a loaded 2-core machine a second "
                             "thread mostly spins, costing CPU time without saving wall time).")
    parser.add_argument("--out", type=Path, help="Keep the run directory here (default: a temporary one).")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is not here (the shared data sets sit beside the project)")
    stems = sorted(p.stem for p in (DATA / "annotations").glob("*.xml"))
    train, val = split(stems, 0.2, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        command = ["train", "detect", str(link_subset(train, tmp / "train")), "--val", str(link_subset(val, tmp / "val")),
                   "--epochs", str(args.epochs), "--img-size", str(args.img_size), "--width", str(args.width),
                   "--mosaic", str(args.mosaic), "--batch-size", str(args.batch_size), "--lr", args.lr, "--seed", "0"]
        run_dir = args.out or tmp / "run"
        load_before = os.getloadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        with timed() as clock:
            result = subprocess.run([sys.executable, "-m", "cvtool", "-q", *command, "--out", str(run_dir)],
                                    capture_output=True, text=True, env=env)
        wall = clock.seconds
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        load_after = os.getloadavg()
        if result.returncode != 0:
            sys.exit(f"training failed: {result.stderr.strip()}")
        summary = json.loads(result.stdout)
    write_results("eval_detect_raccoon", {
        "data": f"raccoon, {len(train)} train / {len(val)} validation images (duplicate groups kept together, seed 0)",
        "arch": (f"yolo (ours), csp backbone + SPPF stride-32 context, width {args.width}, {args.img_size} px, "
                 f"3 k-means anchors {summary['anchors']}, from scratch"),
        "epochs": args.epochs, "best_epoch": summary["best_epoch"], "device": "cpu",
        "val_map50": round(summary["val"]["map50"], 4), "val_map50_95": round(summary["val"]["map50_95"], 4),
        "target_map50": 0.5, "target_cpu_s": 1800,
        "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1), "train_threads": args.threads,
        "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "train_command": "cvtool " + " ".join(command),
    })


if __name__ == "__main__":
    main()
