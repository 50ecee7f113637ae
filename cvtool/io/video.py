"""Reading and writing video frame by frame, so memory stays flat over long videos.

A video input is a file with a video suffix (`.mp4`, `.avi`, ...), `cam:N` (camera N), a URL of a video
file (downloaded to a temp file first, cvtool.io.remote) or a live stream (`rtsp://`, `rtmp://`, an HLS
`.m3u8`: read by OpenCV's FFmpeg as it comes, with bounded open and read timeouts).

Annotated `.mp4`/`.m4v`/`.mov` videos are written as H.264 (yuv420p, `+faststart`), which browsers and
common players play, through PyAV (`pip install 'cvtool[video]'`); without PyAV, OpenCV's MPEG-4 Part 2
(`mp4v`) writer is the fallback. `.avi` and the rest get Motion JPEG. Audio is never copied.
"""

from __future__ import annotations

import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from cvtool.errors import InputError
from cvtool.io.atomic import _UMASK, WriteError
from cvtool.io import remote
from cvtool.io.files import not_regular_reason, temp_prefix
from cvtool.io.opencv import cv2  # quiet: a camera that cannot open, a bad file are reported by us, once
from cvtool.io.kinds import VIDEO_SUFFIXES, camera_index, is_live, is_stream, is_video  # noqa: F401 - here before
from cvtool.io.outputs import check_not_input, claim_output, record_output

def open_video(path: str | Path) -> tuple[cv2.VideoCapture, float, int]:
    """(capture, fps, frame count); InputError when OpenCV cannot read it. A URL is downloaded first
    (a live stream is opened as a stream: its frame count is 0, unknown)."""
    if remote.is_url(path):
        return _open_url(str(path))
    if not Path(path).exists():
        raise InputError("no such file", path)
    reason = not_regular_reason(path)  # a FIFO would block FFmpeg (and the batch) forever
    if reason is not None:
        raise InputError(reason, path)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError("not a video OpenCV can read", path)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    return capture, fps, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)


def _open_url(url: str) -> tuple[cv2.VideoCapture, float, int]:
    if remote.is_offline():
        raise InputError(remote.OFFLINE_REASON, url)
    if remote.is_live_url(url):
        open_ms, read_ms = int(remote.connect_timeout() * 1000), int(remote.read_timeout() * 1000)
        capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms,
                                                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms])
        if not capture.isOpened():
            capture.release()
            raise InputError(f"cannot open the stream (no answer within {open_ms / 1000:g} s, refused, or not a "
                             "video FFmpeg can read)", url)
        return capture, capture.get(cv2.CAP_PROP_FPS) or 25.0, 0
    tmp = remote.download_to_temp(url, kind="video")
    try:
        capture = cv2.VideoCapture(tmp)
        if not capture.isOpened():
            raise InputError("not a video OpenCV can read", url)
    finally:
        try:
            os.unlink(tmp)  # FFmpeg holds the file open: its data stays readable until released (POSIX)
        except OSError:
            import atexit

            atexit.register(lambda: os.path.exists(tmp) and os.unlink(tmp))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    return capture, fps, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)


def open_camera(spec: str) -> tuple[cv2.VideoCapture, float]:
    """(capture, fps) for `cam:N`; InputError when there is no such camera or it is busy."""
    index = camera_index(spec)
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise InputError(f"cannot open camera {index} (no such device, no permission, or in use)", spec)
    return capture, capture.get(cv2.CAP_PROP_FPS) or 30.0


def iter_frames(capture: cv2.VideoCapture, stride: int = 1, *, fps: float = 25.0,
                live: bool = False) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in seconds, RGB frame) for every `stride`-th frame. A file's times are its
    own timestamps (index / fps where the container has none); a camera's are seconds since its first frame."""
    index, start = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        if index % stride == 0:
            if live:
                start = time.monotonic() if start is None else start
                seconds = time.monotonic() - start
            else:
                ms = capture.get(cv2.CAP_PROP_POS_MSEC)
                seconds = ms / 1000 if ms > 0 or index == 0 else index / fps
            yield index, seconds, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        index += 1


