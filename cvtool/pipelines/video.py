"""Videos and cameras through any task's pipeline, one frame at a time.

A task takes videos by declaring `no_video_reason = None` and the hooks of base.VideoPipeline beside its
image steps: `prepare_array(rgb)` prepares a decoded frame (as `prepare(path)` does a file),
`render(rgb, sample, result)` draws the annotated frame, `save_frame` writes a frame's own files (if any)
and `video_name(path)` says where the annotated video goes. The driver here does the rest for every
task alike: a reader thread decodes and prepares frames into a bounded queue, `predict` runs on
batches of `batch_size` frames, and each frame is rendered, written and reported at once, so about
two batches of frames are alive however long the video is.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator

import numpy as np

from cvtool.errors import CvtoolError, InputError
from cvtool.io.video import AtomicVideoWriter, camera_index, is_live, iter_frames, open_camera, open_video
from cvtool.pipelines.base import VideoPipeline, error_record, result_record


@dataclass
class _Frame:
    index: int
    seconds: float
    rgb: np.ndarray
    sample: Any
    ms: float


_END = object()


class _FrameReader:
    """Decodes and prepares frames in a background thread, at most `lookahead` ahead of inference."""

    def __init__(self, capture, prepare, *, stride: int, fps: float, live: bool, lookahead: int):
        self.capture, self.prepare, self.stride, self.fps, self.live = capture, prepare, stride, fps, live
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, lookahead))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, name="cvtool-video", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for index, seconds, rgb in iter_frames(self.capture, self.stride, fps=self.fps, live=self.live):
                start = time.perf_counter()
                sample = self.prepare(rgb)
                if not self._put(_Frame(index, seconds, rgb, sample, (time.perf_counter() - start) * 1000)):
                    return
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

    def batches(self, size: int) -> Iterator[list[_Frame]]:
        batch: list[_Frame] = []
        while True:
            item = self.queue.get()
            if item is _END:
                break
            if isinstance(item, CvtoolError):
                if batch:
                    yield batch
                raise item
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        """Stop the thread before the capture is released (it may be inside capture.read())."""
        self.stopping.set()
        self.thread.join()


def run_video(pipeline: VideoPipeline, path: str, *, batch_size: int = 16, stride: int = 1,
              out_dir=None, with_frames: bool = False, lock: ContextManager | None = None) -> Iterator:
    """One record per kept frame (`frame`, `time_s` beside the usual fields); with `out_dir` the
    rendered frames go to one video written atomically (an interrupted video file leaves none). A
    video that cannot be read, or that fails part-way, ends with one error record; the batch goes on.

    `with_frames`: yield `(record, rgb, sample, result)` instead (None for an error record), for callers
    that keep the pixels (the Python API's `stream`). `lock` is held around each forward pass."""
    lock = lock if lock is not None else contextlib.nullcontext()

    def emit(record, frame=None, result=None):
        if not with_frames:
            return record
        return (record, frame.rgb, frame.sample, result) if frame is not None else (record, None, None, None)

    if pipeline.no_video_reason is not None:
        yield emit(error_record(path, pipeline.no_video_reason))
        return
    live = is_live(path)  # a camera or a network stream: timestamps from the clock, and Ctrl-C keeps the video
    try:
        capture, fps = open_camera(path) if camera_index(path) is not None else open_video(path)[:2]
    except CvtoolError as exc:
        yield emit(error_record(path, exc.reason))
        return
    try:
        _check_size(capture, pipeline.max_pixels, path)
        target = pipeline.video_name(path) if out_dir is not None else None
    except CvtoolError as exc:
        capture.release()
        yield emit(error_record(path, exc.reason))
        return
    reader = _FrameReader(capture, pipeline.prepare_array, stride=stride, fps=fps, live=live, lookahead=batch_size)
    writer, frames, failure = None, 0, None
    try:
        for batch in reader.batches(batch_size):
            start = time.perf_counter()
            with lock:
                results = pipeline.predict([frame.sample for frame in batch])
            infer_ms = (time.perf_counter() - start) * 1000 / len(batch)
            for frame, result in zip(batch, results):
                record = result_record(pipeline, path, frame.ms + infer_ms, result,
                                       frame=frame.index, time_s=round(frame.seconds, 4))
                if target is not None:
                    rendered = pipeline.render(frame.rgb, frame.sample, result)
                    if writer is None:
                        writer = AtomicVideoWriter(target, fps / stride, (rendered.shape[1], rendered.shape[0]))
                    writer.write(rendered)
                    record["outputs"] = [str(target)]
                    record["outputs"] += pipeline.save_frame(path, frame.index, frame.rgb, frame.sample, result)
                frames += 1
                yield emit(record, frame, result)
    except CvtoolError as exc:
        _discard(writer)
        failure = exc.reason if frames == 0 else (
            f"{exc.reason} (after {frames} frames{'; no video written' if target is not None else ''})")
    except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C or a closed stdout: no partial video of a file, but a
        if live and writer is not None:  # camera has no other end, so its video so far is kept
            writer.close()
        else:
            _discard(writer)
        raise
    except BaseException:  # a bug: no partial video
        _discard(writer)
        raise
    finally:
        reader.close()
        capture.release()
    if failure is not None:
        yield emit(error_record(path, failure))
    elif frames == 0:
        yield emit(error_record(path, "the video has no frames"))
    elif writer is not None:
        writer.close()


def _discard(writer: AtomicVideoWriter | None) -> None:
    if writer is not None:
        writer.close(ok=False)


def _check_size(capture, max_pixels: int | None, path: str) -> None:
    import cv2

    from cvtool.io.image import check_pixels

    size = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    check_pixels(size, max_pixels, path, what="its frames are")
