"""Train and evaluate the U-Net on the ISBI 2012 membrane set, through the CLI (the U-Net paper's task).

    python bench/eval_segment.py [--epochs 50]

Needs ../shared/datasets/membrane (24 512x512 EM slices with membrane/cell masks). 20% of the pairs
(5, chosen by seed 0) are held out; the figures are on those: pixel accuracy, IoU and Dice of the
membrane class (the structure of interest) and of the cell interiors, at the last epoch and for best.pt.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import timed  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "membrane"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--keep", type=Path, help="copy the run directory here (examples.png, curves.png, ...)")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is not here (the shared data sets sit beside the project)")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.keep) if args.keep else Path(tmp) / "run"
        command = ["train", "segment", str(DATA), "--arch", "unet", "--epochs", str(args.epochs), "--width", "32",
                   "--depth", "4", "--crop", "256", "--batch-size", "4", "--lr", "1e-3", "--val-split", "0.2",
                   "--class-names", "membrane,cell", "--seed", "0"]
        with timed() as clock:
            result = subprocess.run([sys.executable, "-m", "cvtool", "-q", *command, "--out", str(run)],
                                    capture_output=True, text=True)
        wall = clock.seconds
        if result.returncode != 0:
            sys.exit(f"training failed: {result.stderr.strip()}")
        summary = json.loads(result.stdout)
        last = list(csv.DictReader(open(run / "metrics.csv")))[-1]
    pick = lambda row, key: round(float(row[key]), 4)  # noqa: E731
    write_results("eval_segment_membrane", {
        "data": "ISBI 2012 membrane, 24 pairs; 19 train / 5 held out (seed 0)",
        "held_out": summary["val_names"],
        "arch": "unet width 32 depth 4 (7.8 M params), 256 px random crops + flips, CE + Dice, AdamW, CPU",
        "epochs": args.epochs,
        "last_epoch": {k: pick(last, f"val_{k}") for k in
                       ("pixel_accuracy", "iou_membrane", "dice_membrane", "iou_cell", "dice_cell", "miou")},
        "best_pt": {k: round(summary["val"][k], 4) for k in
                    ("pixel_accuracy", "iou_membrane", "dice_membrane", "iou_cell", "dice_cell", "miou")},
        "best_epoch": summary["best_epoch"],
        "train_wall_s": round(wall, 1),
        "train_command": "cvtool " + " ".join(command),
    })


if __name__ == "__main__":
    main()
