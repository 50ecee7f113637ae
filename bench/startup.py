"""Start-up cost of `cvtool --help`, against `python -c pass` in the same run (median of N).

    python bench/startup.py [--runs 10]

The three commands take turns (cvtool.bench.time_commands), after two untimed rounds that warm the file cache.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import time_commands  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    python = sys.executable
    times = time_commands({"python": [python, "-c", "pass"], "help": [python, "-m", "cvtool", "--help"],
                           "classify_help": [python, "-m", "cvtool", "classify", "--help"]},
                          repeats=args.runs, warmup=2)
    baseline, help_s, classify_help_s = (statistics.median(times[k]) for k in ("python", "help", "classify_help"))
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
