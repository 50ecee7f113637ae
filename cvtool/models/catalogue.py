"""`cvtool models`: a view of the registry plus the weights cache."""

from __future__ import annotations

from cvtool.console import error_line, info
from cvtool.errors import CvtoolError
from cvtool.models.registry import get_entry, list_entries


def describe_all(task: str | None = None) -> list[dict]:
    return [
        {
            "name": e.name,
            "task": e.task,
            "family": e.family,
            "params_m": round(e.num_params / 1e6, 2) if e.num_params else None,
            "weights": e.weights.filename if e.weights else None,
            "source": e.weights.kind if e.weights else "none (--weights FILE)",
            "size_mb": getattr(e.weights, "size_mb", None),
            "on_disk": bool(e.weights and e.weights.is_available()),
            "licence": e.licence,
            "description": e.description,
        }
        for e in list_entries(task)
    ]


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


def pull(names: list[str], *, progress: bool = True) -> list[str]:
    """Fetch each model's default weights; return the names that failed (each reported on stderr)."""
    failed = []
    for name in names:
        try:
            entry = get_entry(name)
            if entry.weights is None:
                raise CvtoolError(f"{name} has no default weights to pull")
            path = entry.weights.local_path(progress=progress)
            info(f"{name}: {path}")
        except CvtoolError as exc:
            error_line(str(exc))
            failed.append(name)
    return failed


def verify(names: list[str] | None = None) -> list[str]:
    """Re-hash each cached download; return the names whose file does not match its published hash."""
    from cvtool.models import weights

    entries = [get_entry(n) for n in names] if names else list_entries()
    failed = []
    for entry in entries:
        source = entry.weights
        if source is None or source.kind != "download" or not source.is_available():
            if names:
                error_line(f"{entry.name}: weights are not in the cache; `cvtool models pull {entry.name}` fetches them")
                failed.append(entry.name)
            continue
        path = weights.cached_path(source.url)
        verdict = weights.verify(path, url=source.url, sha256=source.sha256)
        if verdict is False:
            error_line(f"{path}: corrupt: sha256 does not match the published hash; delete it and pull again")
            failed.append(entry.name)
        else:
            info(f"{entry.name}: {path}: {'ok' if verdict else 'no published hash to check'}")
    return failed
