"""Training speed on the CPU: float32 vs `--cpu-bf16` (bf16 autocast, channels-last tensors), through the public
training API, on generated data (`make bench-train-precision`, a few minutes).

For each task (the U-Net at the ISBI recipe's size, our YOLO, ResNet-18) both precisions train the same run
(2 epochs, seed 0) in turns, `--repeats` times, with `--threads` torch threads; the figure is the second epoch's
`train_seconds` from metrics.csv (training steps only: no validation, no checkpoint writing), median over the
repeats, and the ratio within each turn. The final training loss of both is written beside it (the same seed:
bf16 changes the result, not the recipe). The machine's load average is recorded before and after.

    python bench/train_precision.py [--threads 1] [--repeats 3] [--tasks segment,detect,classify]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402
from ddp import make_folder  # noqa: E402  (an ImageFolder of three drawn shapes)


def cells(root: Path, n: int, size: int = 256) -> Path:
    """Grey images of bright cells between dark membranes, masks 0/1 (as the ISBI set)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.ones((size, size), np.uint8)
        for line in range(int(rng.integers(8, 16))):
            p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
            cv2.line(mask, (int(p[0]), 0 if line % 2 else int(p[1])), (int(q[0]), size - 1 if line % 2 else int(q[1])),
                     0, int(rng.integers(2, 5)))
        image = (np.where(mask == 1, 180, 50) + rng.normal(0, 20, mask.shape)).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{i:03d}.png"), mask)
    return root


def shapes(root: Path, n: int, size: int = 256) -> Path:
    """Photos with filled circles, in VOC XML (the raccoon set's layout)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        image = rng.normal(120, 25, (size, size, 3)).clip(0, 255).astype(np.uint8)
        r = int(rng.integers(16, 48))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        cv2.circle(image, (cx, cy), r, (30, 200, 30), -1)
        cv2.imwrite(str(root / "images" / f"{i:03d}.jpg"), image)
        (root / "annotations" / f"{i:03d}.xml").write_text(
            f"<annotation><filename>{i:03d}.jpg</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size><object><name>ball</name><bndbox><xmin>{cx - r}</xmin><ymin>{cy - r}</ymin>"
            f"<xmax>{cx + r}</xmax><ymax>{cy + r}</ymax></bndbox></object></annotation>")
    return root


# task -> (data maker, images, the training call's options: about 4 steps an epoch)
TASKS = {
    "segment": (cells, 16, dict(arch="unet", width=32, depth=4, crop=256, batch_size=4, loss="weighted-ce",
                                 elastic=True, mirror_pad=64, class_names=["membrane", "cell"], val_split=0.2)),
    "detect": (shapes, 40, dict(arch="yolo", img_size=256, batch_size=8, val_split=0.2)),
    "classify": (lambda root, n: make_folder(root, n, size=128), 72,
                 dict(arch="resnet18", img_size=128, batch_size=16, val_split=0.1)),
}


def second_epoch(run: Path) -> tuple[float, float]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return float(rows[1]["train_seconds"]), float(rows[1]["train_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import cvtool.train
    from cvtool.device import cpu_has_bf16

    if not cpu_has_bf16():
        sys.exit("skipped: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX); --cpu-bf16 is refused here")
    load_before, results = os.getloadavg(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            make, n, options = TASKS[task]
            data = make(Path(tmp) / task / "data", n)
            seconds, ratios, losses = {"fp32": [], "bf16": []}, [], {}
            for repeat in range(args.repeats):
                for name in ("fp32", "bf16"):
                    run = Path(tmp) / task / f"{name}{repeat}"
                    getattr(cvtool.train, task)(str(data), epochs=2, seed=0, device="cpu", out=str(run),
                                                cpu_bf16=name == "bf16", val_every=2, **options)
                    s, losses[name] = second_epoch(run)
                    seconds[name].append(s)
                ratios.append(seconds["fp32"][-1] / seconds["bf16"][-1])
                print(task, repeat, {k: v[-1] for k, v in seconds.items()}, flush=True)
            results[task] = {"options": options, "images": n,
                             "epoch_seconds_median": {k: round(statistics.median(v), 2) for k, v in seconds.items()},
                             "epoch_seconds": seconds, "speedup_per_turn": [round(r, 2) for r in ratios],
                             "speedup_median": round(statistics.median(ratios), 2),
                             "train_loss_epoch_2": {k: round(v, 4) for k, v in losses.items()}}
    write_results("train_precision", {
        "what": "CPU training: seconds of the second epoch's training steps, float32 vs --cpu-bf16, same run in turns",
        "torch_threads": args.threads, "repeats": args.repeats,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "tasks": results,
    })


if __name__ == "__main__":
    main()
