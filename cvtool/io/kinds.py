"""What an input names, from its name alone: an image file, a video file, a camera, a live stream.

Standard library only (no NumPy, no OpenCV), so the thin client expands its inputs without loading them."""

from __future__ import annotations

import re
from pathlib import Path

from cvtool.io import remote

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2"}
)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
_CAMERA = re.compile(r"cam:(\d+)")


def is_video(path: str | Path) -> bool:
    """A video file by its suffix; a URL by its path's suffix (`.../clip.mp4?sig=...`), or a live stream."""
    if remote.is_url(path):
        return remote.is_live_url(path) or remote.url_suffix(path) in VIDEO_SUFFIXES
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_live(spec: str) -> bool:
    """A camera (`cam:N`) or a live network stream (RTSP, RTMP, HLS): no end, no "already done"."""
    return camera_index(spec) is not None or remote.is_live_url(spec)


def camera_index(spec: str) -> int | None:
    """`cam:0` -> 0; anything else -> None (a bare `0` is a file name, never a camera)."""
    match = _CAMERA.fullmatch(str(spec))
    return int(match.group(1)) if match else None


def is_stream(spec: str | Path) -> bool:
    """A video file or a camera: read frame by frame rather than decoded as one image."""
    return camera_index(str(spec)) is not None or is_video(spec)
