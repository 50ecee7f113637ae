"""How long the default test run (`make test`) takes: wall time, CPU time of pytest and every process it
started, and the machine's load average before and after (other jobs on the machine inflate the wall time;
the CPU time is what an idle machine would still have to do). Writes bench/results/test_time.json.

    python bench/test_time.py            # the default run, -m "not slow"
    python bench/test_time.py --slow     # the slow tests only
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from _results import write_results

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="time the slow tests (-m slow) instead")
    parser.add_argument("--durations", type=int, default=30, help="how many of the slowest tests to record")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist processes, as `make test` runs them")
    args = parser.parse_args()
    marker = "slow" if args.slow else "not slow"
    command = [sys.executable, "-m", "pytest", "-q", "-m", marker, "-n", str(args.workers),
               f"--durations={args.durations}", "-p", "no:cacheprovider"]
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # as `make test`: one thread per worker
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # pytest and every process it waited for
    sys.stdout.write(done.stdout[-6000:])
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    slowest = re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$", done.stdout, re.M)
    write_results("test_time_slow" if args.slow else "test_time", {
        "pytest": f'OMP_NUM_THREADS=1 pytest -q -m "{marker}" -n {args.workers}',
        "exit_status": done.returncode,
        "summary": summary,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "load_average_15min_after": round(load_after[2], 2),
        "slowest": [{"s": float(s), "phase": phase, "test": test} for s, phase, test in slowest],
    })


if __name__ == "__main__":
    main()
