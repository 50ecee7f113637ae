"""Cross-request batching: requests for the same loaded model variant that arrive close together go through
the network as one batch, and each request gets the record it would get alone (identical on the CPU; on a GPU
up to float rounding, which the batch size can move).

One *lane* per variant (a cvtool.api task object: same model, weights, backend and reading options): an
asyncio queue and one collector task on the server's event loop. A request is decoded and preprocessed in
its own worker thread (`obj.prepare`, as a list call does), then queued; the collector takes the first
waiting request, then whatever else arrives until the batch has `max_batch` requests or `wait_ms` have
passed since it took the first, or no other request for the same task is on its way (being received or
decoded: a lone client never waits for the window), and runs them with the task object's own batch path (`obj.predict_prepared`:
the forward pass a list call makes, under the object's lock) in a worker thread. While a batch runs, newer
requests wait in the queue, so under load the next batch is taken whole without waiting. A batch also stops
growing before its inputs would pass `max_pixels` in all (the task object's `input_pixels`: the network's
input, which its activations grow with), so a few large images do not go through together; one larger
than that alone still runs, alone.

Within a batch, samples whose forward passes would touch each other go in separate passes (the task object's
`batch_key`): classifiers stack equal shapes only; torchvision's detectors pad a batch to its largest image, so
their images are grouped by size (our letterboxing YOLO takes any mix); segmenters group by size themselves. A
pass that fails is run again one request at a time, so one bad input fails only its own request.

Run per request, never batched (the endpoints do not come here): /stylize (a feed-forward network runs one
image per pass, at each image's own size), /segment?tile= (tiles of one image per pass), /verify-face and
/identify (two photos, the face cache, dlib's detector one image at a time).
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Hashable

from fastapi.concurrency import run_in_threadpool

IDLE_S = 30.0  # a lane with no request for this long ends its collector (its model can then be unloaded)


def run_batch(obj, prepared: list) -> tuple[list, list[int], int]:
    """Each prepared sample's Result, or the exception that failed it; the size of every forward pass; how
    many samples were run again alone after their pass failed.

    Runs in a worker thread. A pass of several samples that raises is repeated one sample at a time."""
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(prepared):
        groups.setdefault(obj.batch_key(item), []).append(i)
    outcomes: list[Any] = [None] * len(prepared)
    passes: list[int] = []
    retried = 0
    for members in groups.values():
        try:
            passes.append(len(members))
            for i, result in zip(members, obj.predict_prepared([prepared[i] for i in members])):
                outcomes[i] = result
        except Exception as exc:
            if len(members) == 1:
                outcomes[members[0]] = exc
                continue
            retried += len(members)
            for i in members:  # find the one at fault: every other sample gets its own record
                try:
                    passes.append(1)
                    outcomes[i] = obj.predict_prepared([prepared[i]])[0]
                except Exception as alone:
                    outcomes[i] = alone
    return outcomes, passes, retried


@dataclass
class _Lane:
    obj: Any
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None
    held: tuple | None = None  # a request taken that did not fit its batch's pixels: the next batch's first


class Batcher:
    """The lanes, and counters for /healthz and /models."""

    def __init__(self, max_batch: int = 8, wait_ms: float = 5.0, max_pixels: int | None = None):
        self.max_batch = max(1, int(max_batch))
        self.wait_s = max(0.0, float(wait_ms)) / 1000
        self.max_pixels = max_pixels  # None: no bound on a batch's input pixels
        self._lanes: dict[int, _Lane] = {}
        self.batches = 0  # forward passes run
        self.requests = 0  # requests answered through them
        self.largest = 0  # the most requests in one pass
        self.retried_alone = 0  # requests rerun alone after their batch failed
        self.sizes: dict[int, int] = {}  # passes by size
        self._coming: dict[str, int] = {}  # requests per task being received or decoded (not yet submitted)

    @contextmanager
    def coming(self, task: str):
        """Around receiving and preparing a request that will be submitted: a batch of `task` waits for it
        (within the window) instead of leaving without it. Used on the event loop's thread only."""
        self._coming[task] = self._coming.get(task, 0) + 1
        try:
            yield
        finally:
            self._coming[task] -= 1

    def stats(self) -> dict:
        return {"max_batch": self.max_batch, "wait_ms": round(self.wait_s * 1000, 3), "max_pixels": self.max_pixels,
                "batches": self.batches, "requests": self.requests, "largest": self.largest,
                "mean": round(self.requests / self.batches, 2) if self.batches else None,
                "sizes": {str(k): v for k, v in sorted(self.sizes.items())}, "retried_alone": self.retried_alone}

    async def submit(self, obj, prepared: tuple):
        """`obj`'s Result for one sample prepared by `obj.prepare`, run in a batch with its neighbours;
        raises what failed it (a CvtoolError for a bad input)."""
        lane = self._lanes.get(id(obj))
        if lane is None or lane.obj is not obj or lane.task is None or lane.task.done():  # a fresh collector
            lane = self._lanes[id(obj)] = _Lane(obj)
            lane.task = asyncio.get_running_loop().create_task(self._collect(lane))
        future = asyncio.get_running_loop().create_future()
        lane.queue.put_nowait((prepared, future))
        return await future

    async def _collect(self, lane: _Lane) -> None:
        while True:
            first, lane.held = lane.held or await _get(lane.queue, IDLE_S), None
            if first is None:
                if lane.queue.empty():  # no await between this check and the removal: no request is lost
                    if self._lanes.get(id(lane.obj)) is lane:
                        del self._lanes[id(lane.obj)]
                    return
                continue
            batch = [first]
            try:
                await self._fill(lane, batch)
            except asyncio.CancelledError:
                _stopping(batch, lane)
                raise
            except Exception as exc:  # whatever else fails while gathering: answered, never left waiting
                _answer(batch, [exc] * len(batch))
                continue
            batch = [(prepared, future) for prepared, future in batch if not future.done()]  # client gone
            if not batch:
                continue
            try:
                outcomes, passes, retried = await run_in_threadpool(run_batch, lane.obj, [p for p, _ in batch])
                self._count(passes, len(batch), retried)
            except BaseException as exc:  # not a bad input (those are in `outcomes`): answer every request
                outcomes = [exc] * len(batch)
                if isinstance(exc, asyncio.CancelledError):
                    _stopping(batch, lane)
                    raise
            _answer(batch, outcomes)  # the collector lives on whatever a batch raised

    async def _fill(self, lane: _Lane, batch: list) -> None:
        """Add to `batch` what else arrives within the window, up to max_batch requests and max_pixels. A request
        whose size cannot be had is answered with that error, alone (the first one too: the batch is then empty)."""
        loop = asyncio.get_running_loop()
        pixels = self._sized(lane.obj, batch[0])
        if pixels is None:
            batch.clear()
            return
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch:
            if lane.queue.empty() and not self._coming.get(lane.obj.spec.name):
                break  # nobody else on the way: waiting would only delay this batch
            item = await _get(lane.queue, deadline - loop.time())
            if item is None:
                break
            more = self._sized(lane.obj, item)
            if more is None:
                continue
            if self.max_pixels is not None and pixels + more > self.max_pixels:
                lane.held = item  # too large to join: it starts the next batch
                break
            batch.append(item)
            pixels += more

    def _sized(self, obj, item: tuple) -> int | None:
        """The item's input pixels (0 without a bound); None after answering it with the error that gave none."""
        try:
            return self._pixels(obj, item)
        except Exception as exc:
            _answer([item], [exc])
            return None

    def _pixels(self, obj, item: tuple) -> int:
        return obj.input_pixels(item[0]) if self.max_pixels is not None else 0

    def _count(self, passes: list[int], requests: int, retried: int) -> None:
        self.requests += requests
        self.batches += len(passes)
        self.retried_alone += retried
        for size in passes:
            self.sizes[size] = self.sizes.get(size, 0) + 1
            self.largest = max(self.largest, size)

    async def close(self) -> None:
        """At shutdown, after the in-flight requests are answered: end the collectors."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        self._lanes.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _stopping(batch: list, lane: _Lane) -> None:
    waiting = batch + ([lane.held] if lane.held is not None else [])
    _answer(waiting, [RuntimeError("server stopping")] * len(waiting))


def _answer(batch: list, outcomes: list) -> None:
    """Each waiting request's Result or exception (one asyncio refuses, e.g. StopIteration: as a RuntimeError)."""
    for (_, future), outcome in zip(batch, outcomes):
        if future.done():
            continue
        if not isinstance(outcome, BaseException):
            future.set_result(outcome)
        elif isinstance(outcome, Exception) and not isinstance(outcome, (StopIteration, StopAsyncIteration)):
            future.set_exception(outcome)
        else:
            future.set_exception(RuntimeError(f"{type(outcome).__name__}: {outcome}"))


async def _get(queue: asyncio.Queue, timeout: float):
    """The next item, or None after `timeout` seconds (an item that arrives as the time runs out is kept)."""
    if not queue.empty():
        return queue.get_nowait()
    if timeout <= 0:
        return None
    getter = asyncio.ensure_future(queue.get())
    try:
        done, _ = await asyncio.wait({getter}, timeout=timeout)
    except asyncio.CancelledError:
        getter.cancel()
        raise
    if getter in done:
        return getter.result()
    getter.cancel()
    try:
        return await getter  # it may have taken an item just before it was cancelled
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # the collector itself is being cancelled (shutdown)
            raise
        return None
