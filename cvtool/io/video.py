"""Reading and writing video with OpenCV, frame by frame, so memory stays flat over long videos."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from cvtool.errors import InputError

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def open_video(path: str | Path) -> tuple[cv2.VideoCapture, float, int]:
    """(capture, fps, frame count); InputError when OpenCV cannot read it."""
    if not Path(path).is_file():
        raise InputError("no such file", path)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError("not a video OpenCV can read", path)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    return capture, fps, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)


def iter_frames(capture: cv2.VideoCapture, stride: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB frame) for every `stride`-th frame."""
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        if index % stride == 0:
            yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        index += 1


class AtomicVideoWriter:
    """Writes to a temp file beside the target and renames it into place only when closed cleanly."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix, dir=self.path.parent)
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
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.unlink(self.tmp)
