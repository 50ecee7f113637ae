"""onnxruntime against PyTorch eager on the CPU: same model, same input, same process, same thread count.

    python bench/onnx_speed.py [--threads N] [--iters N]

With --threads N the results go to bench/results/onnx_speed_threadsN.json. On a shared, loaded
machine PyTorch's multi-threaded (OpenMP) kernels suffer far more from other processes than
onnxruntime's, so `--threads 1` gives the fairer comparison there.

Uses `cvtool bench`'s Python API (cvtool.bench.run_bench): random weights (speed does not depend on
the values), batch 1 and 8, passes of the two backends alternating so that other load on the
machine falls on both alike. Models: mobilenet_v3_small and _large and resnet18 at 224x224, our
YOLO-style detector at 320x320 (head + box decoding), and the U-Net with its default architecture
(width 64, depth 4, grey) at 256x256. The speed ratio is PyTorch's median ms per image divided by
onnxruntime's. Written to bench/results/onnx_speed.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import run_bench  # noqa: E402

# (model, input side or None for its own, timed passes per backend and batch size, warm-up passes)
MODELS = [("mobilenet_v3_small", None, 30, 3), ("mobilenet_v3_large", None, 20, 3), ("resnet18", None, 15, 3),
          ("yolo", 320, 20, 3), ("unet", 256, 5, 2)]
SMALL = ("mobilenet_v3_small", "mobilenet_v3_large", "yolo")  # the >= 1.3x target applies to these
TARGET = 1.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both backends (default: one per core)")
    parser.add_argument("--iters", type=int, default=None, help="timed passes (default: per model, see MODELS)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    per_model, settings = {}, None
    for name, size, iters, warmup in MODELS:
        report = run_bench([name], batch_sizes=(1, 8), img_size=size, iters=args.iters or iters, warmup=warmup,
                           threads=args.threads, on_case=lambda line: print(line, file=sys.stderr, flush=True))
        settings = {k: report[k] for k in ("weights", "device", "versions", "threads", "memory")}
        rows = report["results"]
        ratios = {f"batch_{s['batch_size']}": s["onnxruntime_vs_torch"] for s in report["speedups"]}
        per_model[name] = {
            "input": rows[0]["input"][1:],
            "iters": report["iters"],
            "warmup": report["warmup"],
            "ms_per_image": {f"{r['backend']}_batch_{r['batch_size']}": r["ms_per_image"] for r in rows if "error" not in r},
            "images_per_s": {f"{r['backend']}_batch_{r['batch_size']}": r["images_per_s"] for r in rows if "error" not in r},
            "peak_rss_mb": {f"{r['backend']}_batch_{r['batch_size']}": r["peak_memory_mb"] for r in rows if "error" not in r},
            "export_s": next((r["export_s"] for r in rows if r["backend"] == "onnxruntime" and "export_s" in r), None),
            "relative_diff_vs_torch": next((r["relative_diff_vs_torch"] for r in rows if "relative_diff_vs_torch" in r), None),
            "speed_ratio_onnxruntime_vs_torch": ratios,
            "target_applies": name in SMALL,
            "target_met": name in SMALL and bool(ratios) and min(ratios.values()) >= TARGET,
        }
    # one results file per thread setting: bench/results/onnx_speed.json (default), onnx_speed_threads1.json, ...
    write_results("onnx_speed" + (f"_threads{args.threads}" if args.threads else ""), {
        **settings,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "target": f"onnxruntime >= {TARGET}x PyTorch eager on the CPU for {', '.join(SMALL)}",
        "models": per_model,
    })


if __name__ == "__main__":
    main()
