"""Batch inference on Ray Data: an actor pool of cvtool API objects, each loading its model once.

    from cvtool.scale import ray_run
    ray_run("classify", ["photos/"], model="resnet50", out_jsonl="labels.jsonl", num_workers=8, num_gpus=1)

The driver expands the inputs as the CLI does (directories, globs, files); Ray Data hands batches of
paths to `num_workers` actors (each on `num_cpus` CPUs, or `num_gpus` GPUs); each actor runs its batch
through the task object's `run`, so the records are exactly those `cvtool TASK` prints (a bad input is an
error record, a video one record per kept frame). Records come back in input order. Ray is an optional
extra: `pip install 'cvtool[ray]'`; `ray.init()` is called unless Ray is already initialised (set
RAY_ADDRESS, or call `ray.init(address=...)` first, to use a cluster).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from cvtool import tasks
from cvtool.errors import UsageError
from cvtool.tasks.common import BATCH_SIZE

TASKS = {spec.name: spec for spec in tasks.specs()}  # the task table's: name -> its TaskSpec (API class, options)
GALLERY = "gallery"  # a task option naming known people: built into the object's gallery, its `run`'s argument


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("Ray is not installed: pip install 'cvtool[ray]'") from None
    return ray


class _Worker:
    """One Ray actor: the task's API object, built once, run on each batch of paths."""

    def __init__(self, task: str, options: dict, run_options: dict):
        options = dict(options)
        gallery = options.pop(GALLERY, None)
        self.model = TASKS[task].api_class()(**options)
        self.run_args = (self.model.gallery(gallery),) if gallery is not None else ()
        self.run_options = run_options

    def __call__(self, batch: dict) -> dict:
        from cvtool.io.inputs import InputItem

        items = [InputItem(str(path), str(error) or None) for path, error in zip(batch["path"], batch["error"])]
        records = [json.dumps(r.record, ensure_ascii=False)
                   for r in self.model.run(items, *self.run_args, **self.run_options)]
        return {"record": records}


def actor_run_options(*, batch_size: int, vid_stride: int, out, num_cpus: float, num_gpus: float) -> dict:
    """What each actor's `run` gets. Decoding threads: on a GPU actor, its CPUs (the host's job there is feeding
    the GPU); on a CPU actor, 1 (its CPUs run the network's threads)."""
    options = {"batch_size": batch_size, "vid_stride": vid_stride,
               "workers": max(1, int(num_cpus)) if num_gpus else 1}
    if out is not None:
        options["out"] = os.fspath(out)
    return options


def ray_records(task: str, inputs: str | Path | Iterable[str | Path], *, num_workers: int = 2,
                num_cpus: float = 1, num_gpus: float = 0, batch_size: int = BATCH_SIZE.default, recursive: bool = False,
                out: str | Path | None = None, vid_stride: int = 1, threads: int | None = None,
                **options: Any) -> Iterator[dict]:
    """The records of `task` over `inputs`, in input order, computed by `num_workers` Ray actors.

    `options` go to the task's API class (`model=`, `weights=`, `top_k=`, `conf=`, ...; `gallery=DIR` for
    verify-face); `out` is each actor's output directory (a shared filesystem on a cluster); `threads` is
    each actor's compute threads (default: its `num_cpus`)."""
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    if num_workers < 1:
        raise UsageError("num_workers must be at least 1")
    ray = _import_ray()
    from cvtool.io.inputs import expand_inputs

    specs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    expanded, _ = expand_inputs([os.fspath(s) for s in specs], recursive=recursive, out_dir=out)
    items = list(expanded)
    if GALLERY in TASKS[task].options.names() and not options.get(GALLERY):  # its batch mode names faces
        raise UsageError(f"{task} on Ray names faces against a gallery: give gallery=DIR")
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    options = {"device": "cuda" if num_gpus else "cpu",
               "threads": threads if threads is not None else max(1, int(num_cpus)), **options}
    run_options = actor_run_options(batch_size=batch_size, vid_stride=vid_stride, out=out, num_cpus=num_cpus,
                                    num_gpus=num_gpus)
    if not items:
        return
    import logging

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # records in input order, as the single process has them
    ctx.enable_progress_bars = False  # stderr is for cvtool's own lines
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # error items (a missing file, an empty glob) travel too: the actor's run makes their error records
    rows = [{"path": item.path, "error": item.error or ""} for item in items]
    ds = ray.data.from_items(rows).map_batches(
        _Worker, fn_constructor_kwargs={"task": task, "options": options, "run_options": run_options},
        concurrency=num_workers, batch_size=batch_size, num_cpus=num_cpus, num_gpus=num_gpus, batch_format="numpy")
    for row in ds.iter_rows():
        yield json.loads(row["record"])


def ray_run(task: str, inputs, *, out_jsonl: str | Path | None = None, **kwargs) -> int:
    """`ray_records` written as JSON Lines to `out_jsonl` (streamed into a temporary file, renamed into
    place when complete) or to stdout; returns the number of error records (0: every input succeeded)."""
    import sys

    from cvtool.io.atomic import atomic_open

    def write(stream) -> int:
        failed = 0
        for record in ray_records(task, inputs, **kwargs):
            failed += "error" in record
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            stream.flush()
        return failed

    if out_jsonl is None:
        return write(sys.stdout)
    with atomic_open(out_jsonl, "w", encoding="utf-8") as stream:
        return write(stream)