H264_SUFFIXES = frozenset({".mp4", ".m4v", ".mov"})


def h264_available() -> bool:
    """Whether PyAV (the FFmpeg bindings) is installed with an H.264 encoder (libx264)."""
    try:
        import av
    except ImportError:
        return False
    return "libx264" in av.codecs_available


class AtomicVideoWriter:
    """Writes to a temp file beside the target and renames it into place only when closed cleanly.

    `codec`: "h264" (PyAV), "mp4v" or "mjpg" (OpenCV); by default H.264 for .mp4/.m4v/.mov when PyAV can,
    else mp4v for those and Motion JPEG for the rest. H.264 in 4:2:0 needs even sizes: an odd width or
    height is padded by one edge pixel (`self.size` is what was written)."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], *, codec: str | None = None):
        self.path = Path(path)
        check_not_input(self.path)
        claim_output(self.path)  # never over a file cvtool did not write; listed in the manifest once closed
        suffix = self.path.suffix.lower()
        if codec is None:
            codec = ("h264" if h264_available() else "mp4v") if suffix in H264_SUFFIXES else "mjpg"
        self.codec = codec
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=temp_prefix(self.path), suffix=self.path.suffix,
                                            dir=self.path.parent)
        except OSError as exc:  # read-only or full --out: this input's error line, not a crash
            raise WriteError(self.path, exc) from exc
        os.close(fd)
        try:
            self._backend = (_PyAVWriter(self.tmp, fps, size) if codec == "h264"
                             else _OpenCVWriter(self.tmp, fps, size, codec))
        except OSError as exc:
            os.unlink(self.tmp)
            raise WriteError(self.path, exc) from exc
        except ValueError:
            os.unlink(self.tmp)
            raise InputError(f"cannot write video as {self.path.suffix} ({codec})", self.path) from None
        self.size = self._backend.size

    def write(self, rgb: np.ndarray) -> None:
        try:
            self._backend.write(rgb)
        except OSError as exc:  # a full disk while encoding: this input's error line
            raise WriteError(self.path, exc) from exc

    def close(self, ok: bool = True) -> None:
        try:
            self._backend.close()
        except OSError as exc:
            if ok:
                os.unlink(self.tmp)
                raise WriteError(self.path, exc) from exc
        if ok:
            os.chmod(self.tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 is not what the user's other files get
            os.replace(self.tmp, self.path)
            record_output(self.path)
        elif os.path.exists(self.tmp):
            os.unlink(self.tmp)


class _OpenCVWriter:
    def __init__(self, path: str, fps: float, size: tuple[int, int], codec: str):
        self.size = size
        self.writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*(codec.upper() if codec == "mjpg" else codec)),
                                      fps, size)
        if not self.writer.isOpened():
            raise ValueError(codec)

    def write(self, rgb: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()


class _PyAVWriter:
    """H.264 (libx264, yuv420p, CRF 23, preset veryfast) in MP4/MOV with the moov atom first, so a browser
    starts playing before the whole file has arrived. Frame i is at i / fps exactly."""

    def __init__(self, path: str, fps: float, size: tuple[int, int]):
        import av

        w, h = size
        self.size = (w + w % 2, h + h % 2)
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        self.container = av.open(path, mode="w", format="mov" if path.lower().endswith(".mov") else "mp4",
                                 options={"movflags": "+faststart"})
        try:
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.width, self.stream.height = self.size
            self.stream.pix_fmt = "yuv420p"
            self.stream.codec_context.time_base = 1 / rate
            self.stream.options = {"crf": "23", "preset": "veryfast"}
        except BaseException:
            self.container.close()
            raise
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        if (w, h) != self.size:
            rgb = np.pad(rgb, ((0, self.size[1] - h), (0, self.size[0] - w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        self.frames += 1
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))  # flush the encoder's delayed frames
        finally:
            self.container.close()
