"""What each process runs when a Python caller asks `cvtool.train.<task>(..., devices=N)`:
`python -m cvtool.train._launched TASK KWARGS_JSON` under torchrun (see cvtool.train.distributed.launch)."""

from __future__ import annotations

import json
import sys

from cvtool.errors import CvtoolError


def main(argv: list[str]) -> int:
    import cvtool.train

    task, kwargs = argv[0], json.loads(argv[1])
    try:
        getattr(cvtool.train, task)(**kwargs)
    except CvtoolError as exc:
        sys.stderr.write(f"cvtool: {exc}\n")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    from cvtool.train.distributed import end_rank

    code = main(sys.argv[1:])
    if code:
        raise SystemExit(code)
    end_rank(0)  # a finished rank skips the interpreter's teardown (see end_rank)
