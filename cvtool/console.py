"""What the CLI shows on stderr (errors, progress, summaries) and how it ends (exit codes).

Kept apart from cli.py so that every subcommand drives its pipeline the same way.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Iterator

import typer

from cvtool.errors import EXIT_BROKEN_PIPE, EXIT_INPUT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, CvtoolError


@dataclass
class Settings:
    """Options given before the subcommand (`cvtool --quiet classify ...`)."""

    debug: bool = False
    quiet: bool = False


SETTINGS = Settings()


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    """`cvtool: <file>: <reason>`, the one-line shape every error takes."""
    sys.stderr.write(f"cvtool: {message}\n")
    sys.stderr.flush()


def info(message: str) -> None:
    """A log line on stderr, silenced by --quiet (errors never are)."""
    if not SETTINGS.quiet:
        error_line(message)


@contextlib.contextmanager
def exits_cleanly() -> Iterator[None]:
    """Turn what escapes a command into one line and an exit code; tracebacks only with --debug."""
    try:
        yield
    except CvtoolError as exc:
        _maybe_traceback()
        error_line(str(exc))
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        error_line("interrupted")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # `cvtool ... | head`: the reader has gone; stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        raise SystemExit(EXIT_BROKEN_PIPE) from None
    except (SystemExit, GeneratorExit, typer.Exit, typer.Abort, typer.TyperException):  # typer's own to handle
        raise
    except Exception as exc:  # a bug: say so in one line, and how to see more
        _maybe_traceback()
        error_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        raise SystemExit(EXIT_INTERNAL) from None


def _maybe_traceback() -> None:
    if SETTINGS.debug:
        traceback.print_exc()


@dataclass
class BatchSummary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_INPUT_FAILED if self.failed else EXIT_OK


def drive(records: Iterable[dict], writer, *, total: int | None, summary: BatchSummary) -> BatchSummary:
    """Pass records to the writer, report bad inputs on stderr as they happen, show progress."""
    with _progress(total) as advance:
        for record in records:
            if "error" in record:
                summary.failed += 1
                error_line(f"{record['path']}: {record['error']}")
            else:
                summary.ok += 1
            writer.write(record)
            advance()
    writer.close()
    parts = [f"{summary.ok} ok", f"{summary.failed} failed"]
    if summary.skipped:
        parts.append(f"{summary.skipped} skipped (output exists)")
    info(", ".join(parts))
    return summary


@contextlib.contextmanager
def _progress(total: int | None):
    if SETTINGS.quiet or not sys.stderr.isatty() or os.environ.get("CVTOOL_NO_PROGRESS"):
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        task = progress.add_task("images", total=total)
        yield lambda: progress.advance(task)


class TrainProgress:
    """Training progress on stderr: a bar per epoch (loss, images/s, ETA) and one summary line per epoch."""

    def __init__(self):
        self.live = not (SETTINGS.quiet or not sys.stderr.isatty() or os.environ.get("CVTOOL_NO_PROGRESS"))
        self.progress = None
        self.task = None
        self.run = None  # cvtool.train.Run, once training has started

    def on_train_start(self, run) -> None:
        self.run = run
        info(f"{'resuming' if run.resumed else 'training'} {run.arch} on {run.device} into {run.run_dir}")

    def __enter__(self):
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"), console=stderr_console(), transient=True,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=batches, status="")

    def on_batch(self, epoch: int, batch: int, loss: float, images_per_s: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=batch, status=f"loss {loss:.4f}  {images_per_s:.3g} img/s")

    def on_epoch_end(self, row: dict) -> None:
        parts = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}"]
        parts += [f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_")]
        parts += [f"lr {row['lr']:.2e}", f"{row['train_images_per_s']:.3g} img/s"]
        info("  ".join(parts))


class ListFormat(str, Enum):
    """--format of the commands that print a table for people or JSON for scripts."""

    table = "table"
    json = "json"


def wants_json(fmt: ListFormat | None) -> bool:
    """JSON when asked, or by default when stdout is not a terminal."""
    return fmt is ListFormat.json or (fmt is None and not sys.stdout.isatty())


def skipping(message: str) -> None:
    """A file left out (unreadable, not an image): one line on stderr, silenced by --quiet."""
    info(f"skipping {message}")


def print_report(report: dict, *, as_json: bool) -> None:
    """A classification evaluation on stdout: JSON for scripts, a per-class table for people."""
    import json

    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"accuracy {report['accuracy']:.4f} on {report['images']} images")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column)
    for name, row in report["per_class"].items():
        table.add_row(name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
    Console().print(table)


class StepProgress:
    """A bar over optimisation steps (stylize): step, losses, ETA; nothing when stderr is not a terminal."""

    def __init__(self):
        self.live = not (SETTINGS.quiet or not sys.stderr.isatty() or os.environ.get("CVTOOL_NO_PROGRESS"))
        self.progress, self.task = None, None

    def __enter__(self):
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("stylizing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     TextColumn("{task.fields[status]}"), console=stderr_console(), transient=True)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, report) -> None:
        if self.progress is None:
            return
        if self.task is None or report.step == 1:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task("", total=report.steps, status="")
        losses = report.losses
        status = f"content {losses.get('content', 0):.3g}  style {losses.get('style', 0):.3g}"
        self.progress.update(self.task, completed=report.step, status=status)


def loading_options() -> dict:
    """How the API objects load models from the CLI: progress bars unless --quiet, and a note when exporting."""
    return {"progress": not SETTINGS.quiet, "on_export": lambda path: info(f"exporting to ONNX once, into {path}")}
