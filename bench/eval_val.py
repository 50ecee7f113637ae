"""`cvtool val detect` reproduces the mAP `cvtool train detect` reported for the same checkpoint, on real photos.

    python bench/eval_val.py [--epochs 30] [--img-size 256]

Trains our detector on the raccoon photos (eval_detect.py's split: 130 train / 33 validation, duplicate
groups kept together, seed 0) through the CLI, then runs `cvtool val detect` on the validation photos with
best.pt and compares its mAP@0.5 and mAP@0.5:0.95 with the training's summary.json. The photos are not
square, so the letterbox pads them: the check covers clipping and the mapping back to each photo's pixels.
Writes bench/results/eval_val_detect.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402
from eval_detect import DATA, link_subset, split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--img-size", type=int, default=256)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is not here (the shared data sets sit beside the project)")
    stems = sorted(p.stem for p in (DATA / "annotations").glob("*.xml"))
    train, val = split(stems, 0.2, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        val_dir = link_subset(val, tmp / "val")
        train_command = ["train", "detect", str(link_subset(train, tmp / "train")), "--val", str(val_dir),
                         "--epochs", str(args.epochs), "--img-size", str(args.img_size), "--seed", "0",
                         "--out", str(tmp / "run")]
        trained = subprocess.run([sys.executable, "-m", "cvtool", "-q", *train_command], capture_output=True,
                                 text=True, env=env)
        if trained.returncode:
            sys.exit(f"training failed: {trained.stderr.strip()}")
        reported = json.loads((tmp / "run" / "summary.json").read_text())["val"]
        val_command = ["val", "detect", str(val_dir), "--weights", str(tmp / "run" / "best.pt")]
        scored = subprocess.run([sys.executable, "-m", "cvtool", *val_command], capture_output=True, text=True, env=env)
        if scored.returncode:
            sys.exit(f"val detect failed: {scored.stderr.strip()}")
        again = json.loads(scored.stdout)
    difference = max(abs(again["map50"] - reported["map50"]), abs(again["map50_95"] - reported["map50_95"]))
    write_results("eval_val_detect", {
        "data": f"raccoon, {len(train)} train / {len(val)} validation photos (eval_detect.py's split)",
        "train_command": "cvtool " + " ".join(train_command[:2]) + f" TRAIN --val VAL --epochs {args.epochs} "
                         f"--img-size {args.img_size} --seed 0",
        "val_command": "cvtool val detect VAL --weights RUN/best.pt",
        "train_summary": {"map50": reported["map50"], "map50_95": reported["map50_95"]},
        "val_detect": {"map50": again["map50"], "map50_95": again["map50_95"]},
        "max_abs_difference": difference, "equal_to_1e-6": difference <= 1e-6,
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    })


if __name__ == "__main__":
    main()
