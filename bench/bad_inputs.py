"""Bad-input sweep: feed `cvtool classify` every kind of broken file and count tracebacks.

    python bench/bad_inputs.py

Each corpus entry is run alone (its exit code and one-line message checked), then the whole corpus
and a mixed directory in one call (the batch must go on past every bad file and exit 1).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from _results import write_results  # noqa: E402
from badinputs import make_bad_corpus  # noqa: E402

COMMAND = [sys.executable, "-m", "cvtool", "classify", "--model", "lenet5_digits", "--format", "jsonl"]


def classify(*inputs: str) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *inputs], capture_output=True, text=True, timeout=300)


def check(path: Path, expected: str) -> dict:
    """One input alone: "" must succeed (exit 0); anything else must fail with that reason (exit 1)."""
    result = classify(str(path))
    want_exit = 0 if expected == "" else 1
    crashed = "Traceback" in result.stderr
    ok = result.returncode == want_exit and not crashed and expected in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("cvtool: ") and ": " in line[8:]
                   and (line.endswith(expected) or expected in line)]
    first_line = error_lines[0] if want_exit and error_lines else ""  # the input's own one-line error
    return {"file": path.name, "exit": result.returncode, "expected_exit": want_exit, "ok": ok,
            "traceback": crashed, "stderr": first_line}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = make_bad_corpus(tmp)
        (tmp / "empty_dir").mkdir()
        corpus.update({"missing.jpg": "no such file", "empty_dir": "no image or video files in directory"})
        rows = [check(tmp / name, expected) for name, expected in sorted(corpus.items())]
        everything = classify(*(str(tmp / name) for name in sorted(corpus)))
        mixed = classify(str(tmp / "mixed"))
    figures = {
        "files_tried": len(rows),
        "tracebacks": sum(r["traceback"] for r in rows) + ("Traceback" in everything.stderr) + ("Traceback" in mixed.stderr),
        "wrong_exit_or_message": [r["file"] for r in rows if not r["ok"]],
        "whole_corpus_in_one_call": {"exit": everything.returncode, "records": everything.stdout.count("\n"),
                                     "inputs": len(corpus)},
        "mixed_directory": {"exit": mixed.returncode, "records": mixed.stdout.count("\n")},
        "per_file": rows,
    }
    write_results("bad_inputs", figures)
    sys.exit(1 if figures["tracebacks"] or figures["wrong_exit_or_message"] else 0)


if __name__ == "__main__":
    main()
