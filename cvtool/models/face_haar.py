"""A fast, classical face detector: OpenCV's Viola-Jones Haar cascade (haarcascade_frontalface_default.xml).

The `--detector haar` alternative to dlib's CNN (MMOD) detector: tens of milliseconds on a CPU, but
frontal faces only and more false alarms. Boxes follow dlib's convention, (left, top, right, bottom)
with right/bottom inclusive (x + w - 1, y + h - 1), so they feed the shape predictors directly.

The score is the cascade's level weight from detectMultiScale3 (the last stage's boosted sum for the
window, larger = more face-like; not a probability, no fixed scale), or 1.0 where OpenCV returns none.

Availability: CascadeClassifier and the cascade XML files ship with OpenCV 4.x (cv2.data.haarcascades).
OpenCV 5.0 moved the Haar cascades out of the main package (to opencv_contrib's xobjdetect) and ships
no XML files; there this detector raises a one-line WeightsError saying so.

Box quality for landmarks: dlib's 5-point predictor was trained on dlib HOG-detector boxes. Measured
with OpenCV 4.12 on skimage's astronaut at 1x, 2x and 3x (bench/face_landmarks.py's haar_figures; one
face, so indicative only): Haar boxes are 2-10 % wider and centred 8-15 % of the box height higher
than dlib's HOG boxes, and the 5-point landmarks they give move by at most 1.2 % of the eye distance.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from cvtool.errors import WeightsError

CASCADE = "haarcascade_frontalface_default.xml"

_lock = threading.Lock()
_loaded: dict[str, object] = {}


def cascade_path(path: str | Path | None = None) -> Path:
    """The cascade XML: `path` if given, else the one OpenCV installs; WeightsError when neither exists."""
    import cv2

    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsError("Haar cascade file not found", path)
        return path
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    candidate = Path(folder) / CASCADE if folder else None
    if candidate is None or not candidate.is_file():
        raise WeightsError(f"the Haar face detector needs {CASCADE}, which OpenCV {cv2.__version__} does not ship "
                           "(OpenCV 5 moved Haar cascades to opencv-contrib); use the CNN detector, or install "
                           "opencv-python-headless<5")
    return candidate


def _classifier(path: str | Path | None):
    import cv2

    if not hasattr(cv2, "CascadeClassifier"):
        raise WeightsError(f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved Haar cascades to "
                           "opencv-contrib); use the CNN detector, or install opencv-python-headless<5")
    source = cascade_path(path)
    key = str(source)
    with _lock:
        if key not in _loaded:
            classifier = cv2.CascadeClassifier(key)
            if classifier.empty():
                raise WeightsError("not a readable OpenCV cascade file", source)
            _loaded[key] = classifier
        return _loaded[key]


class HaarFaceDetector:
    """detect(images) -> per image a list of (l, t, r, b, score), dlib-style inclusive boxes, best first."""

    def __init__(self, cascade: str | Path | None = None, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 30):
        self.classifier = _classifier(cascade)
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect_one(self, image: np.ndarray) -> list[tuple[int, int, int, int, float]]:
        import cv2

        image = np.asarray(image)
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        gray = cv2.equalizeHist(np.ascontiguousarray(gray, dtype=np.uint8))
        size = (self.min_size, self.min_size)
        with _lock:  # one classifier object per process; OpenCV's is not documented as thread-safe
            rects, _levels, weights = self.classifier.detectMultiScale3(
                gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=size,
                outputRejectLevels=True)
        rects = np.asarray(rects).reshape(-1, 4)
        weights = np.asarray(weights, np.float64).reshape(-1)
        if len(weights) != len(rects):
            weights = np.ones(len(rects))
        found = [(int(x), int(y), int(x + w - 1), int(y + h - 1), float(s)) for (x, y, w, h), s in zip(rects, weights)]
        return sorted(found, key=lambda box: -box[4])

    def search(self, rgb) -> None:
        """A cascade has no pyramid levels to search on demand: its callers take `detect`'s faces."""
        return None

    def detect(self, images) -> list[list[tuple[int, int, int, int, float]]]:
        return [self.detect_one(image) for image in images]


def detect(images, cascade: str | Path | None = None) -> list[list[tuple[int, int, int, int, float]]]:
    """Faces in each RGB (or gray) uint8 image: lists of (left, top, right, bottom, score), inclusive corners."""
    return HaarFaceDetector(cascade).detect(images)
