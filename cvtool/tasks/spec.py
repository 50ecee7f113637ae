"""A task, declared once: what the CLI, the API, the server, the thin client and Ray read of it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from cvtool.errors import UsageError
from cvtool.tasks.options import Options

TABLE_FORMATS = ("table", "json", "jsonl", "csv")


class Table(NamedTuple):
    """The table/CSV shape of a mode's records: its header and the rows of one record's result."""

    columns: tuple[str, ...]
    rows: Callable[[dict], list[list]]


@dataclass(frozen=True)
class TaskSpec:
    """`api`: "module:Class" of the task object (imported only when used: declaring a task imports no torch).
    `options`: every option, in `--help` order. `columns`: the table/CSV header; the rows come from the task
    object's `rows(result)`. `formats`: what `--format` takes. `endpoint`: the server's path; `batched`: the
    server batches its requests; `png`: the endpoint may answer with an image instead of the record.
    `tables`: the shapes of the task's other modes (verify-face's pair, stylize's feed-forward network).
    `run_batch`: the option whose value is the batch size `run` takes (segment: the tiles per pass)."""

    name: str
    api: str
    summary: str
    epilog: str
    options: Options
    columns: tuple[str, ...] = ()
    rows: Callable[[dict], list[list]] = lambda result: []
    tables: dict[str, Table] = field(default_factory=dict)
    formats: tuple[str, ...] = TABLE_FORMATS
    inputs: tuple[str, str] = ("IMAGES...", "")
    default_model: str = ""
    endpoint: str | None = None
    batched: bool = False
    png: bool = False
    run_batch: str = "batch_size"

    @property
    def table(self) -> Table:
        return Table(self.columns, self.rows)

    def api_class(self):
        module, _, name = self.api.partition(":")
        return getattr(importlib.import_module(module), name)

    def check_needs_out(self, values: dict[str, Any], out) -> None:
        """A UsageError for a `needs_out` option given (--save-crops, ...) without --out."""
        for option in self.options:
            if option.needs_out and values.get(option.name) and out is None:
                raise UsageError(f"{option.cli_flag} needs --out DIR")

    def defaults(self, **select) -> dict[str, Any]:
        return self.options.defaults(**select)
