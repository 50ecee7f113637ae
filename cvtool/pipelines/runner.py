"""The one pipeline shape every task shares.

decode + preprocess in worker threads -> batched inference -> postprocess to plain records -> write
outputs atomically -> yield one record per input, in input order. Tasks supply the three
task-specific steps (`prepare`, `predict`, `save`); nothing here prints. Video files and cameras
go frame by frame through the same steps (cvtool/pipelines/video.py).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Generator, Iterable, Iterator

from cvtool.errors import CvtoolError, UsageError, WeightsError
from cvtool.io.inputs import InputItem
from cvtool.pipelines.base import Pipeline, error_record, result_record
from cvtool.pipelines.video import run_video


@dataclass
class _Pending:
    path: str
    future: Future | None  # None when the input was bad before decoding (e.g. a missing file)
    error: str | None = None


@dataclass
class _Prepared:
    path: str
    sample: Any = None
    error: str | None = None
    ms: float = 0.0
    result: dict | None = None  # filled in by predict


def already_done(pipeline: Pipeline, path: str) -> bool:
    """For --skip-existing: the input's output is there, written by cvtool (for a video, its annotated video;
    a camera or a live stream never is done)."""
    from cvtool.io.outputs import written_by_cvtool
    from cvtool.io.video import is_live, is_stream

    if is_stream(path):
        if pipeline.no_video_reason is not None or pipeline.video_name is None or is_live(path):  # None: no --out
            return False
        try:
            return written_by_cvtool(pipeline.video_name(path))
        except CvtoolError:  # an unusable name is not "done": writing it reports the problem
            return False
    return pipeline.already_done(path)


def run(
    pipeline: Pipeline,
    items: Iterable[InputItem],
    *,
    batch_size: int = 16,
    workers: int = 2,
    out_dir: Path | None = None,
    skip: Callable[[str], bool] | None = None,
    vid_stride: int = 1,
    lock: ContextManager | None = None,
) -> Generator[dict, None, None]:
    """Yield one record per input (per kept frame of a video), in input order, overlapping decoding
    with inference. Runs of images are batched together; each video is streamed on its own. `lock`
    (held around each forward pass) lets several callers share one loaded model."""
    lock = lock if lock is not None else contextlib.nullcontext()
    from cvtool.io.video import is_stream

    def streamed(item: InputItem) -> bool:
        return item.error is None and is_stream(item.path)

    for videos, group in itertools.groupby(items, key=streamed):
        if not videos:
            yield from _run_images(pipeline, group, batch_size=batch_size, workers=workers, out_dir=out_dir, skip=skip,
                                   lock=lock)
            continue
        for item in group:
            if skip is None or not skip(item.path):
                yield from run_video(pipeline, item.path, batch_size=batch_size, stride=vid_stride, out_dir=out_dir,
                                     lock=lock)


def _run_images(pipeline, items, *, batch_size, workers, out_dir, skip, lock) -> Iterator[dict]:
    batch: list[_Prepared] = []
    for prepared in _prepare_all(pipeline, items, workers=workers, lookahead=2 * batch_size, skip=skip):
        batch.append(prepared)
        if sum(p.error is None for p in batch) >= batch_size:
            yield from _finish(pipeline, batch, out_dir, lock)
            batch = []
    if batch:
        yield from _finish(pipeline, batch, out_dir, lock)


def _prepare_all(pipeline, items, *, workers, lookahead, skip) -> Iterator[_Prepared]:
    def timed_prepare(path: str) -> tuple[Any, float]:
        start = time.perf_counter()
        sample = pipeline.prepare(path)
        return sample, (time.perf_counter() - start) * 1000

    pending: collections.deque[_Pending] = collections.deque()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cvtool-decode") as pool:
        for item in items:
            if item.error is None and skip is not None and skip(item.path):
                continue
            if item.error is not None:
                pending.append(_Pending(item.path, None, item.error))
            else:
                pending.append(_Pending(item.path, pool.submit(timed_prepare, item.path)))
            while len(pending) > lookahead:
                yield _resolve(pending.popleft())
        while pending:
            yield _resolve(pending.popleft())


def _resolve(pending: _Pending) -> _Prepared:
    if pending.future is None:
        return _Prepared(pending.path, error=pending.error)
    try:
        sample, ms = pending.future.result()
    except CvtoolError as exc:
        return _Prepared(pending.path, error=exc.reason)
    except Exception as exc:  # an odd file that trips a library: this input fails, the batch goes on
        return _Prepared(pending.path, error=f"could not be prepared ({type(exc).__name__}: {str(exc)[:200]})")
    return _Prepared(pending.path, sample=sample, ms=ms)


def _predict_guarded(pipeline: Pipeline, good: list[_Prepared], lock: ContextManager) -> None:
    """Run `predict` on a batch and put each result on its input. The last line of defence (pipelines
    check sizes and contents in `prepare`): an InputError or an unexpected exception fails only the
    inputs it belongs to (a failing batch is retried one input at a time to find them), while a
    UsageError or WeightsError still stops the command."""
    try:
        with lock:
            results = pipeline.predict([p.sample for p in good])
        if len(results) != len(good):
            raise RuntimeError(f"predict returned {len(results)} results for {len(good)} inputs")
    except (UsageError, WeightsError):
        raise
    except Exception as exc:
        if len(good) > 1:
            for prepared in good:
                _predict_guarded(pipeline, [prepared], lock)
            return
        good[0].error = exc.reason if isinstance(exc, CvtoolError) else _unexpected_reason(exc)
        return
    for prepared, result in zip(good, results):
        prepared.result = result


def _unexpected_reason(exc: Exception) -> str:
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"could not be processed ({type(exc).__name__}: {detail})" if detail else \
        f"could not be processed ({type(exc).__name__})"


def _finish(pipeline: Pipeline, batch: list[_Prepared], out_dir: Path | None,
            lock: ContextManager) -> Iterator[dict]:
    good = [p for p in batch if p.error is None]
    infer_ms = 0.0
    if good:
        start = time.perf_counter()
        _predict_guarded(pipeline, good, lock)
        infer_ms = (time.perf_counter() - start) * 1000 / len(good)
    for prepared in batch:
        if prepared.error is not None:
            yield error_record(prepared.path, prepared.error)
            continue
        result = prepared.result
        record = result_record(pipeline, prepared.path, prepared.ms + infer_ms, result)
        if out_dir is not None:
            try:
                record["outputs"] = pipeline.save(prepared.path, prepared.sample, result, out_dir)
            except CvtoolError as exc:
                yield error_record(prepared.path, exc.reason)
                continue
        yield record
