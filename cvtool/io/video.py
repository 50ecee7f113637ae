"""Reading and writing video with OpenCV, frame by frame, so memory stays flat over long videos.

A video input is a file with a video suffix (`.mp4`, `.avi`, ...) or `cam:N`, camera N.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Iterator

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own complaints about a bad file: we report it, once
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from cvtool.errors import InputError  # noqa: E402
from cvtool.io.atomic import _UMASK, WriteError  # noqa: E402
from cvtool.io.files import not_regular_reason  # noqa: E402
from cvtool.io.outputs import check_not_input  # noqa: E402

if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # e.g. V4L2's "can't open camera by index"

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
_CAMERA = re.compile(r"cam:(\d+)")


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def camera_index(spec: str) -> int | None:
    """`cam:0` -> 0; anything else -> None (a bare `0` is a file name, never a camera)."""
    match = _CAMERA.fullmatch(str(spec))
    return int(match.group(1)) if match else None


def is_stream(spec: str | Path) -> bool:
    """A video file or a camera: read frame by frame rather than decoded as one image."""
    return camera_index(str(spec)) is not None or is_video(spec)


def open_video(path: str | Path) -> tuple[cv2.VideoCapture, float, int]:
    """(capture, fps, frame count); InputError when OpenCV cannot read it."""
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


class AtomicVideoWriter:
    """Writes to a temp file beside the target and renames it into place only when closed cleanly."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        check_not_input(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix,
                                            dir=self.path.parent)
        except OSError as exc:  # read-only or full --out: this input's error line, not a crash
            raise WriteError(self.path, exc) from exc
        os.close(fd)
        fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() in (".mp4", ".m4v", ".mov") else "MJPG"))
        self.writer = cv2.VideoWriter(self.tmp, fourcc, fps, size)
        if not self.writer.isOpened():
            os.unlink(self.tmp)
            raise InputError(f"cannot write video as {self.path.suffix}", self.path)

    def write(self, rgb: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self, ok: bool = True) -> None:
        self.writer.release()
        if ok:
            os.chmod(self.tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 is not what the user's other files get
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.unlink(self.tmp)
