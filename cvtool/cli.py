"""The `cvtool` command: option parsing and printing only; the work is in cvtool.pipelines.

Heavy imports (torch, torchvision, cv2) happen inside the commands, so `cvtool --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from cvtool.version import __version__
from cvtool.errors import UsageError
from cvtool.io.outputs import check_out_dir
from cvtool.console import (
    SETTINGS,
    BatchSummary,
    drive,
    error_line,
    exits_cleanly,
    info,
    StepProgress,
    loading_options,
)
from cvtool import cli_tools
from cvtool.cli_tools import print_calibration
from cvtool.cli_train import train_app
from cvtool.cli_build import FORMAT, IMAGES, command
from cvtool.tasks import common
from cvtool.tasks import specs as task_specs
from cvtool.tasks.options import RUN

app = typer.Typer(
    name="cvtool",
    help="Computer vision from the command line: classify, detect, segment, verify faces and stylize images with "
    "pretrained or your own models, and train those models. Results on stdout, progress and errors on stderr.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


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
    server: Optional[str] = typer.Option(None, "--server", metavar="URL", help="Send classify, detect, segment, "
                                         "stylize --model and verify-face to a running `cvtool serve`. Same as "
                                         "CVTOOL_SERVER=URL."),
) -> None:
    SETTINGS.debug, SETTINGS.quiet = debug, quiet
    if offline:
        os.environ["CVTOOL_OFFLINE"] = "1"
    if server:
        os.environ["CVTOOL_SERVER"] = server


def _input_items(images: list[str], recursive: bool, out: Optional[Path] = None):
    """Expand inputs (cvtool.io.inputs.expand_inputs): items, and their count when known (for the progress bar)."""
    from cvtool.io.inputs import expand_inputs

    return expand_inputs(images, recursive=recursive, stdin=sys.stdin, out_dir=out,
                         on_previous_outputs=lambda n: info(f"{n} previous cvtool output(s) in --out not taken as inputs"))


def _server() -> Optional[str]:
    """The `cvtool serve` to send work to (CVTOOL_SERVER or --server), if any."""
    return os.environ.get("CVTOOL_SERVER") or None


def _remote(task: str, images: list[str], **kwargs) -> None:
    """Run the command as a thin client of the server (cvtool.serve.client: no torch); exits with its code."""
    with exits_cleanly():
        from cvtool.serve import client

        code = client.run_remote(task, images, **kwargs)
    raise typer.Exit(code)


def _run_batch(task, images, *, recursive, out, skip_existing, batch_size, workers, fmt, vid_stride=1,
               shard=None, records=None, **run_options) -> int:
    """Stream inputs through an API object's `run` into the chosen writer; the exit code for the batch."""
    from cvtool.io.journal import Journal
    from cvtool.io.records import make_writer
    from cvtool.io.shards import select

    items, total = _input_items(images, recursive, out)
    if shard is not None:  # only this shard's inputs (counted for the progress bar when the list is known)
        items = select(items, shard)
        if total is not None:
            items = list(items)
            total = len(items)
    journal = Journal(records) if records is not None else None
    summary = BatchSummary()
    recorded = 0

    def skipped(path: str) -> None:
        nonlocal recorded
        if journal is not None and journal.done(path):
            recorded += 1
        else:
            summary.skipped += 1

    try:
        results = task.run(items, out=out, batch_size=batch_size, workers=workers, skip_existing=skip_existing,
                           vid_stride=vid_stride, on_skip=skipped, records=journal, **run_options)
        writer = make_writer(fmt.value if fmt else None, task.columns, task.rows, extra_formats=task.extra_formats)
        try:
            drive((result.record for result in results), writer, total=total, summary=summary)
        finally:  # on Ctrl-C or a closed stdout, close the pipeline now: a half-written video is removed, not kept
            results.close()
    finally:
        if journal is not None:
            journal.close()
    if recorded:
        info(f"{recorded} skipped (done in {records})")
    return summary.exit_code


def _scale(shard: Optional[str], records: Optional[Path], threads: Optional[int]):
    """--shard K/N parsed, and this process's compute threads set (--threads, or its share of the cores when
    sharded), before anything loads. Returns (K, N) or None."""
    with exits_cleanly():
        from cvtool.io.shards import parse_shard

        parsed = parse_shard(shard) if shard is not None else None
        if _server():
            if parsed is not None or records is not None:
                raise UsageError("--shard and --records run the batch on this machine; they are not sent to a cvtool "
                                 "serve (drop --server / CVTOOL_SERVER)")
            return parsed
        from cvtool.device import default_threads, set_threads

        set_threads(default_threads(threads, parsed))
    return parsed


