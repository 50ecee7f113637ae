"""What the Python API costs over the bare forward pass, in one process, same model, same images.

    python bench/api_overhead.py [--images 32] [--batch-size 16] [--threads 1] [--iters 5]

Two tasks: classify (resnet18, 224 px crops of 640x480 photos) and detect (our YOLO-style detector at
320 px). Random weights saved to a local file stand in for trained ones (speed does not depend on the
values). Per task, timed in turns by `cvtool.bench.time_interleaved` so other load on the machine falls
on all alike:
  forward      the network alone on tensors already preprocessed and in memory (the ceiling);
  api_arrays   `model(list_of_rgb_arrays)`: preprocessing, batching, inference, records (no decoding);
  api_files    `model(list_of_jpeg_paths)`: the same plus JPEG decoding in the API's worker threads.
Ratios are throughput relative to `forward`; the target for api_arrays is at least 0.9.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402
from throughput import make_images  # noqa: E402

import cvtool  # noqa: E402
from cvtool.bench import time_interleaved  # noqa: E402
from cvtool.io.image import read_image  # noqa: E402


def _classify_case(tmp: Path):
    from cvtool.models.registry import get_entry

    weights = tmp / "resnet18-random.pt"
    torch.save(get_entry("resnet18").build().state_dict(), weights)
    model = cvtool.Classifier("resnet18", weights=weights, device="cpu", top_k=5)
    network, preprocess = model.loaded.module, model.loaded.preprocess

    def forward_on(images):
        return torch.from_numpy(np.stack([preprocess(rgb) for rgb in images]))

    return model, network, forward_on


def _detect_case(tmp: Path):
    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector, letterbox_batch

    net = YoloDetector(num_classes=2, img_size=320)
    weights = tmp / "yolo-random.pt"
    save_checkpoint(weights, arch="yolo", task="detect", state_dict=net.state_dict(), classes=["a", "b"],
                    preprocess=YOLO_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"anchors": net.anchors.tolist(), "img_size": 320}})
    model = cvtool.Detector(weights=weights, device="cpu", conf=0.25)
    network = model.loaded.module

    def forward_on(images):
        tensors = [torch.from_numpy(rgb).permute(2, 0, 1).float().div(255) for rgb in images]
        return letterbox_batch(tensors, 320)[0]

    return model, network, forward_on


CASES = {"classify_resnet18": _classify_case, "detect_yolo": _detect_case}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the API's decoding uses 2 more)")
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    figures: dict = {"images": args.images, "image_size": "640x480 JPEG", "batch_size": args.batch_size,
                     "torch_threads": args.threads, "iters": args.iters, "load_average_before": load_before}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp, args.images)
        images = [read_image(p) for p in paths]
        for name, make in CASES.items():
            model, network, forward_on = make(tmp)
            batches = [forward_on(images[i : i + args.batch_size]) for i in range(0, len(images), args.batch_size)]

            def forward() -> None:
                with torch.inference_mode():
                    for batch in batches:
                        network(batch)

            calls = {"forward": forward,
                     "api_arrays": lambda: model(images, batch_size=args.batch_size),
                     "api_files": lambda: model([str(p) for p in paths], batch_size=args.batch_size)}
            for fn in calls.values():  # warm-up: first-call allocations and kernel selection
                fn()
            times = time_interleaved(calls, iters=args.iters, sync=lambda: None)
            ips = {k: len(images) / statistics.median(v) for k, v in times.items()}
            figures[name] = {
                **{f"{k}_images_per_s": round(v, 2) for k, v in ips.items()},
                "api_arrays_over_forward": round(ips["api_arrays"] / ips["forward"], 3),
                "api_files_over_forward": round(ips["api_files"] / ips["forward"], 3),
            }
    figures["load_average_after"] = os.getloadavg()
    figures["target_api_arrays_over_forward"] = 0.9
    write_results("api_overhead", figures)


if __name__ == "__main__":
    main()
