"""The one pipeline shape every task shares.

decode + preprocess in worker threads -> batched inference in a device thread -> postprocess to plain
records -> write outputs atomically in a writer pool (while the next batch runs) -> yield one record per
input, in input order. Tasks supply the three task-specific steps (`prepare`, `predict`, `save`); nothing
here prints. Video files and cameras go frame by frame through the same steps (cvtool/pipelines/video.py).
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
from cvtool.pipelines.video import run_sources


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
    buffer: bool | None = None,
    lock: ContextManager | None = None,
) -> Generator[dict, None, None]:
    """Yield one record per input (per kept frame of a video), in input order, overlapping decoding
    with inference. Runs of images are batched together; each video file is streamed on its own, each run of
    consecutive cameras and live streams at once (`buffer`: cvtool.pipelines.video.run_video's). `lock`
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
        paths = (item.path for item in group if skip is None or not skip(item.path))
        yield from run_sources(pipeline, paths, batch_size=batch_size, stride=vid_stride, out_dir=out_dir, lock=lock,
                               buffer=buffer)


def _run_images(pipeline, items, *, batch_size, workers, out_dir, skip, lock) -> Iterator[dict]:
    """Three stages overlap: the decoding threads prepare batch N+1 (and this thread gathers it) while one device
    thread runs batch N's forward pass, and the writer pool writes batch N-1's outputs; records come out in order."""
    writer = _Writer(pipeline, out_dir, threads=0 if _SERIAL else max(1, workers), bound=2 * batch_size)
    prepared_items = _prepare_all(pipeline, items, workers=workers, lookahead=2 * batch_size, skip=skip)
    device = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvtool-device")
    in_flight: tuple[list[_Prepared], Future] | None = None
    try:
        with writer, contextlib.closing(prepared_items):
            for batch in _batches(prepared_items, batch_size):
                if _SERIAL:  # the bench's baseline: forward pass, then the writes, in this thread
                    yield from writer.submit(batch, _predict_batch(pipeline, batch, lock))
                    continue
                predicted = device.submit(_predict_batch, pipeline, batch, lock)  # queued behind the one in flight
                if in_flight is not None:
                    yield from writer.submit(in_flight[0], in_flight[1].result())
                in_flight = (batch, predicted)
            if in_flight is not None:
                yield from writer.submit(in_flight[0], in_flight[1].result())
            yield from writer.drain()
    finally:  # stopped early: the batch queued behind the running one is dropped; the running one finishes
        device.shutdown(wait=True, cancel_futures=True)


def _batches(prepared_items: Iterator[_Prepared], batch_size: int) -> Iterator[list[_Prepared]]:
    """Inputs in order, cut after every `batch_size` good ones (bad ones ride along to keep their place)."""
    batch: list[_Prepared] = []
    for prepared in prepared_items:
        batch.append(prepared)
        if sum(p.error is None for p in batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# The bench's baseline (bench/pipeline_overlap.py): True runs each forward pass and then writes its inputs' outputs
# in the calling thread, as the runner did before its device thread and writer pool. Not a user option.
_SERIAL = False


class _Writer:
    """Builds each input's record and writes its outputs (`pipeline.save`: rendering, JSON/PNG/JPEG encoding,
    atomic writes) in a pool of `threads` threads, so the next batch's forward pass and decoding need not wait
    for the disk; hands the records back in input order. At most `bound` inputs wait here (their decoded pixels
    are held until written). Inputs whose outputs share a name stem are written one after the other, in input
    order, so OutputNamer gives a later duplicate the same name a sequential run gives it; the first input's
    outputs are written before any other's, so a file the run writes once (detect's classes.txt) is listed in the
    first record, as a sequential run lists it. Without --out (or
    `threads` 0) the records are made in the calling thread. On leaving (an error, Ctrl-C, a closed
    generator) writes not yet started are dropped and those under way finish: atomic, so none is half there;
    a record is only ever handed back once its outputs are written (a --records journal stays true)."""

    def __init__(self, pipeline: Pipeline, out_dir: Path | None, *, threads: int, bound: int):
        self.pipeline, self.out_dir, self.bound = pipeline, out_dir, max(1, bound)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cvtool-write") \
            if out_dir is not None and threads > 0 else None
        self.pending: collections.deque[tuple[str | None, Future]] = collections.deque()
        self.last_of_stem: dict[str, Future] = {}
        self.first: Future | None = None  # the run's first write: every later one starts after it

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, batch: list[_Prepared], infer_ms: float) -> Iterator[dict]:
        """Queue a predicted batch; yield the records that are ready (in order), waiting only while more than
        `bound` inputs are queued."""
        for prepared in batch:
            self._queue(prepared, infer_ms)
        while self.pending and (len(self.pending) > self.bound or self.pending[0][1].done()):
            yield self._next()

    def drain(self) -> Iterator[dict]:
        while self.pending:
            yield self._next()

    def _next(self) -> dict:
        stem, future = self.pending.popleft()
        if stem is not None and self.last_of_stem.get(stem) is future:
            del self.last_of_stem[stem]
        return future.result()  # an unexpected exception in save stops the batch, as it did in the main thread

    def _queue(self, prepared: _Prepared, infer_ms: float) -> None:
        if prepared.error is not None or self.pool is None:
            future: Future = Future()
            future.set_result(error_record(prepared.path, prepared.error) if prepared.error is not None
                              else self._record(prepared, infer_ms))
            self.pending.append((None, future))
            return
        from cvtool.io.outputs import output_stem

        stem = output_stem(prepared.path)
        before = tuple(f for f in (self.first, self.last_of_stem.get(stem)) if f is not None)
        future = self.pool.submit(self._record, prepared, infer_ms, before)
        self.first = self.first or future
        self.last_of_stem[stem] = future
        self.pending.append((stem, future))

    def _record(self, prepared: _Prepared, infer_ms: float, before: tuple[Future, ...] = ()) -> dict:
        for earlier in before:  # submitted earlier to this FIFO pool, so running or done: no deadlock
            earlier.exception()
        record = result_record(self.pipeline, prepared.path, prepared.ms + infer_ms, prepared.result)
        if self.out_dir is not None:
            try:
                record["outputs"] = self.pipeline.save(prepared.path, prepared.sample, prepared.result, self.out_dir)
            except CvtoolError as exc:
                return error_record(prepared.path, exc.reason)
            finally:
                prepared.sample = None  # the pixels are written: free them while the record waits its turn
        return record


def _prepare_all(pipeline, items, *, workers, lookahead, skip) -> Iterator[_Prepared]:
    def timed_prepare(path: str) -> tuple[Any, float]:
        start = time.perf_counter()
        sample = pipeline.prepare(path)
        return sample, (time.perf_counter() - start) * 1000

    pending: collections.deque[_Pending] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cvtool-decode")
    try:
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
    finally:  # stopped early (an error, Ctrl-C, a closed generator): decodes not yet started are dropped
        pool.shutdown(wait=True, cancel_futures=True)


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


def _predict_batch(pipeline: Pipeline, batch: list[_Prepared], lock: ContextManager) -> float:
    """Run the batch's good inputs through `predict` (results and errors land on them); the ms per input."""
    good = [p for p in batch if p.error is None]
    if not good:
        return 0.0
    start = time.perf_counter()
    _predict_guarded(pipeline, good, lock)
    return (time.perf_counter() - start) * 1000 / len(good)