# -- the task commands, made from the task table (cvtool.tasks; cvtool/cli_build.py) -----------------

def _api_values(spec, values: dict, names) -> dict:
    """The API keyword arguments among the parsed values: comma lists parsed, as the table says."""
    return {name: spec.options[name].parse_text(values[name]) for name in names if name in values}


def _load_and_call(spec, values: dict) -> dict:
    """What the task object's constructor takes of the parsed values (the LOAD and CALL options but the model)."""
    names = [o.name for o in spec.options.select(route="api") if o.stage != RUN and o.name != "model"]
    return _api_values(spec, values, names)


def _remote_or_none(spec, values: dict, **modes) -> None:
    """With a server (--server / CVTOOL_SERVER): run there (exits); the options sent are the table's `server` ones,
    and the saves the client makes itself (--save-crops, ...) its `needs_out` ones."""
    if not _server():
        return
    _remote(spec.name, values[IMAGES] or [], fmt=values[FORMAT], out=values.get("out"),
            recursive=values.get("recursive", False), skip_existing=values.get("skip_existing", False),
            save={o.name: values[o.name] for o in spec.options if o.needs_out},
            options={o.name: values[o.name] for o in spec.options.select(route="server") if o.name in values},
            **modes)


def _batch_task(spec, values: dict, after=None) -> None:
    """classify, detect, segment: load the model once, then the batch into the chosen writer (then `after(task)`)."""
    shard_of = _scale(values["shard"], values["records"], values["threads"])
    _remote_or_none(spec, values)
    with exits_cleanly():
        spec.check_needs_out(values, values["out"])
        check_out_dir(values["out"], skip_existing=values["skip_existing"])
        task = spec.api_class()(values["model"], **_load_and_call(spec, values), **loading_options())
        info(task.describe())
        code = _run_batch(task, values[IMAGES], recursive=values["recursive"], out=values["out"],
                          skip_existing=values["skip_existing"], batch_size=values[spec.run_batch],
                          workers=values["workers"], fmt=values[FORMAT], vid_stride=values["vid_stride"],
                          buffer=values["buffer"], shard=shard_of, records=values["records"])
        if after is not None:
            after(task)
    raise typer.Exit(code)


def _track(spec, values: dict) -> None:
    """track: a batch on this machine (never sent to a server: a tracker's state spans a sequence's frames), then
    each sequence's line/zone counts on stderr."""
    from cvtool.ops.counting import counts_text

    if _server():
        with exits_cleanly():
            raise UsageError("cvtool track runs on this machine (its tracker follows each video's frames in order); "
                             "drop --server / CVTOOL_SERVER")

    def summary(task) -> None:
        for path, counts in task.counts.items():
            info(f"{path}: {counts_text(counts)}")

    _batch_task(spec, values, after=summary)


def _stylize(spec, values: dict) -> None:
    """The two modes (cvtool.tasks.stylize): a feed-forward --model network, or the optimisation."""
    from cvtool.tasks import stylize as mode

    shard_of = _scale(values["shard"], values["records"], values["threads"])
    _remote_or_none(spec, values)
    with exits_cleanly():
        from cvtool.api import Stylizer

        feed_forward = values["model"] is not None
        contents, styles = mode.split_inputs(values[IMAGES], values["style"], feed_forward)
        run = dict(recursive=False, out=values["out"], skip_existing=values["skip_existing"], batch_size=1,
                   workers=1, fmt=values[FORMAT], shard=shard_of, records=values["records"])
        if feed_forward:  # every positional is a content image or video
            task = Stylizer(values["model"], **_api_values(spec, values, mode.FEED_FORWARD), **loading_options())
            info(task.describe())
            raise typer.Exit(_run_batch(task, contents, vid_stride=values["vid_stride"], **run))
        with StepProgress() as progress:
            task = Stylizer(style=styles, on_step=progress, **_api_values(spec, values, mode.OPTIMISATION),
                            **loading_options())
            info(task.describe())
            code = _run_batch(task, contents, save_every=values["save_every"], **run)
    raise typer.Exit(code)


