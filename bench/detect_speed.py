"""Detector speed on this CPU: images/s of each detector at 320 and 640 px, batch 1 and 8.

    python bench/detect_speed.py [--models yolo ssdlite320_mobilenet_v3_large ...]

Random weights (speed does not depend on their values); square random images of the given size,
the models' own forward pass (torchvision's include their internal resize and NMS; ours includes
letterboxing and decoding). Median of 3 timed runs after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.models.registry import get_entry  # noqa: E402

MODELS = ["yolo", "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn", "fcos_resnet50_fpn",
          "retinanet_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn_v2"]


def images_per_second(name: str, size: int, batch: int) -> float:
    torch.manual_seed(0)
    if name == "yolo":
        model = get_entry("yolo").build(num_classes=1, img_size=size).eval()
        run = model.detect_images
    else:
        model = get_entry(name).build().eval()
        run = model
    images = [torch.rand(3, size, size) for _ in range(batch)]
    times = []
    with torch.inference_mode():
        run(images)
        for _ in range(3):
            start = time.perf_counter()
            run(images)
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    args = parser.parse_args()
    figures = {name: {f"{size}px_batch{batch}": round(images_per_second(name, size, batch), 2)
                      for size in (320, 640) for batch in (1, 8)} for name in args.models}
    write_results("detect_speed", {"images_per_s_cpu": figures})


if __name__ == "__main__":
    main()
