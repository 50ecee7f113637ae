"""Detector speed on this CPU: images/s of each detector at 320 and 640 px, batch 1 and 8.

    python bench/detect_speed.py [--models yolo ssdlite320_mobilenet_v3_large ...]

Random weights (speed does not depend on their values); square random images of the given size,
the models' own forward pass (torchvision's include their internal resize and NMS; ours includes
letterboxing and decoding). Median of 3 timed runs after a warm-up; a model's four cases (size x batch)
take turns (cvtool.bench.time_calls).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import time_calls  # noqa: E402
from cvtool.models.registry import get_entry  # noqa: E402

MODELS = ["yolo", "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn", "fcos_resnet50_fpn",
          "retinanet_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn_v2"]


SIZES, BATCHES = (320, 640), (1, 8)


def runner(name: str, size: int, batch: int):
    torch.manual_seed(0)
    if name == "yolo":
        model = get_entry("yolo").build(num_classes=1, img_size=size).eval()
        run = model.detect_images
    else:
        model = get_entry(name).build().eval()
        run = model
    images = [torch.rand(3, size, size) for _ in range(batch)]
    return lambda: run(images)


def images_per_second(name: str) -> dict[str, float]:
    """{"<size>px_batch<batch>": images/s} for every size and batch: median of 3 after a warm-up, cases in turn."""
    calls = {(size, batch): runner(name, size, batch) for size in SIZES for batch in BATCHES}
    with torch.inference_mode():
        times = time_calls(calls, iters=3, warmup=1)
    return {f"{size}px_batch{batch}": round(batch / statistics.median(times[size, batch]), 2) for size, batch in calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    args = parser.parse_args()
    figures = {name: images_per_second(name) for name in args.models}
    write_results("detect_speed", {"images_per_s_cpu": figures})


if __name__ == "__main__":
    main()
