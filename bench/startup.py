"""Start-up cost of `cvtool --help`, against `python -c pass` in the same run (median of N).

    python bench/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402


def median_seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    python = sys.executable
    median_seconds([python, "-m", "cvtool", "--help"], 2)  # warm the file cache
    baseline = median_seconds([python, "-c", "pass"], args.runs)
    help_s = median_seconds([python, "-m", "cvtool", "--help"], args.runs)
    classify_help_s = median_seconds([python, "-m", "cvtool", "classify", "--help"], args.runs)
    imports_torch = subprocess.run(
        [python, "-c", "import sys, cvtool.cli; print('torch' in sys.modules)"], capture_output=True, text=True
    ).stdout.strip()
    write_results(
        "startup",
        {
            "runs": args.runs,
            "python_c_pass_s": round(baseline, 4),
            "cvtool_help_s": round(help_s, 4),
            "cvtool_classify_help_s": round(classify_help_s, 4),
            "help_over_python_ratio": round(help_s / baseline, 2),
            "cli_module_imports_torch": imports_torch == "True",
            "target_s": 0.3,
        },
    )


if __name__ == "__main__":
    main()
