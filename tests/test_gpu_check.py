"""bench/gpu_check.py's share.* checks (issue 30) run with the CPU standing in for the GPU, on a few images: the
script that times the pipeline against the bare forward pass on a GPU is known to work before one appears."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CVTOOL_BENCH_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("GPU_CHECK_DEVICE", None)
    env.pop("GPU_CHECK_ONLY", None)
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_the_share_checks_time_the_pipeline_against_the_bare_forward_pass(tmp_path):
    done = _gpu_check(tmp_path, "--images", "8", "--only",
                      "share.device_decode,share.efficientnet_b0,share.yolo640,share.yolo11n")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check_only.json").read_text())
    assert "--images 8" in report["command"]
    rows = {row["check"]: row for row in report["figures"]["checks"]}
    assert report["figures"]["failed"] == 0 and len(rows) == 4
    decode = rows["share device decode vs read_image"]  # torchvision's libjpeg on the CPU: OpenCV's pixels
    assert decode["passed"] and decode["agreement"].startswith("12/12 on the device decoder; mean |diff| 0.00")
    for name in ("share efficientnet_b0 batch 4", "share yolo640 batch 4"):
        row = rows[name]
        assert row["images"] == 8 and row["device"] == "cpu"
        assert row["gpu_images_per_s"] > 0 and row["forward_images_per_s"] > 0
        assert abs(row["pipeline_over_forward"] - row["gpu_images_per_s"] / row["forward_images_per_s"]) < 0.01
        assert row["target"] == 0.8 and row["meets_target"] == (row["pipeline_over_forward"] >= 0.8)
    theirs = rows["share yolo11n (Ultralytics, random) batch 4"]
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        assert theirs["agreement"].startswith("skipped: ultralytics not importable")
    else:
        assert theirs["images"] == 8 and theirs["gpu_images_per_s"] > 0


def test_an_unknown_check_name_is_refused_with_the_list(tmp_path):
    done = _gpu_check(tmp_path, "--only", "share.resnet51")
    assert done.returncode == 2
    assert "no check named share.resnet51" in done.stderr and "share.resnet50" in done.stderr
