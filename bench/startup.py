"""Start-up cost of `cvtool --help`, `cvtool classify --help` and the thin client (`cvtool --server URL classify`,
jsonl and table), against `python -c pass` in the same run (median of N).

    python bench/startup.py [--runs 10] [--compare DIR]

The thin client talks to a `cvtool serve` this script starts on a free loopback port (lenet5_digits preloaded),
so what is timed is the client's own start-up and one request. `--compare DIR`: the same commands from another
checkout (e.g. `git worktree add /tmp/before REV`), taking turns with this one's, so the two are compared within
one run on one machine (ratios, not absolute times, are what survive a noisy machine). The commands take turns
(cvtool.bench.time_commands), after two untimed rounds that warm the file cache; one compute thread each.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import time_commands  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGIT = ROOT / "sample_images" / "digits" / "digit_0.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cvtool", "-q", "serve", "--port", str(port), "--preload",
                               "classify:lenet5_digits"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            return server, url
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"cvtool serve exited: {server.stderr.read().decode()[-300:]}")
            time.sleep(0.1)
    raise RuntimeError("cvtool serve did not start in 60 s")


def commands(python: str, url: str, tree: Path, label: str) -> dict[str, list[str]]:
    """This tree's commands, run with its own package first on the path."""
    run = [python, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); from cvtool.cli import main; "
                          "sys.argv = ['cvtool'] + sys.argv[1:]; main()"]
    client = [*run, "--server", url, "classify", str(DIGIT), "--model", "lenet5_digits"]
    return {f"{label}help": [*run, "--help"], f"{label}classify_help": [*run, "classify", "--help"],
            f"{label}client_jsonl": [*client, "-f", "jsonl"], f"{label}client_table": [*client, "-f", "table"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--compare", type=Path, help="another checkout whose commands take turns with this one's")
    args = parser.parse_args()
    python = sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()[0]
    server, url = start_server(env)
    try:
        todo = {"python": [python, "-c", "pass"], **commands(python, url, ROOT, "")}
        if args.compare is not None:
            todo.update(commands(python, url, args.compare.resolve(), "compare_"))
        times = time_commands(todo, repeats=args.runs, warmup=2, env=env)
    finally:
        server.terminate()
        server.wait(timeout=60)
    median = {name: round(statistics.median(values), 4) for name, values in times.items()}
    imports_torch = subprocess.run(
        [python, "-c", "import sys, cvtool.cli; print('torch' in sys.modules)"], capture_output=True, text=True
    ).stdout.strip()
    figures = {
        "runs": args.runs,
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "python_c_pass_s": median["python"],
        "cvtool_help_s": median["help"],
        "cvtool_classify_help_s": median["classify_help"],
        "thin_client_jsonl_s": median["client_jsonl"],
        "thin_client_table_s": median["client_table"],
        "help_over_python_ratio": round(median["help"] / median["python"], 2),
        "cli_module_imports_torch": imports_torch == "True",
        "target_s": 0.3,
    }
    if args.compare is not None:
        figures["compare"] = {"tree": str(args.compare), **{k: v for k, v in median.items() if k.startswith("compare_")},
                              **{f"ratio_{k}": round(median[k] / median[f"compare_{k}"], 3)
                                 for k in ("help", "classify_help", "client_jsonl", "client_table")}}
    write_results("startup", figures)


if __name__ == "__main__":
    main()
