"""Segmentation speed and memory on this machine.

    python bench/segment_speed.py

1. images/s at 512x512, batch 1, CPU, random weights (speed does not depend on the values): our
   U-Net (width 32 and the paper's 64) and torchvision's lraspp / deeplabv3 segmenters, each as a
   pure forward pass: 5 timed passes after a warm-up, the models taking turns (cvtool.bench.time_calls).
2. Peak memory (max RSS of the whole `cvtool segment` process) on a 6000x4000 photo with a U-Net
   (width 16, grey), untiled against `--tile 512 --overlap 32`, and the wall time of each.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import time_calls, timed  # noqa: E402
from cvtool.models.checkpoint import save_checkpoint  # noqa: E402
from cvtool.models.registry import get_entry  # noqa: E402
from cvtool.models.unet import UNET_PREPROCESS  # noqa: E402

MODELS = [("unet", {"width": 32, "num_classes": 2, "in_channels": 3}), ("unet", {"width": 64, "num_classes": 2, "in_channels": 3}),
          ("lraspp_mobilenet_v3_large", {}), ("deeplabv3_mobilenet_v3_large", {}), ("deeplabv3_resnet50", {})]

MEASURE = """
import resource, runpy, sys
sys.argv = ["cvtool", *sys.argv[1:]]
try:
    runpy.run_module("cvtool", run_name="__main__")
except SystemExit as exc:
    code = exc.code
finally:
    print(f"MAXRSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


def forward_speeds(runs: int = 5) -> dict[str, float]:
    """Images/s of each of MODELS: `runs` timed passes (after a warm-up) over their total time."""
    x = torch.randn(1, 3, 512, 512)
    calls = {}
    for name, kwargs in MODELS:
        model = get_entry(name).build(**kwargs).eval()
        calls[f"{name}{'_w' + str(kwargs['width']) if 'width' in kwargs else ''}"] = lambda model=model: model(x)
    with torch.inference_mode():
        times = time_calls(calls, iters=runs, warmup=1)
    return {key: round(runs / sum(seconds), 3) for key, seconds in times.items()}


def segment_peak(image: Path, weights: Path, *extra: str) -> tuple[float, float]:
    with timed() as clock:
        result = subprocess.run([sys.executable, "-c", MEASURE, "-q", "segment", str(image), "--weights", str(weights),
                                 "-f", "jsonl", *extra], capture_output=True, text=True)
    seconds = clock.seconds
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    kb = int(result.stderr.split("MAXRSS_KB")[1].split()[0])
    return kb / 1024 / 1024, seconds


def main() -> None:
    torch.manual_seed(0)
    speeds = forward_speeds()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        big = cv2.resize((rng.random((400, 600)) * 255).astype(np.uint8), (6000, 4000), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(tmp / "big.png"), big)
        weights = tmp / "unet16.pt"
        save_checkpoint(weights, arch="unet", task="segment", state_dict=get_entry("unet").build(num_classes=2, width=16).state_dict(),
                        classes=["a", "b"], preprocess=UNET_PREPROCESS.to_dict(), extra={"arch_kwargs": {"width": 16}})
        tiled_gb, tiled_s = segment_peak(tmp / "big.png", weights, "--tile", "512", "--overlap", "32")
        whole_gb, whole_s = segment_peak(tmp / "big.png", weights)
    write_results("segment_speed", {
        "forward_images_per_s_512px_batch1_cpu": speeds,
        "tiled_6000x4000": {"model": "unet width 16, grey, 2 classes",
                            "untiled_peak_rss_gb": round(whole_gb, 2), "untiled_s": round(whole_s, 1),
                            "tile512_overlap32_peak_rss_gb": round(tiled_gb, 2), "tiled_s": round(tiled_s, 1),
                            "memory_ratio": round(whole_gb / tiled_gb, 1)},
    })


if __name__ == "__main__":
    main()
