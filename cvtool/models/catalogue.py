"""`cvtool models`: a view of the registry plus the weights cache.

Lines are reported through the `info` / `error` callbacks the caller passes (the CLI: cvtool.console's
info and error_line); models/ never imports the console. The defaults write `cvtool: <line>` to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from cvtool.errors import EXIT_INPUT_FAILED, EXIT_OK, EXIT_USAGE, CvtoolError
from cvtool.models.registry import get_entry, list_entries


def _stderr_line(message: str) -> None:
    sys.stderr.write(f"cvtool: {message}\n")
    sys.stderr.flush()


SNAPSHOT_PREFIX = "models-catalogue-"


def _fingerprint() -> str:
    """What the rows depend on: cvtool's model sources (where they are installed, size and mtime of every file
    under cvtool/models), the versions of the packages whose tables or files the entries read, and the
    variables that move the weights' folders."""
    import hashlib
    import os
    from importlib import metadata

    from cvtool.version import __version__

    parts: list = [__version__, str(Path(__file__).resolve().parent),
                   [os.environ.get(name) for name in ("TORCH_HOME", "XDG_CACHE_HOME", "HOME")]]
    for dist in ("torch", "torchvision", "opencv-python-headless", "opencv-python", "face_recognition_models"):
        try:
            parts.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            parts.append(None)
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        parts.append([str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _rows_from_registry() -> list[dict]:
    """Every registered entry as a row, plus where its weights are or would be on disk (`_file`), for `on_disk`."""
    rows = []
    for entry in list_entries():
        local = entry.weights.local_file() if entry.weights else None
        rows.append({**_row(entry), "_file": None if local is None else str(local)})
    return rows


def describe_all(task: str | None = None) -> list[dict]:
    """The rows of `cvtool models` / `cvtool.list_models()`. Building the registry imports torch and
    torchvision (seconds), so a process that has registered nothing yet (the CLI) reads the built-in rows from
    cvtool's cache, hash-checked, keyed by `_fingerprint`; only `on_disk` is looked up afresh. A process that
    already holds entries (its own register() calls among them) lists its registry."""
    from cvtool.errors import UsageError
    from cvtool.models.registry import registered_names

    rows = _rows_from_registry() if registered_names() else _builtin_rows()
    tasks = sorted({row["task"] for row in rows})
    if task is not None and task not in tasks:
        raise UsageError(f"unknown task {task!r}; the tasks: {', '.join(tasks)}")
    listed = []
    for row in rows:
        if task is None or row["task"] == task:
            local = row.pop("_file")
            listed.append({**row, "on_disk": local is not None and Path(local).is_file()})
    return listed


def _builtin_rows() -> list[dict]:
    """The built-in entries' rows from the snapshot; in a process that has registered nothing, so that only
    built-ins go into it (never a process's own entries). Missing, altered or stale: rebuilt and rewritten."""
    from cvtool.cache import cache_root, load_verified, write_verified

    path = cache_root() / f"{SNAPSHOT_PREFIX}{_fingerprint()}.json"
    data = load_verified(path)
    if data is not None:
        return json.loads(data)
    rows = _rows_from_registry()
    try:
        for stale in path.parent.glob(f"{SNAPSHOT_PREFIX}*"):
            stale.unlink(missing_ok=True)
        write_verified(path, json.dumps(rows).encode())
    except OSError:
        pass  # a read-only cache: list from the registry each time
    return rows


def _row(e) -> dict:
    return {
        "name": e.name,
        "task": e.task,
        "family": e.family,
        "params_m": round(e.num_params / 1e6, 2) if e.num_params else None,
        "weights": e.weights.filename if e.weights else None,
        "source": e.weights.kind if e.weights else "none (--weights FILE)",
        "size_mb": getattr(e.weights, "size_mb", None),
        "on_disk": None,  # looked up afresh at each listing (describe_all); the key keeps the column's place
        "licence": e.licence,
        "description": e.description,
    }


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("name", no_wrap=True)
    for column in ("task", "params (M)", "weights", "on disk", "licence"):
        table.add_column(column, overflow="fold")
    for row in rows:
        size = f"{row['size_mb']:.0f} MB" if row["size_mb"] else "? MB"
        source = f"download, {size}" if row["source"] == "download" else row["source"]
        table.add_row(
            row["name"], row["task"], str(row["params_m"] or "—"), source, "yes" if row["on_disk"] else "no",
            row["licence"],
        )
    Console().print(table)


def pull(names: list[str], *, progress: bool = True, info: Callable[[str], None] = _stderr_line,
         error: Callable[[str], None] = _stderr_line) -> int:
    """Fetch each model's default weights; each failure is reported on stderr and the rest still fetched.

    Returns the exit code the README documents: 0, or 2 (EXIT_USAGE: weights missing, unknown model)
    when any could not be had.
    """
    failed = []
    for name in names:
        try:
            entry = get_entry(name)
            if entry.weights is None:
                raise CvtoolError(f"{name} has no default weights to pull")
            path = entry.weights.local_path(progress=progress)
            info(f"{name}: {path}")
        except CvtoolError as exc:
            error(str(exc))
            failed.append(name)
    return EXIT_USAGE if failed else EXIT_OK


def verify(names: list[str] | None = None, *, info: Callable[[str], None] = _stderr_line,
           error: Callable[[str], None] = _stderr_line) -> int:
    """Re-hash each cached download (really re-read) against its published hash, one line per file.

    Returns 0, or 1 (EXIT_INPUT_FAILED: the others were still checked) when a file is corrupt or a
    named model's weights are not cached. With nothing cached, says so (and where the cache is).
    """
    from cvtool.models import weights

    entries = [get_entry(n) for n in names] if names else list_entries()
    failed, checked = [], 0
    for entry in entries:
        source = entry.weights
        if source is None or source.kind != "download" or not source.is_available():
            if names:
                error(f"{entry.name}: weights are not in the cache; `cvtool models pull {entry.name}` fetches them")
                failed.append(entry.name)
            continue
        checked += 1
        path = weights.cached_path(source.url)
        expected = weights.expected_sha256(source.url, source.sha256)
        actual = weights.sha256_file(path) if expected else None
        if expected and not actual.startswith(expected):
            error(f"{path}: corrupt: sha256 {actual[:12]}… does not match the published {expected[:12]}…; "
                       f"delete it and run `cvtool models pull {entry.name}`")
            failed.append(entry.name)
        else:
            if expected:
                weights.remember_sha256(path, actual)  # just read in full: the next load need not
            info(f"{entry.name}: {path}: {'ok' if expected else 'no published hash to check'}")
    if not names and checked == 0:
        info(f"nothing to verify: no model weights are cached in {weights.cache_dir()}/ "
             "(`cvtool models pull NAME` fetches them)")
    return EXIT_INPUT_FAILED if failed else EXIT_OK
