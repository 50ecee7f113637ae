"""OpenCV, imported quiet: cvtool reports a file it cannot read itself, in one line naming the file, so OpenCV's
own messages about it ("[ERROR:0@0.2] global loadsave.cpp ... imdecode_ ...") and FFmpeg's are silenced.

The modules that read files (image.py, video.py) take `cv2` from here, so the setting holds before any read."""

from __future__ import annotations

import os

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's log level, read when its backend starts
import cv2  # noqa: E402

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

__all__ = ["cv2"]