def _verify_face(spec, values: dict) -> None:
    """The three modes (cvtool.tasks.verify_face.mode): a pair, a --gallery batch, --calibrate."""
    from cvtool.tasks import verify_face as rules

    images = values[IMAGES] or []
    shard_of = _scale(values["shard"], values["records"], values["threads"])
    _remote_or_none(spec, {**values, IMAGES: images}, gallery=values["gallery"], calibrate=values["calibrate"])
    with exits_cleanly():
        mode = rules.mode(images, gallery=values["gallery"], calibrate=values["calibrate"], shard=shard_of,
                          records=values["records"])
        check_out_dir(values["out"], skip_existing=values["skip_existing"])
        indices = rules.face_indices(values["face_index"])
        verifier = spec.api_class()(values["model"], **_load_and_call(spec, values), **loading_options())
        info(verifier.describe())
        if mode == "calibrate":
            report = verifier.calibrate(values["calibrate"])
            for failed in report["failed"]:
                error_line(f"{failed['error']} (pair skipped)")
            for warning in report["warnings"]:
                error_line(f"warning: {warning}")
            print_calibration(report, as_json=values[FORMAT] is not None and values[FORMAT].value in ("json", "jsonl"))
            raise typer.Exit(0)
        if mode == "gallery":
            known = verifier.gallery(values["gallery"], warn=error_line)
            info(f"gallery: {len(known.names)} photo(s) of {len(set(known.names))} people, threshold "
                 f"{verifier.threshold}")
            code = _run_batch(verifier, images, recursive=values["recursive"], out=values["out"],
                              skip_existing=values["skip_existing"], batch_size=values["batch_size"],
                              workers=values["workers"], fmt=values[FORMAT], vid_stride=values["vid_stride"],
                              buffer=values["buffer"], gallery=known, shard=shard_of, records=values["records"])
            raise typer.Exit(code)
        code = _verify_pair(spec, verifier, images, indices, values["out"], values[FORMAT])
    raise typer.Exit(code)


def _verify_pair(spec, verifier, images: list[str], indices, out: Optional[Path], fmt) -> int:
    """0 same person, 1 different; a face that cannot be had is an error (2), never a guess."""
    from cvtool.errors import EXIT_USAGE, InputError
    from cvtool.io.records import make_writer

    table = spec.tables["pair"]
    writer = make_writer(fmt.value if fmt else None, table.columns, table.rows)
    try:
        result = verifier.verify(images[0], images[1], index_a=indices[0], index_b=indices[1])
    except InputError as exc:
        error_line(str(exc))
        writer.write({"path": exc.path or images[0], "error": exc.reason})
        writer.close()
        return EXIT_USAGE
    record = result.record
    if out is not None:
        record["outputs"] = verifier.save_pair(result, out)
    writer.write(record)
    writer.close()
    return 0 if result.same else 1


_BODIES = {"stylize": _stylize, "track": _track, "verify-face": _verify_face}
for _spec in task_specs():
    command(app, _spec, _BODIES.get(_spec.name, _batch_task), images_help=common.IMAGES_HELP,
            images_required=_spec.name != "verify-face")
app.add_typer(cli_tools.tools)  # export, bench, ray, serve
app.add_typer(cli_tools.models_app, name="models")
app.add_typer(train_app, name="train")  # its commands are built from the recipes' dataclasses (cvtool/cli_train.py)
app.add_typer(cli_tools.val_app, name="val")


def _dash_file_hint(argv: list[str]) -> str | None:
    """A file named like an option (`-leading.jpg`) is read as one; the usage error then says how to name it."""
    for arg in argv:
        if arg == "--":
            return None
        if arg.startswith("-") and len(arg) > 1 and os.path.exists(arg):
            return f"{arg} is a file whose name starts with '-': give it as ./{arg} (or after --)"
    return None


def main() -> None:
    if "RANK" not in os.environ:  # the usual case: one process
        try:
            app()
        except SystemExit as exc:
            hint = _dash_file_hint(sys.argv[1:]) if exc.code == 2 else None
            if hint:
                error_line(hint)
            raise
        return
    from cvtool.train.distributed import end_rank  # a rank torchrun started: a finished one skips the teardown

    try:
        app()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    end_rank(0)
