"""Bad-input sweep: feed `cvtool classify` every kind of broken file and count tracebacks.

    python bench/bad_inputs.py

Each corpus file is run alone (its exit code and one-line message checked), then the whole corpus
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


def main() -> None:
    rows, tracebacks, wrong = [], 0, []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_bad_corpus(Path(tmp))
        for name, expected in sorted(corpus.items()):
            result = classify(str(Path(tmp) / name))
            crashed = "Traceback" in result.stderr
            tracebacks += crashed
            want_exit = 0 if expected == "" else 1
            last = result.stderr.strip().splitlines()[-2:] if result.stderr.strip() else []
            ok = result.returncode == want_exit and not crashed and (expected == "" or expected in result.stderr)
            if not ok:
                wrong.append(name)
            rows.append({"file": name, "exit": result.returncode, "expected_exit": want_exit, "ok": ok,
                         "stderr": last[0] if want_exit and last else ""})
        everything = classify(*(str(Path(tmp) / name) for name in sorted(corpus)))
        mixed = classify(str(Path(tmp) / "mixed"))
    batch_lines = everything.stdout.count("\n")
    figures = {
        "files_tried": len(rows),
        "tracebacks": tracebacks + ("Traceback" in everything.stderr) + ("Traceback" in mixed.stderr),
        "wrong_exit_or_message": wrong,
        "whole_corpus_in_one_call": {"exit": everything.returncode, "records": batch_lines, "inputs": len(corpus)},
        "mixed_directory": {"exit": mixed.returncode, "records": mixed.stdout.count("\n")},
        "per_file": rows,
    }
    write_results("bad_inputs", figures)
    sys.exit(1 if figures["tracebacks"] or wrong else 0)


if __name__ == "__main__":
    main()
