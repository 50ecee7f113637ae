"""Data-parallel training and training data larger than memory (`make bench-ddp`, several minutes).

1. Speed: `cvtool train classify` of LeNet-5 on a generated ImageFolder, 1 process vs 2 processes
   (`--devices 2`, gloo, one thread each) on this machine; images/s of the last epoch (from
   metrics.csv: all ranks' images over rank 0's wall time), the machine's load average beside it.
2. Memory: peak RSS of `cvtool train classify` on 2,000 vs 20,000 generated images, lazily read from
   disk (CVTOOL_TRAIN_IN_MEMORY_MB=0) and held in memory (the default below 1 GiB of pixels), plus
   the lazy path's cost in images/s.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

CLASSES = ("circle", "bar", "cross")


def make_folder(root: Path, n: int, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shape = CLASSES[i % 3]
        image = np.full((size, size, 3), 255, np.uint8)
        cx, cy = (int(v) for v in rng.integers(size // 3, 2 * size // 3, size=2))
        r = int(rng.integers(size // 6, size // 4))
        if shape == "circle":
            cv2.circle(image, (cx, cy), r, (0, 0, 0), 2)
        elif shape == "bar":
            cv2.rectangle(image, (cx - r, cy - 2), (cx + r, cy + 2), (0, 0, 0), -1)
        else:
            cv2.line(image, (cx - r, cy - r), (cx + r, cy + r), (0, 0, 0), 2)
        cv2.imwrite(str(root / shape / f"{i:05d}.png"), image)
    return root


def run(args: list[str], env: dict) -> dict:
    """One `cvtool` run in a child that reports its own children's peak RSS (the launcher's ranks too)."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
             "print(rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "cvtool", *args], capture_output=True,
                         text=True, env={**os.environ, "CVTOOL_NO_PROGRESS": "1", **env})
    rc, seconds, rss_kb = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"cvtool {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return {"seconds": round(float(seconds), 1), "peak_rss_mb": round(int(rss_kb) / 1024, 1)}


def last_epoch_rate(run_dir: Path) -> float:
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    return float(rows[-1]["train_images_per_s"])


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cvtool-bench-ddp-"))
    figures: dict = {"load_average_start": [round(x, 2) for x in os.getloadavg()]}
    small = make_folder(tmp / "small", 2000)
    common = ["train", "classify", str(small), "--arch", "lenet5", "--batch-size", "64", "--epochs", "2",
              "--device", "cpu", "-f", "json"]

    speed = {}
    for label, extra, threads in [("1 process, 1 thread", [], "1"), ("1 process, 2 threads", [], "2"),
                                  ("2 processes (--devices 2), 1 thread each", ["--devices", "2"], "1"),
                                  ("1 process, 1 thread (again)", [], "1")]:
        out = tmp / f"speed-{len(speed)}"
        result = run([*common, "--out", str(out), *extra], {"OMP_NUM_THREADS": threads})
        speed[label] = {"images_per_s": last_epoch_rate(out), **result,
                        "load_average": round(os.getloadavg()[0], 2)}
    figures["speed_lenet5_2000_images_batch_64"] = speed

    memory = {}
    big = make_folder(tmp / "big", 20000)
    for n, folder in [(2000, small), (20000, big)]:
        for mode, budget in [("lazy", "0"), ("in_memory", "1024")]:
            out = tmp / f"mem-{n}-{mode}"
            result = run(["train", "classify", str(folder), "--arch", "lenet5", "--batch-size", "64", "--epochs", "1",
                          "--device", "cpu", "--out", str(out), "-f", "json"],
                         {"OMP_NUM_THREADS": "1", "CVTOOL_TRAIN_IN_MEMORY_MB": budget})
            memory[f"{n} images, {mode}"] = {**result, "images_per_s": last_epoch_rate(out)}
    lazy_ratio = memory["20000 images, lazy"]["peak_rss_mb"] / memory["2000 images, lazy"]["peak_rss_mb"]
    memory["lazy peak RSS 20000 / 2000"] = round(lazy_ratio, 3)
    memory["in-memory peak RSS 20000 / 2000"] = round(
        memory["20000 images, in_memory"]["peak_rss_mb"] / memory["2000 images, in_memory"]["peak_rss_mb"], 3)
    figures["memory_lenet5_32px_png"] = memory
    figures["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_results("ddp", figures)


if __name__ == "__main__":
    main()
