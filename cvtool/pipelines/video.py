"""Videos, cameras and live streams through any task's pipeline, one frame at a time.

A task takes videos by declaring `no_video_reason = None` and the hooks of base.VideoPipeline beside its
image steps: `prepare_array(rgb)` prepares a decoded frame (as `prepare(path)` does a file),
`render(rgb, sample, result)` draws the annotated frame, `save_frame` writes a frame's own files (if any)
and `video_name(path)` says where the annotated video goes. The driver here does the rest for every
task alike, one reader thread per source (cvtool.io.video.FrameSource):

- every frame (a video file; a live source with `buffer=True`): the reader decodes and prepares frames into
  a bounded queue, `predict` runs on batches of `batch_size` frames, and each frame is rendered, written and
  reported at once, so about two batches of frames are alive however long the video is;
- the newest frame (a camera or network stream; a file with `buffer=False`, read at its own frame rate): the
  reader keeps pace with the source, grabbing every frame, and converts and prepares only the first frame
  received after the model asks for one; the frames in between are dropped. A slow model then sees fresh
  frames rather than ever older ones: the lag between a frame's arrival and its record stays about one
  forward pass, however long the stream runs. Each record says `dropped` (frames dropped just before it)
  and `lag_ms` (from cvtool receiving the frame to its record; the camera's and network's own latency come
  before that and are not in it).

Several sources (`run_videos`) are read at once, each in its own thread, one frame (or a share of a batch) of
each per forward pass; every record carries its source's `path`.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Sequence

import numpy as np

from cvtool.errors import CvtoolError, InputError
from cvtool.io.video import AtomicVideoWriter, FrameSource, Reconnect, is_live, stderr_line
from cvtool.pipelines.base import VideoPipeline, error_record, result_record


@dataclass
class _Frame:
    index: int
    seconds: float
    rgb: np.ndarray
    sample: Any
    ms: float
    captured: float = 0.0  # time.monotonic() when the frame was received
    dropped: int = 0  # frames dropped since the one handed over before this one (newest-frame reading)


_END = object()


def newest_frames(path: str, buffer: bool | None) -> bool:
    """Whether `path` is read newest-frame (dropping what the model has no time for): a camera or network
    stream unless `buffer` is True; a file only when `buffer` is False (it is then read at its frame rate)."""
    return buffer is not True if is_live(path) else buffer is False


class _FrameReader:
    """Reads one source in a background thread: every `stride`-th frame into a queue at most `lookahead`
    ahead of inference, or (`newest`) only the frames `request()` asks for, the others grabbed and dropped."""

    def __init__(self, source: FrameSource, prepare: Callable[[np.ndarray], Any], *, stride: int, newest: bool,
                 lookahead: int):
        self.source, self.prepare, self.stride, self.newest = source, prepare, stride, newest
        self.queue: queue.Queue = queue.Queue(maxsize=1 if newest else max(1, lookahead))
        self.stopping = threading.Event()
        self.wanted = threading.Event()
        self.dropped = 0  # in all
        source.wait = self.stopping.wait  # pacing and reconnection waits end at once when closed
        self.thread = threading.Thread(target=self._read, name="cvtool-video", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        skipped = 0
        try:
            while not self.stopping.is_set() and self.source.grab():
                if self.source.index % self.stride:
                    continue
                if self.newest and not self.wanted.is_set():
                    skipped += 1
                    self.dropped += 1
                    continue
                start = time.perf_counter()
                captured, seconds = self.source.captured, self.source.seconds
                rgb = self.source.retrieve()
                sample = self.prepare(rgb)
                self.wanted.clear()
                frame = _Frame(self.source.index, seconds, rgb, sample, (time.perf_counter() - start) * 1000,
                               captured, skipped)
                if not self._put(frame):
                    return
                skipped = 0
        except CvtoolError as exc:  # handed to the consumer: this input's error
            self._put(exc)
            return
        except Exception as exc:  # an odd frame that trips a library: this input fails, the batch goes on
            self._put(InputError(f"could not be prepared ({type(exc).__name__}: {str(exc)[:200]})"))
            return
        self._put(_END)

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def request(self) -> None:
        """Newest-frame reading: hand over the next frame received (a no-op when reading every frame)."""
        if self.newest:
            self.wanted.set()

    def take(self, count: int) -> tuple[list[_Frame], str | None, bool]:
        """Up to `count` frames (1 when newest-frame, after `request()`), waiting for them; then the source's
        error (a CvtoolError's reason) if it failed, and whether it has ended (at its end or by that error)."""
        frames: list[_Frame] = []
        for _ in range(1 if self.newest else count):
            item = self.queue.get()
            if item is _END:
                return frames, None, True
            if isinstance(item, CvtoolError):
                return frames, item.reason, True
            frames.append(item)
        return frames, None, False

    def close(self) -> None:
        """Stop the thread before the capture is released (it may be inside capture.grab())."""
        self.stopping.set()
        self.thread.join()


@dataclass
class _Stream:
    """One source's state in the driver."""

    path: str
    source: FrameSource
    reader: _FrameReader
    fps: float
    stride: int
    target: Path | None
    writer: AtomicVideoWriter | None = None
    frames: int = 0
    keep: bool = True  # a live source's video so far is kept when it fails (not when writing it failed)


def run_video(pipeline: VideoPipeline, path: str, *, batch_size: int = 16, stride: int = 1,
              out_dir=None, with_frames: bool = False, lock: ContextManager | None = None,
              buffer: bool | None = None, reconnect: Reconnect | None = None,
              on_event: Callable[[str], None] | None = stderr_line) -> Iterator:
    """One record per kept frame (`frame`, `time_s` beside the usual fields; `lag_ms` for a camera, a stream or
    a paced file, and `dropped` when read newest-frame); with `out_dir` the rendered frames go to one video
    written atomically (an interrupted video file leaves none; a camera's or stream's video so far is kept). A
    video that cannot be read, or that fails part-way, ends with one error record; the batch goes on.

    `buffer`: None reads a camera or network stream newest-frame and a file every frame; True every frame of
    any source; False newest-frame of any, a file read at its own frame rate (`newest_frames`). A stream that
    drops is reopened as `reconnect` says (None: cvtool.io.video.default_reconnect, 5 tries over 15.5 s), each try
    one line through `on_event` (default: stderr).
    `with_frames`: yield `(record, rgb, sample, result)` instead (None for an error record), for callers
    that keep the pixels (the Python API's `stream`). `lock` is held around each forward pass."""
    yield from run_videos(pipeline, [path], batch_size=batch_size, stride=stride, out_dir=out_dir,
                          with_frames=with_frames, lock=lock, buffer=buffer, reconnect=reconnect, on_event=on_event)


def run_videos(pipeline: VideoPipeline, paths: Sequence[str], *, batch_size: int = 16, stride: int = 1,
               out_dir=None, with_frames: bool = False, lock: ContextManager | None = None,
               buffer: bool | None = None, reconnect: Reconnect | None = None,
               on_event: Callable[[str], None] | None = stderr_line) -> Iterator:
    """`run_video` over several sources at once, each read by its own thread: every forward pass takes one
    frame of each newest-frame source and a share of `batch_size` of each every-frame source, so a slow or
    stalled source holds the others up by at most its frame interval (a stalled one: up to its read timeout).
    Records of different sources interleave; each source's own records stay in order and end as run_video's."""
    lock = lock if lock is not None else contextlib.nullcontext()

    def emit(record, frame=None, result=None):
        if not with_frames:
            return record
        return (record, frame.rgb, frame.sample, result) if frame is not None else (record, None, None, None)

    if pipeline.no_video_reason is not None:
        for path in paths:
            yield emit(error_record(path, pipeline.no_video_reason))
        return
    streams: list[_Stream] = []
    try:
        for path in paths:
            opened = _open(pipeline, path, batch_size=batch_size, stride=stride, out_dir=out_dir, buffer=buffer,
                           reconnect=reconnect, on_event=on_event)
            if isinstance(opened, str):
                yield emit(error_record(path, opened))
            else:
                streams.append(opened)
        active = list(streams)
        while active:
            for stream in active:
                stream.reader.request()  # all at once: each waits only for its own next frame
            batch: list[tuple[_Stream, _Frame]] = []
            ended: list[tuple[_Stream, str | None]] = []
            share = max(1, batch_size // len(active))
            for stream in active:
                frames, failure, done = stream.reader.take(share)
                batch += [(stream, frame) for frame in frames]
                if done:
                    ended.append((stream, failure))
            failed: dict[int, str] = {}  # id(stream) -> reason: a forward pass or a write that failed
            for start in range(0, len(batch), batch_size):
                yield from _infer(pipeline, batch[start:start + batch_size], lock, emit, failed)
            ended = [(stream, failure) for stream, failure in ended if id(stream) not in failed]
            ended += [(stream, failed[id(stream)]) for stream in active if id(stream) in failed]
            for stream, failure in ended:
                active.remove(stream)
                stream.reader.close()  # a source that ended or failed is let go now, not when the others end
                stream.source.release()
                record = _finish(stream, failure)
                if record is not None:
                    yield emit(record)
    except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C or a closed stdout: no partial video of a file, but a
        for stream in streams:  # camera or stream has no other end, so its video so far is kept
            if stream.source.live and stream.writer is not None:
                stream.writer.close()
            else:
                _discard(stream.writer)
            stream.writer = None
        raise
    except BaseException:  # a bug: no partial video
        for stream in streams:
            _discard(stream.writer)
            stream.writer = None
        raise
    finally:
        for stream in streams:
            stream.reader.close()
            stream.source.release()


def run_sources(pipeline: VideoPipeline, paths: Iterable[str], **options) -> Iterator:
    """Video inputs in input order as a batch runs them: a file on its own, each run of consecutive cameras and
    live streams at once (`run_videos`), so `cvtool detect cam:0 rtsp://a rtsp://b` reads all three together.
    `options`: run_video's."""
    for live, group in itertools.groupby(paths, key=is_live):
        if live:
            yield from run_videos(pipeline, list(group), **options)
        else:
            for path in group:
                yield from run_video(pipeline, path, **options)


def _open(pipeline: VideoPipeline, path: str, *, batch_size: int, stride: int, out_dir, buffer: bool | None,
          reconnect: Reconnect | None, on_event) -> _Stream | str:
    """The source opened and its reader started; the reason as a string when it cannot be."""
    newest = newest_frames(path, buffer)
    try:
        source = FrameSource(path, paced=newest and not is_live(path), stride=stride, reconnect=reconnect,
                             on_event=on_event)
    except InputError as exc:  # this input's; a UsageError (CVTOOL_RECONNECT_TRIES=x) stops the command
        return exc.reason
    try:
        _check_size(source.size, pipeline.max_pixels, path)
        target = pipeline.video_name(path) if out_dir is not None else None
    except CvtoolError as exc:
        source.release()
        return exc.reason
    reader = _FrameReader(source, pipeline.prepare_array, stride=stride, newest=newest, lookahead=batch_size)
    return _Stream(path, source, reader, source.fps, stride, target)


def _infer(pipeline: VideoPipeline, batch: list[tuple[_Stream, _Frame]], lock: ContextManager, emit,
           failed: dict[int, str]) -> Iterator:
    """Records of a batch of frames; a CvtoolError fails the sources it belongs to (`failed`): all of the batch's
    for the forward pass, one source's for its rendering and writing."""
    if not batch:
        return
    start = time.perf_counter()
    try:
        with lock:
            results = pipeline.predict([frame.sample for _, frame in batch])
    except CvtoolError as exc:
        for stream, _ in batch:
            failed.setdefault(id(stream), exc.reason)
        return
    infer_ms = (time.perf_counter() - start) * 1000 / len(batch)
    for (stream, frame), result in zip(batch, results):
        if id(stream) in failed:
            continue
        fields: dict[str, Any] = {"frame": frame.index, "time_s": round(frame.seconds, 4)}
        if stream.reader.newest:
            fields["dropped"] = frame.dropped
        record = result_record(pipeline, stream.path, frame.ms + infer_ms, result, **fields)
        if stream.target is not None:
            try:
                rendered = pipeline.render(frame.rgb, frame.sample, result)
                if stream.writer is None:
                    stream.writer = AtomicVideoWriter(stream.target, _video_fps(stream),
                                                      (rendered.shape[1], rendered.shape[0]))
                stream.writer.write(rendered)
                record["outputs"] = [str(stream.target)]
                record["outputs"] += pipeline.save_frame(stream.path, frame.index, frame.rgb, frame.sample, result)
            except CvtoolError as exc:  # a full disk, a suffix no codec writes: this source's error
                failed[id(stream)] = exc.reason
                stream.keep = False
                continue
        if stream.source.realtime:
            record["lag_ms"] = round((time.monotonic() - frame.captured) * 1000, 3)
        stream.frames += 1
        yield emit(record, frame, result)


def _video_fps(stream: _Stream) -> float:
    """The annotated video's frame rate: the source's over the stride (newest-frame: the kept frames come at
    the model's pace, so the video plays faster than real time where frames were dropped)."""
    return stream.fps / stream.stride


def _finish(stream: _Stream, failure: str | None) -> dict | None:
    """A source that has ended: its video closed (or discarded), and its error record, if any."""
    writer, stream.writer = stream.writer, None
    if failure is not None:
        if stream.frames == 0:
            _discard(writer)
            return error_record(stream.path, failure)
        if stream.source.live and stream.keep and writer is not None:  # a stream's video so far is all there is
            try:
                writer.close()
            except CvtoolError:
                pass
            else:
                return error_record(stream.path, f"{failure} (after {stream.frames} frames; the video so far is "
                                                 "kept)")
        _discard(writer)
        return error_record(stream.path, f"{failure} (after {stream.frames} frames"
                                         f"{'; no video written' if stream.target is not None else ''})")
    if stream.frames == 0:
        _discard(writer)
        return error_record(stream.path, "the video has no frames")
    if writer is not None:
        writer.close()
    return None


def _discard(writer: AtomicVideoWriter | None) -> None:
    if writer is not None:
        writer.close(ok=False)


def _check_size(size: tuple[int, int], max_pixels: int | None, path: str) -> None:
    from cvtool.io.image import check_pixels

    check_pixels(size, max_pixels, path, what="its frames are")
