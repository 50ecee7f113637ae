"""Whole-process times of one-shot commands (issue 18): `cvtool verify-face A B` on torch vs the default
(`--backend auto`: the cached ONNX exports, no torch), mmod and haar; `cvtool classify` one image with LeNet-5;
`python -c pass` as the floor. Commands alternate, median of --repeats; the load average is recorded.

    python bench/oneshot.py [--repeats 5] [--a IMG --b IMG]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]

from _results import write_results  # noqa: E402

from cvtool.bench import time_commands  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--a", default=str(ROOT / "sample_images/photos/astronaut.jpg"))
    parser.add_argument("--b", default=None, help="default: A mirrored")
    args = parser.parse_args()
    import cv2

    tmp = Path(tempfile.mkdtemp(prefix="cvtool-oneshot-"))
    b = args.b
    if b is None:
        b = str(tmp / "mirrored.jpg")
        cv2.imwrite(b, cv2.imread(args.a)[:, ::-1])
    py, cli = sys.executable, [sys.executable, "-m", "cvtool", "-q"]
    env = {**os.environ}
    commands = {"python -c pass": [py, "-c", "pass"]}
    for det in ("mmod", "haar"):
        commands[f"verify-face {det} torch"] = [*cli, "verify-face", args.a, b, "--detector", det, "--backend", "torch"]
        commands[f"verify-face {det} default (auto)"] = [*cli, "verify-face", args.a, b, "--detector", det]
    commands["classify lenet5_digits"] = [*cli, "classify", str(ROOT / "sample_images/digits/digit_0.png"),
                                          "-m", "lenet5_digits"]
    load_before = os.getloadavg()
    times = time_commands(commands, repeats=args.repeats, warmup=1, env=env, cwd=ROOT)  # warmup fills the cache
    figures = {"load_average": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in os.getloadavg()],
               "repeats": args.repeats, "a": args.a, "b": b,
               "median_s": {name: round(statistics.median(t), 3) for name, t in times.items()},
               "all_s": {name: [round(x, 3) for x in t] for name, t in times.items()}}
    for name, seconds in figures["median_s"].items():
        print(f"{name:34s} {seconds:7.3f} s")
    print(f"load average {figures['load_average']} -> {figures['load_average_after']}")
    print(write_results("oneshot", figures))


if __name__ == "__main__":
    main()
