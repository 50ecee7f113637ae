"""Writing records to stdout in the format a user or a script asked for.

A record is the plain dict the pipeline yields per input (see README, "Records"). Each task gives
`columns` and a `rows(result)` flattener so that CSV and the terminal table need no task knowledge.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Callable, Iterable, TextIO

RowsFn = Callable[[dict], Iterable[list]]


class JsonLinesWriter:
    """One JSON object per line, flushed as it comes, so `| jq` and `| head` work on big batches."""

    def __init__(self, stream: TextIO, columns: list[str], rows: RowsFn):
        self.stream = stream

    def write(self, record: dict) -> None:
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class JsonWriter:
    """One JSON array, streamed: each record is written (and flushed) as it comes, so memory stays flat
    however long the batch; the document is the same bytes `json.dump(records, indent=2)` would write,
    and valid even when the batch is empty."""

    def __init__(self, stream: TextIO, columns: list[str], rows: RowsFn):
        self.stream = stream
        self.count = 0

    def write(self, record: dict) -> None:
        item = json.dumps(record, ensure_ascii=False, indent=2).replace("\n", "\n  ")
        self.stream.write(("[\n  " if self.count == 0 else ",\n  ") + item)
        self.stream.flush()
        self.count += 1

    def close(self) -> None:
        self.stream.write("\n]\n" if self.count else "[]\n")
        self.stream.flush()


class CsvWriter:
    """A header, then one row per flattened result (e.g. per top-k label); errors in their own column.
    `frame` is a video frame's index (the record's `frame`), empty for an image."""

    def __init__(self, stream: TextIO, columns: list[str], rows: RowsFn):
        self.columns, self.rows = columns, rows
        self.writer = csv.writer(stream, lineterminator="\n")
        self.writer.writerow(["path", "frame", *columns, "error"])
        self.stream = stream

    def write(self, record: dict) -> None:
        if "error" in record:
            self.writer.writerow([record["path"], "", *([""] * len(self.columns)), record["error"]])
        else:
            frame = record.get("frame", "")
            for row in self.rows(record["result"]):
                self.writer.writerow([record["path"], frame, *row, ""])
        self.stream.flush()

    def close(self) -> None:
        pass


class TableWriter:
    """A rich table for people at a terminal, printed once the batch is done."""

    def __init__(self, stream: TextIO, columns: list[str], rows: RowsFn):
        from rich.console import Console

        self.console = Console(file=stream, soft_wrap=False)
        self.columns, self.rows = columns, rows
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)

    def close(self) -> None:
        from rich.table import Table

        table = Table(show_lines=False)
        for name in ["path", *self.columns, "ms"]:
            table.add_column(name, overflow="fold")
        for record in self.records:
            if "error" in record:
                table.add_row(record["path"], f"[red]error: {record['error']}[/red]", *([""] * len(self.columns)))
                continue
            for i, row in enumerate(self.rows(record["result"])):
                first = i == 0
                table.add_row(
                    record["path"] if first else "", *(_cell(v) for v in row), f"{record['ms']:.1f}" if first else ""
                )
        self.console.print(table)


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


FORMATS = {"table": TableWriter, "json": JsonWriter, "jsonl": JsonLinesWriter, "csv": CsvWriter}


def make_writer(fmt: str | None, columns: list[str], rows: RowsFn, stream: TextIO | None = None,
                extra_formats: dict | None = None):
    """`fmt=None` picks a table for a terminal and JSON Lines for a pipe or file; a task may add its
    own formats (detection's coco and yolo)."""
    stream = stream or sys.stdout
    if fmt is None:
        fmt = "table" if stream.isatty() else "jsonl"
    return {**FORMATS, **(extra_formats or {})}[fmt](stream, columns, rows)
