"""Which training options help our YOLO-style detector on the raccoon set: one variant per process, one torch thread.

    python bench/yolo_recipe.py NAME '{"ema": 0.999, "close_mosaic": 10}' [--epochs 100] [--img-size 256]

Trains on eval_detect.py's split (130 train / 33 validation photos, duplicate groups kept together, seed 0)
through cvtool.train.detection.run_training (the options the CLI may not expose yet), and writes
bench/results/yolo_recipe_NAME.json: best.pt's and the last epoch's mAP@0.5 / mAP@0.5:0.95 (pycocotools,
the figures `cvtool val detect` gives for those checkpoints), CPU seconds and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402
from eval_detect import DATA, link_subset, split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("options", help="DetectTrainArgs overrides as JSON, e.g. '{\"ema\": 0.999}'")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is not here (the shared data sets sit beside the project)")
    import torch

    torch.set_num_threads(1)
    from cvtool.train.detection import DetectTrainArgs, run_training
    from cvtool.train.engine import TrainConfig

    stems = sorted(p.stem for p in (DATA / "annotations").glob("*.xml"))
    train, val = split(stems, 0.2, seed=0)
    options = json.loads(args.options)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = DetectTrainArgs(str(link_subset(train, tmp / "train")), val=str(link_subset(val, tmp / "val")),
                                 img_size=args.img_size, width=16, mosaic=0.5, **options)
        cfg = TrainConfig(epochs=args.epochs, batch_size=8, lr=5e-3, weight_decay=5e-4, seed=args.seed,
                          monitor="val_map50_95", warmup_epochs=1)
        load_before = os.getloadavg()
        before = resource.getrusage(resource.RUSAGE_SELF)
        summary = run_training(recipe, cfg, tmp / "run", torch.device("cpu"), progress=False)
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    write_results(f"yolo_recipe_{args.name}", {
        "options": {**{k: getattr(recipe, k) for k in ("mosaic", "ema", "close_mosaic")}, **options},
        "epochs": args.epochs, "img_size": args.img_size, "seed": args.seed,
        "best_epoch": summary["best_epoch"],
        "best_map50": round(summary["val"]["map50"], 4), "best_map50_95": round(summary["val"]["map50_95"], 4),
        "last_map50": round(summary["last"]["map50"], 4), "last_map50_95": round(summary["last"]["map50_95"], 4),
        "cpu_s": round(cpu, 1), "threads": 1,
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    })


if __name__ == "__main__":
    main()
