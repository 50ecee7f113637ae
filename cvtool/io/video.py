"""Reading and writing video frame by frame, so memory stays flat over long videos.

A video input is a file with a video suffix (`.mp4`, `.avi`, ...), `cam:N` (camera N), a URL of a video
file (downloaded to a temp file first, cvtool.io.remote) or a live stream (`rtsp://`, `rtmp://`, an HLS
`.m3u8`, an HTTP Motion JPEG `.mjpg`: read by OpenCV's FFmpeg as it comes, with bounded open and read timeouts).

`FrameSource` reads any of them frame by frame: `grab()` advances (FFmpeg demuxes and decodes), `retrieve()`
converts the current frame to RGB only when it is wanted (a `--vid-stride` frame skipped, or a live frame
dropped, costs no conversion or copy; in an intra-only file such as Motion JPEG, no decoding either:
`IntraOnlyCapture`); a camera or network stream that drops is reopened a bounded number of times with backoff
(`Reconnect`), and a file may be `paced`: read at its own frame rate, as a live stream delivers it.

Annotated `.mp4`/`.m4v`/`.mov` videos are written as H.264 (yuv420p, `+faststart`), which browsers and
common players play, through PyAV (`pip install 'cvtool[video]'`); without PyAV, OpenCV's MPEG-4 Part 2
(`mp4v`) writer is the fallback. `.avi` and the rest get Motion JPEG. Audio is never copied.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cvtool.errors import InputError, UsageError
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
    own timestamps (index / fps where the container has none); a camera's are seconds since its first frame.
    The frames in between are grabbed, never retrieved (no conversion to pixels)."""
    index, start = 0, None
    while True:
        if not capture.grab():
            return
        if index % stride == 0:
            if live:
                start = time.monotonic() if start is None else start
                seconds = time.monotonic() - start
            else:
                ms = capture.get(cv2.CAP_PROP_POS_MSEC)
                seconds = ms / 1000 if ms > 0 or index == 0 else index / fps
            ok, frame = capture.retrieve()
            if not ok:
                return
            yield index, seconds, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        index += 1


@dataclass(frozen=True)
class Reconnect:
    """How long a camera or network stream that drops is waited for: `tries` reopenings, the first after
    `first_wait_s`, each wait twice the one before, at most `max_wait_s` (by default 5 tries over 15.5 s,
    each open bounded by CVTOOL_CONNECT_TIMEOUT as well)."""

    tries: int = 5
    first_wait_s: float = 0.5
    max_wait_s: float = 8.0

    def waits(self) -> list[float]:
        return [min(self.max_wait_s, self.first_wait_s * 2 ** i) for i in range(self.tries)]


RECONNECT = Reconnect()
NO_RECONNECT = Reconnect(tries=0)


def default_reconnect() -> Reconnect:
    """RECONNECT, with CVTOOL_RECONNECT_TRIES tries where it is set (0: a stream that drops ends at once)."""
    raw = os.environ.get("CVTOOL_RECONNECT_TRIES", "").strip()
    if not raw:
        return RECONNECT
    if not raw.isdigit():
        raise UsageError(f"CVTOOL_RECONNECT_TRIES={raw!r} is not a whole number of tries (0 or more)")
    return Reconnect(tries=int(raw))


def stderr_line(message: str) -> None:
    """The default for `on_event`: `cvtool: <line>` on stderr (the CLI's shape; the lower layers never import
    the console)."""
    sys.stderr.write(f"cvtool: {message}\n")
    sys.stderr.flush()


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


