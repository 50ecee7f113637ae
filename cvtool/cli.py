"""The `cvtool` command: option parsing and printing only; the work is in cvtool.pipelines.

Heavy imports (torch, torchvision, cv2) happen inside the commands, so `cvtool --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from cvtool import __version__
from cvtool.errors import UsageError
from cvtool.console import SETTINGS, BatchSummary, check_out_dir, drive, exits_cleanly, info

app = typer.Typer(
    name="cvtool",
    help="Computer vision from the command line: classify images with pretrained or your own models.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="List, download ahead of time, and verify model weights.",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models_app, name="models")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class ListFormat(str, Enum):
    table = "table"
    json = "json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cvtool {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or log lines on stderr; errors still print."),
    offline: bool = typer.Option(
        False, "--offline", help="Never touch the network; weights must be cached already. Same as CVTOOL_OFFLINE=1."
    ),
) -> None:
    SETTINGS.debug, SETTINGS.quiet = debug, quiet
    if offline:
        os.environ["CVTOOL_OFFLINE"] = "1"


# Options shared by every batch command.
IMAGES_ARG = typer.Argument(..., metavar="IMAGES...", show_default=False, help="Image files, directories, glob patterns, or - to read paths from stdin.")
WEIGHTS_OPT = typer.Option(
    None, "--weights", "-w", help="A weights file: a cvtool checkpoint or a plain state_dict (then --model names it)."
)
DEVICE_OPT = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
BATCH_OPT = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass.")
WORKERS_OPT = typer.Option(2, "--workers", min=1, help="Threads decoding and preprocessing images.")
FORMAT_OPT = typer.Option(None, "--format", "-f", help="Output on stdout. Default: table on a terminal, jsonl otherwise.")
OUT_OPT = typer.Option(None, "--out", "-o", help="Directory for per-image outputs (created if missing).")
RECURSIVE_OPT = typer.Option(False, "--recursive", "-r", help="Descend into subdirectories of directory inputs.")
SKIP_OPT = typer.Option(False, "--skip-existing", help="With --out: skip inputs whose output already exists.")
MAX_PIXELS_OPT = typer.Option(100_000_000, "--max-pixels", min=1, help="Refuse larger images (decompression bombs).")


def _input_items(images: list[str], recursive: bool):
    """Expand inputs; a known count when nothing is read from stdin (for the progress bar)."""
    from cvtool.io.inputs import iter_inputs

    if images.count("-") > 1:
        raise UsageError("'-' (read paths from stdin) may be given once")
    items = iter_inputs(images, recursive=recursive, stdin=sys.stdin)
    if "-" in images:
        return items, None
    items = list(items)
    return items, len(items)


@app.command(
    epilog="Example: cvtool classify photos/ --model resnet50 --top-k 3 --format jsonl > labels.jsonl",
)
def classify(
    images: List[str] = IMAGES_ARG,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (see `cvtool models`). Default: resnet18."),
    weights: Optional[Path] = WEIGHTS_OPT,
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Labels to report per image."),
    batch_size: int = BATCH_OPT,
    device: str = DEVICE_OPT,
    fmt: Optional[OutputFormat] = FORMAT_OPT,
    out: Optional[Path] = OUT_OPT,
    recursive: bool = RECURSIVE_OPT,
    skip_existing: bool = SKIP_OPT,
    workers: int = WORKERS_OPT,
    max_pixels: int = MAX_PIXELS_OPT,
) -> None:
    """Classify images: top-k labels with probabilities, one record per image."""
    with exits_cleanly():
        if skip_existing and out is None:
            raise UsageError("--skip-existing needs --out DIR")
        check_out_dir(out)
        from cvtool.device import resolve_device
        from cvtool.io.records import make_writer
        from cvtool.models.loading import load_model
        from cvtool.pipelines import classify as task
        from cvtool.pipelines.runner import run

        items, total = _input_items(images, recursive)
        loaded = load_model(
            model, task="classify", weights=weights, device=resolve_device(device), progress=not SETTINGS.quiet,
            default="resnet18",
        )
        info(f"{loaded.name} on {loaded.device}, weights {Path(loaded.weights_path).name} (sha256 {loaded.weights_sha256[:12]})")
        pipeline = task.ClassifyPipeline(loaded, top_k=top_k, max_pixels=max_pixels, out_dir=out)
        summary = BatchSummary()

        def skip(path: str) -> bool:
            done = skip_existing and pipeline.already_done(path)
            summary.skipped += done
            return done

        records = run(pipeline, items, batch_size=batch_size, workers=workers, out_dir=out, skip=skip)
        writer = make_writer(fmt.value if fmt else None, task.COLUMNS, task.rows)
        drive(records, writer, total=total, summary=summary)
    raise typer.Exit(summary.exit_code)


@models_app.callback()
def models_list(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(None, "--task", help="Only models for this task (classify, ...)."),
    fmt: ListFormat = typer.Option(ListFormat.table, "--format", "-f", help="table or json."),
) -> None:
    """List every model: task, size, weights source, licence, and whether its weights are on this machine.

    Example: cvtool models --task classify --format json
    """
    if ctx.invoked_subcommand is not None:
        return
    with exits_cleanly():
        from cvtool.models import catalogue

        rows = catalogue.describe_all(task)
        if fmt is ListFormat.json:
            import json

            typer.echo(json.dumps(rows, indent=2))
        else:
            catalogue.print_table(rows)


@models_app.command("pull", epilog="Example: cvtool models pull resnet50 mobilenet_v3_large")
def models_pull(names: List[str] = typer.Argument(..., help="Model names whose default weights to download.")) -> None:
    """Download models' weights into the cache now (for air-gapped machines and container builds)."""
    with exits_cleanly():
        from cvtool.models import catalogue

        failed = catalogue.pull(names, progress=not SETTINGS.quiet)
    raise typer.Exit(1 if failed else 0)


@models_app.command("verify", epilog="Example: cvtool models verify")
def models_verify(names: Optional[List[str]] = typer.Argument(None, help="Models to check (default: all cached).")) -> None:
    """Re-hash cached weight files against their published hashes; exit 1 if any is corrupt."""
    with exits_cleanly():
        from cvtool.models import catalogue

        failed = catalogue.verify(names or None)
    raise typer.Exit(1 if failed else 0)


def main() -> None:
    app()
