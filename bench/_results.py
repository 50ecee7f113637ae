"""Where every bench script writes its figures: bench/results/<name>.json, with the command that made them.

CVTOOL_BENCH_RESULTS=DIR writes them to DIR instead (a trial run that must not replace the recorded figures).
Every script times with cvtool.bench's helpers: time_calls (interleaved, warm-up first), timed() (one phase),
time_commands (whole processes)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

RESULTS = Path(os.environ.get("CVTOOL_BENCH_RESULTS") or Path(__file__).parent / "results")


def machine() -> dict:
    from cvtool.device import cpu_description

    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "cpu": cpu_description(), "load_avg_1min": round(os.getloadavg()[0], 2)}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_results(name: str, figures: dict, echo: bool = True) -> Path:
    """`echo`: also print the figures (False for a script that rewrites its file as it goes)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "command": shlex.join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "figures": figures,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    if echo:
        print(json.dumps(figures, indent=2))
    return path
