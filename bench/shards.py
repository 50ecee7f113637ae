"""Batch jobs at scale on this machine (`make bench-shards`, several minutes).

1. Contention: 2 concurrent `cvtool classify --shard K/2` processes over 500 small generated images,
   with the new thread default (each takes cores / 2) vs today's (`--threads 0`: PyTorch's own default,
   no OMP_NUM_THREADS), alternated in one run; wall time of the pair, and the ratio.
2. Ray: the same 500 images through `cvtool.scale.ray_records` with 1 vs 2 actors (a local Ray on all
   cores, started here, its start-up not timed): images/s, the ratio, and whether the records equal the
   single process's (timings aside).

The model is ResNet-18 with random weights (a plain state_dict saved here: offline, and a real 224 x 224
forward pass per image); what it answers does not matter, only the work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402


def make_images(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(root / f"img_{i:04d}.png"), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    return root


def random_resnet18(path: Path) -> Path:
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    return path


def shard_pair(images: Path, weights: Path, extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["CVTOOL_NO_PROGRESS"] = "1"
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "cvtool", "-q", "classify", str(images), "--model", "resnet18",
                               "--weights", str(weights), "--device", "cpu", "-k", "1", "-f", "jsonl",
                               "--shard", f"{k}/2", *extra], stdout=subprocess.DEVNULL, env=env) for k in range(2)]
    codes = [p.wait() for p in procs]
    assert codes == [0, 0], codes
    return time.perf_counter() - start


def contention(images: Path, weights: Path, rounds: int) -> dict:
    new, old = [], []
    for _ in range(rounds):
        new.append(shard_pair(images, weights, []))
        old.append(shard_pair(images, weights, ["--threads", "0"]))
        print(f"  pair wall: new defaults {new[-1]:.1f} s, today's {old[-1]:.1f} s", flush=True)
    return {"new_defaults_s": [round(v, 2) for v in new], "todays_defaults_s": [round(v, 2) for v in old],
            "ratio_todays_over_new": round(statistics.median(old) / statistics.median(new), 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2)}


def ray_bench(images: Path, weights: Path) -> dict:
    import ray

    import cvtool
    from cvtool.scale import ray_records

    strip = lambda rs: [{k: v for k, v in r.items() if k != "ms"} for r in rs]  # noqa: E731
    single = strip(r.to_dict() for r in cvtool.Classifier("resnet18", weights=weights, device="cpu", top_k=1,
                                                           threads=1).run(images))
    ray.init(include_dashboard=False, log_to_driver=False)
    figures = {}
    for workers in (1, 2):
        start = time.perf_counter()
        records = list(ray_records("classify", [images], model="resnet18", weights=str(weights), top_k=1,
                                   num_workers=workers, batch_size=16))
        wall = time.perf_counter() - start
        figures[f"workers_{workers}"] = {"wall_s": round(wall, 2), "images_per_s": round(len(records) / wall, 2),
                                         "records_equal_single_process": strip(records) == single}
        print(f"  ray {workers} worker(s): {figures[f'workers_{workers}']}", flush=True)
    ray.shutdown()
    figures["throughput_ratio_2_over_1"] = round(figures["workers_2"]["images_per_s"]
                                                 / figures["workers_1"]["images_per_s"], 2)
    figures["note"] = "wall includes Ray Data planning and actor start (model load) per run, not ray.init"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp) / "images", args.images)
        weights = random_resnet18(Path(tmp) / "resnet18_random.pt")
        figures = {"images": args.images, "cores": os.cpu_count(), "load_avg_1m_before": round(os.getloadavg()[0], 2),
                   "model": "resnet18 (random weights), 48x48 PNGs resized to 224"}
        print("contention: 2 concurrent shards", flush=True)
        figures["contention"] = contention(images, weights, args.rounds)
        if not args.skip_ray:
            print("ray: 1 vs 2 actors", flush=True)
            figures["ray"] = ray_bench(images, weights)
    write_results("shards", figures)


if __name__ == "__main__":
    main()