class FrameSource:
    """A video input read frame by frame: a file, `cam:N`, or a network stream; InputError when it cannot open.

    `grab()` advances one frame and says whether there was one; `index` is then the frame's number (0, 1, ...
    counted by cvtool; a stream reopened after a drop goes on counting), `captured` the `time.monotonic()` at
    which cvtool received it and `seconds` its time; `retrieve()` is its RGB pixels, converted only when called.

    `live`: a camera or network stream (times from the clock). `paced`: a file read at its own frame rate,
    frame i no sooner than i / fps after the first, as a camera would deliver it (times from the clock too).
    `stride` > 1 or `paced` (frames will be skipped): an intra-only file (Motion JPEG, ...) is read through
    `IntraOnlyCapture`, which decodes only the frames retrieved; other files through OpenCV, whose grab() decodes.
    A live source whose grab fails is reopened as `reconnect` says (None: `default_reconnect()`), each try
    announced through `on_event` (one line); one that stays gone raises InputError. `wait(seconds)` sleeps
    between tries and for pacing, and returns True to stop at once (a closing reader passes its Event's `wait`)."""

    def __init__(self, spec: str | Path, *, paced: bool = False, stride: int = 1, reconnect: Reconnect | None = None,
                 on_event: Callable[[str], None] | None = stderr_line,
                 wait: Callable[[float], bool] = _sleep):
        self.spec = str(spec)
        self.live = is_live(self.spec)
        self.paced = paced and not self.live
        self._sparse = stride > 1 or self.paced  # frames will be skipped: worth not decoding them where one can
        self.reconnect = reconnect if reconnect is not None else default_reconnect()
        self.on_event, self.wait = on_event, wait
        self.capture, self.fps, self.frame_count = self._open()
        self.index = -1
        self.captured = 0.0
        self._start: float | None = None
        self.reconnects = 0

    @property
    def realtime(self) -> bool:
        """Frames arrive at the source's pace (a camera, a stream, a paced file), not as fast as they decode."""
        return self.live or self.paced

    def _open(self) -> tuple[cv2.VideoCapture | IntraOnlyCapture, float, int]:
        if camera_index(self.spec) is not None:
            capture, fps = open_camera(self.spec)
            return capture, fps, 0
        capture, fps, count = open_video(self.spec)
        if self._sparse and not self.live and not remote.is_url(self.spec):
            intra = IntraOnlyCapture.open(self.spec)
            if intra is not None:
                capture.release()
                return intra, intra.fps or fps, intra.count or count
        return capture, fps, count

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) the capture reports."""
        return int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT))

    def grab(self) -> bool:
        """Advance to the next frame (demuxed and decoded, not converted); False at the end, or when `wait` says
        stop. A live source that drops is reopened first (InputError when it does not come back)."""
        if self.paced and self._start is not None:
            delay = self._start + (self.index + 1) / self.fps - time.monotonic()
            if delay > 0 and self.wait(delay):
                return False
        ok = self.capture.grab()
        if not ok and self.live and self.reconnect.tries > 0:
            ok = self._reopen()
        if not ok:
            return False
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self.index += 1
        self.captured = now
        return True

    @property
    def seconds(self) -> float:
        """The current frame's time: since the first frame by the clock (live, paced), else the file's own."""
        if self.realtime:
            return self.captured - (self._start or self.captured)
        ms = self.capture.get(cv2.CAP_PROP_POS_MSEC)
        return ms / 1000 if ms > 0 or self.index == 0 else self.index / self.fps

    def retrieve(self) -> np.ndarray:
        """The current frame, RGB uint8; InputError when FFmpeg cannot convert it."""
        ok, frame = self.capture.retrieve()
        if not ok or frame is None:
            raise InputError(f"frame {self.index} could not be decoded", self.spec)
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def _reopen(self) -> bool:
        waits = self.reconnect.waits()
        had = self.index + 1
        for attempt, delay in enumerate(waits, 1):
            if self.on_event is not None:
                self.on_event(f"{self.spec}: the stream dropped after {had} frames; reconnecting in {delay:g} s "
                              f"(try {attempt} of {len(waits)})")
            if self.wait(delay):
                return False
            self.capture.release()
            try:
                self.capture, fps, _ = self._open()
            except InputError:
                continue
            if self.capture.grab():
                self.reconnects += 1
                if self.on_event is not None:
                    self.on_event(f"{self.spec}: reconnected (try {attempt})")
                return True
        tries = f"{len(waits)} {'try' if len(waits) == 1 else 'tries'}"
        raise InputError(f"the stream dropped and did not come back ({tries} over {sum(waits):g} s)", self.spec)

    def release(self) -> None:
        self.capture.release()


class IntraOnlyCapture:
    """A video file whose every frame is a key frame (Motion JPEG, ProRes, intra-only FFV1, ...) read with PyAV,
    so that a frame skipped by --vid-stride or dropped by newest-frame reading is never decoded: `grab()` only
    demuxes the next frame's packet and `retrieve()` decodes it. The calls FrameSource makes of a
    cv2.VideoCapture (grab, retrieve as BGR, get, release); the same libavcodec decoder, so the same pixels (a
    Motion JPEG: identical, tests/test_video_live.py). `open` is None where PyAV is missing or the codec is not
    intra-only (H.264 and the like: a skipped frame may be needed to decode the next one, so OpenCV decodes all)."""

    def __init__(self, container, stream):
        self.container, self.stream = container, stream
        self.packets = container.demux(stream)
        self.packet = None
        self.decodes = 0
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.count = int(stream.frames or 0)
        self.width, self.height = stream.codec_context.width, stream.codec_context.height

    @classmethod
    def open(cls, path: str | Path) -> "IntraOnlyCapture | None":
        try:
            import av
        except ImportError:
            return None
        try:
            container = av.open(str(path))
        except Exception:  # av.FFmpegError and the like: OpenCV read it, so let OpenCV
            return None
        videos = container.streams.video
        if not videos or not videos[0].codec_context.codec.intra_only:
            container.close()
            return None
        return cls(container, videos[0])

    def isOpened(self) -> bool:  # noqa: N802 (cv2.VideoCapture's name)
        return True

    def grab(self) -> bool:
        try:
            for packet in self.packets:
                if packet.size:  # the demuxer's last packet is empty (it flushes a decoder)
                    self.packet = packet
                    return True
        except Exception:  # a damaged file part-way: its end, as OpenCV's grab() would say
            pass
        self.packet = None
        return False

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        if self.packet is None:
            return False, None
        self.decodes += 1
        try:
            frames = self.stream.codec_context.decode(self.packet)
        except Exception:
            return False, None
        return (True, frames[0].to_ndarray(format="bgr24")) if frames else (False, None)

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FRAME_WIDTH:
            return float(self.width)
        if prop == cv2.CAP_PROP_FRAME_HEIGHT:
            return float(self.height)
        if prop == cv2.CAP_PROP_FPS:
            return self.fps
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return float(self.count)
        if prop == cv2.CAP_PROP_POS_MSEC:
            packet = self.packet
            if packet is None or packet.pts is None:
                return 0.0
            return float((packet.pts - (self.stream.start_time or 0)) * packet.time_base * 1000)
        return 0.0

    def release(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


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
