"""Face verification and one-shot identification: detect -> 5 landmarks -> aligned chip -> descriptor.

The default chain is dlib's, ported (cvtool/models/face_mmod.py, dlib/shape_predictor.py,
ops/face_align.py, face_resnet.py): descriptors are compared by Euclidean distance against the
threshold the embedder was trained for (0.6 for dlib's ResNet; a `cvtool train face` checkpoint
carries its own). Nothing here prints; the CLI turns records into output and exit codes.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cvtool.errors import InputError, UsageError
from cvtool.io.image import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, read_image, write_image
from cvtool.io.outputs import OutputNamer
from cvtool.models.loading import LoadedModel

TASK = "verify-face"
DEFAULT_EMBEDDER = "dlib_face_resnet"
DLIB_THRESHOLD = 0.6  # the dist_thresh dlib's metric loss was trained with (stored in the model file)
AMBIGUOUS_AREA_RATIO = 0.5  # a second face at least this large (by area) makes "the face" ambiguous
MOSTLY_VISIBLE = 2 / 3  # faces cut more than this by the frame are chosen only when no whole face exists
UNKNOWN = "unknown"


@dataclass
class Face:
    box: tuple[float, float, float, float]  # left, top, right, bottom in image pixels
    score: float
    landmarks: np.ndarray  # 5 x 2, image pixels
    descriptor: np.ndarray | None = None
    visible: float = 1.0  # the fraction of the box inside the image

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return max(0.0, right - left) * max(0.0, bottom - top)

    def to_record(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4),
                "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks]}


# -- detectors: name -> factory(device) -> object with .detect(list of RGB uint8) -> [[(l, t, r, b, score)]]

class _AutoUpsampleMmod:
    """dlib's CNN finds faces from about 80 px (40 px upsampled once): small images are enlarged once by
    default, and very large ones are searched at a reduced size (faces there are big), boxes mapped back."""

    SMALL_SIDE = 1000
    LARGE_SIDE = 2000

    def __init__(self, device, upsample: int | None):
        from cvtool.models.face_mmod import MmodFaceDetector

        self.detector = MmodFaceDetector.pretrained(device)
        self.upsample = upsample

    def detect(self, images: list[np.ndarray]) -> list[list[tuple]]:
        import cv2

        found = []
        for rgb in images:  # sizes differ per photo, so each is its own canvas anyway
            side = max(rgb.shape[:2])
            scale = 1.0
            if self.upsample is None and side > self.LARGE_SIDE:
                scale = self.LARGE_SIDE / side
                rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                                 interpolation=cv2.INTER_AREA)
            upsample = self.upsample if self.upsample is not None else int(side <= self.SMALL_SIDE)
            boxes = self.detector.detect([rgb], upsample=upsample)[0]
            found.append([(l / scale, t / scale, r / scale, b / scale, score) for l, t, r, b, score in boxes])
        return found


def _mmod(device, upsample):
    return _AutoUpsampleMmod(device, upsample)


def _haar(device, upsample):
    from cvtool.models.face_haar import HaarFaceDetector

    return HaarFaceDetector()


FACE_DETECTORS: dict[str, Callable] = {"mmod": _mmod, "haar": _haar}


class FaceEngine:
    """The chain shared by verify, identify and calibrate; batched over all faces of a batch of images."""

    def __init__(self, embedder: LoadedModel, *, detector: str = "mmod", upsample: int | None = None,
                 threshold: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        from cvtool.models.dlib.shape_predictor import load_shape_predictor

        if detector not in FACE_DETECTORS:
            raise UsageError(f"--detector {detector!r}: choose one of {', '.join(FACE_DETECTORS)}")
        self.embedder = embedder
        self.detector_name = detector
        self.detector = FACE_DETECTORS[detector](embedder.device, upsample)
        self.landmarks = load_shape_predictor("5")
        self.threshold = threshold if threshold is not None else embedder_threshold(embedder)
        self.max_pixels = max_pixels

    @property
    def model_name(self) -> str:
        return self.embedder.name

    @property
    def weights_sha256(self) -> str:
        return self.embedder.weights_sha256

    def read(self, path: str | Path) -> np.ndarray:
        return read_image(path, max_pixels=self.max_pixels)

    def find(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces per image, left to right (the numbering --face-index uses)."""
        found = []
        for rgb, boxes in zip(images, self.detector.detect(images)):
            if not boxes:
                found.append([])
                continue
            rects = np.array([b[:4] for b in boxes], dtype=np.float64)
            points = self.landmarks.predict(rgb, rects)
            faces = [Face(tuple(float(v) for v in b[:4]), float(b[4]), np.asarray(p, dtype=np.float64),
                          visible=_visible_fraction(b[:4], rgb.shape)) for b, p in zip(boxes, points)]
            found.append(sorted(faces, key=lambda f: (f.box[0], f.box[1])))
        return found

    def describe(self, images: list[np.ndarray], faces: list[list[Face]]) -> None:
        """Fill every face's descriptor, one forward pass for all of them."""
        import torch

        from cvtool.ops.face_align import chip_details, extract_chip

        chips, owners = [], []
        for rgb, image_faces in zip(images, faces):
            for face in image_faces:
                chips.append(self.embedder.preprocess(extract_chip(rgb, chip_details(face.landmarks))))
                owners.append(face)
        if not chips:
            return
        with torch.inference_mode():
            batch = torch.from_numpy(np.stack(chips)).to(self.embedder.device)
            out = self.embedder.module(batch).float().cpu().numpy()
        for face, descriptor in zip(owners, out):
            face.descriptor = descriptor

    def analyse(self, images: list[np.ndarray]) -> list[list[Face]]:
        faces = self.find(images)
        self.describe(images, faces)
        return faces


def _visible_fraction(box, shape) -> float:
    left, top, right, bottom = box
    h, w = shape[:2]
    area = max(0.0, right - left) * max(0.0, bottom - top)
    inside = max(0.0, min(right, w) - max(left, 0)) * max(0.0, min(bottom, h) - max(top, 0))
    return inside / area if area > 0 else 0.0


def embedder_threshold(embedder: LoadedModel) -> float:
    """The distance below which two faces are the same person, as the embedder's training chose it."""
    meta = getattr(embedder, "meta", None) or {}
    value = meta.get("threshold")
    return float(value) if value is not None else DLIB_THRESHOLD


def choose_face(faces: list[Face], index: int | None, path: str) -> Face:
    """The face to compare: --face-index, else the clearly largest one; ambiguity is an error, not a guess.

    A face mostly cut off by the frame (a bystander at the edge) is passed over when a whole one exists.
    """
    if not faces:
        raise InputError("no face found", path)
    if index is not None:
        if not 0 <= index < len(faces):
            raise InputError(f"--face-index {index}: only {len(faces)} face(s) found (numbered from 0, left to right)",
                             path)
        return faces[index]
    whole = [f for f in faces if f.visible >= MOSTLY_VISIBLE]
    by_area = sorted(whole or faces, key=lambda f: f.area, reverse=True)
    if len(by_area) > 1 and by_area[1].area >= AMBIGUOUS_AREA_RATIO * by_area[0].area:
        boxes = "; ".join(f"{i}: {[int(v) for v in f.box]}" for i, f in enumerate(faces) if f in by_area)
        raise InputError(f"{len(by_area)} faces of similar size ({boxes}); choose one with --face-index N", path)
    return by_area[0]


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


# -- verify: two images, one verdict

def verify(engine: FaceEngine, path_a: str, path_b: str, *, index_a: int | None = None,
           index_b: int | None = None) -> dict:
    """One record: the distance, the threshold and the verdict, with the faces used (raises InputError)."""
    start = time.perf_counter()
    images = [engine.read(path_a), engine.read(path_b)]
    faces = engine.find(images)
    chosen = [choose_face(faces[0], index_a, path_a), choose_face(faces[1], index_b, path_b)]
    engine.describe(images, [[chosen[0]], [chosen[1]]])
    dist = distance(chosen[0].descriptor, chosen[1].descriptor)
    return {
        "path": path_a, "task": TASK, "model": engine.model_name,
        "weights_sha256": engine.weights_sha256, "ms": round((time.perf_counter() - start) * 1000, 1),
        "result": {
            "path_b": path_b, "same": dist < engine.threshold, "distance": round(dist, 4),
            "threshold": engine.threshold, "detector": engine.detector_name, "model": engine.model_name,
            "faces_found": [len(faces[0]), len(faces[1])],
            "face_a": chosen[0].to_record(), "face_b": chosen[1].to_record(),
        },
    }


VERIFY_COLUMNS = ["path_b", "same", "distance", "threshold", "detector", "model"]


def verify_rows(result: dict) -> list[list]:
    return [[result["path_b"], result["same"], result["distance"], result["threshold"], result["detector"],
             result["model"]]]


def save_pair(record: dict, engine: FaceEngine, out_dir: Path) -> list[str]:
    """Both images side by side at one height, the compared faces boxed, the verdict written across."""
    import cv2

    from cvtool.io.render import draw_detections

    result = record["result"]
    verdict = "same person" if result["same"] else "different people"
    text = f"{verdict}: d={result['distance']:.3f} (threshold {result['threshold']:.3f})"
    panels = []
    for path, face in ((record["path"], result["face_a"]), (result["path_b"], result["face_b"])):
        rgb = engine.read(path)
        det = {"label": "face", "index": 1 if result["same"] else 2, "score": face["score"], "box": face["box"],
               "keypoints": [[x, y, 1] for x, y in face["landmarks"]]}
        drawn = draw_detections(rgb, [det])
        scale = 480 / drawn.shape[0]
        panels.append(cv2.resize(drawn, (max(1, round(drawn.shape[1] * scale)), 480), interpolation=cv2.INTER_AREA))
    sheet = np.concatenate(panels, axis=1)
    banner = np.full((40, sheet.shape[1], 3), 255, np.uint8)
    cv2.putText(banner, text, (8, 27), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    target = OutputNamer(out_dir, f".vs.{Path(result['path_b']).stem}.jpg")(record["path"])
    write_image(target, np.concatenate([banner, sheet], axis=0))
    return [str(target)]


# -- calibrate: fit the threshold on the user's own labelled pairs

def read_pairs(path: str | Path) -> list[tuple[str, str, bool]]:
    """`path_a,path_b,same` rows (a header row is allowed; same: 1/0, true/false or yes/no)."""
    import csv

    truthy, falsy = {"1", "true", "yes", "y"}, {"0", "false", "no", "n"}
    base = Path(path).parent
    pairs = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for lineno, row in enumerate(csv.reader(handle), 1):
                if not row or row[0].strip().startswith("#"):
                    continue
                if len(row) != 3:
                    raise InputError(f"line {lineno}: expected path_a,path_b,same; got {len(row)} field(s)", path)
                a, b, same = (c.strip() for c in row)
                if same.lower() not in truthy | falsy:
                    if lineno == 1:
                        continue  # a header
                    raise InputError(f"line {lineno}: same must be 1/0, true/false or yes/no, not {same!r}", path)
                resolve = (lambda p: p if os.path.isabs(p) or os.path.exists(p) else str(base / p))
                pairs.append((resolve(a), resolve(b), same.lower() in truthy))
    except OSError as exc:
        raise InputError(f"cannot read pairs file ({exc.strerror or exc})", path) from None
    except UnicodeDecodeError:
        raise InputError("not a text CSV file", path) from None
    if not pairs:
        raise InputError("no pairs in the file", path)
    return pairs


def fit_threshold(distances: np.ndarray, same: np.ndarray) -> dict:
    """The threshold maximising accuracy (midway between neighbouring distances), with ROC AUC."""
    from sklearn.metrics import roc_auc_score

    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    values = np.unique(distances)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    accuracy = np.array([np.mean((distances < t) == same) for t in candidates])
    best = int(np.argmax(accuracy))
    both = same.any() and (~same).any()
    return {
        "threshold": round(float(candidates[best]), 4),
        "accuracy": round(float(accuracy[best]), 4),
        "roc_auc": round(float(roc_auc_score(same, -distances)), 4) if both else None,
    }


def calibrate(engine: FaceEngine, pairs: list[tuple[str, str, bool]], on_pair: Callable[[], None] | None = None) -> dict:
    """Distances for every readable pair, the accuracy-maximising threshold and the current one's accuracy."""
    cache: dict[str, np.ndarray | str] = {}

    def descriptor(path: str):
        if path not in cache:
            try:
                image = engine.read(path)
                faces = engine.find([image])[0]
                face = choose_face(faces, None, path)
                engine.describe([image], [[face]])
                cache[path] = face.descriptor
            except InputError as exc:
                cache[path] = str(exc)
        return cache[path]

    rows, failed = [], []
    for a, b, same in pairs:
        da, db = descriptor(a), descriptor(b)
        bad = [d for d in (da, db) if isinstance(d, str)]
        if bad:
            failed.append({"path": a, "path_b": b, "error": bad[0]})
        else:
            rows.append((distance(da, db), same))
        if on_pair:
            on_pair()
    if not rows:
        raise InputError(f"no pair could be measured (the first problem: {failed[0]['error']})")
    distances = np.array([r[0] for r in rows])
    same = np.array([r[1] for r in rows])
    fitted = fit_threshold(distances, same)
    return {
        "task": TASK, "model": engine.model_name, "weights_sha256": engine.weights_sha256,
        "result": {
            **fitted, "pairs": len(rows), "pairs_failed": len(failed), "detector": engine.detector_name,
            "current_threshold": engine.threshold,
            "current_accuracy": round(float(np.mean((distances < engine.threshold) == same)), 4),
            "same_distance_max": round(float(distances[same].max()), 4) if same.any() else None,
            "different_distance_min": round(float(distances[~same].min()), 4) if (~same).any() else None,
        },
        "failed": failed,
    }


# -- identify: every face of every image against a gallery of known people

@dataclass
class Gallery:
    names: list[str]
    descriptors: np.ndarray  # N x D, one row per gallery photo
    files: list[str] = field(default_factory=list)

    def match(self, descriptor: np.ndarray, threshold: float) -> tuple[str, float]:
        dists = np.linalg.norm(self.descriptors - descriptor[None].astype(self.descriptors.dtype), axis=1)
        best = int(np.argmin(dists))
        return (self.names[best] if dists[best] < threshold else UNKNOWN), float(dists[best])


def gallery_files(root: str | Path) -> list[tuple[str, Path]]:
    """(person, photo) pairs: `KNOWN/alice.jpg` or `KNOWN/alice/*.jpg` (a file's stem or its folder names the person)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--gallery {root}: not a directory")
    found = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            found += [(entry.name, p) for p in sorted(entry.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            found.append((entry.stem, entry))
    if not found:
        raise UsageError(f"--gallery {root}: no images (expected one photo per person, or a folder per person)")
    return found


def load_gallery(engine: FaceEngine, root: str | Path, *, cache_dir: Path | None = None,
                 warn: Callable[[str], None] | None = None) -> Gallery:
    """Descriptors of the known people, reused from the cache while each file's size and mtime are unchanged."""
    files = gallery_files(root)
    cache_path = _gallery_cache_path(root, engine, cache_dir)
    cached = _read_gallery_cache(cache_path)
    names, rows, used = [], [], []
    fresh: dict[str, tuple[str, np.ndarray]] = {}
    for person, path in files:
        key = _file_key(path)
        if key in cached:
            descriptor = cached[key]
        else:
            try:
                image = engine.read(path)
                faces = engine.find([image])[0]
                face = choose_face(faces, None, str(path))
                engine.describe([image], [[face]])
                descriptor = face.descriptor
            except InputError as exc:
                if warn:
                    warn(f"{exc} (gallery photo skipped)")
                continue
        fresh[key] = descriptor
        names.append(person)
        rows.append(descriptor)
        used.append(str(path))
    if not rows:
        raise UsageError(f"--gallery {root}: no usable face in any photo")
    if set(fresh) != set(cached):
        _write_gallery_cache(cache_path, fresh)
    return Gallery(names, np.stack(rows).astype(np.float32), used)


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _gallery_cache_path(root, engine: FaceEngine, cache_dir: Path | None) -> Path:
    from cvtool.cache import cache_root

    ident = f"{Path(root).resolve()}|{engine.weights_sha256}|{engine.detector_name}"
    return (cache_dir or cache_root()) / "galleries" / f"{hashlib.sha256(ident.encode()).hexdigest()[:16]}.npz"


def _read_gallery_cache(path: Path) -> dict[str, np.ndarray]:
    import io

    from cvtool.cache import load_verified

    data = load_verified(path)  # None when missing or not matching its recorded hash
    if data is None:
        return {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return dict(zip(arrays["keys"].tolist(), arrays["descriptors"]))
    except (OSError, KeyError, ValueError):
        return {}  # missing or unreadable: recomputed, never fatal


def _write_gallery_cache(path: Path, entries: dict[str, np.ndarray]) -> None:
    import io

    from cvtool.cache import write_verified

    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(list(entries), dtype=str), descriptors=np.stack(list(entries.values())))
    try:
        write_verified(path, buffer.getvalue())  # with its hash sidecar
    except OSError:
        pass  # a read-only cache only costs time


@dataclass
class _Sample:
    rgb: np.ndarray


class IdentifyPipeline:
    """The runner's pipeline shape: one record per image, every face named or `unknown`."""

    task = TASK

    def __init__(self, engine: FaceEngine, gallery: Gallery, out_dir=None):
        self.engine, self.gallery = engine, gallery
        self.model_name, self.weights_sha256 = engine.model_name, engine.weights_sha256
        self.output_name = OutputNamer(out_dir, ".faces.jpg") if out_dir is not None else None
        self.video_name = OutputNamer(out_dir, ".faces.mp4") if out_dir is not None else None

    def prepare(self, path: str) -> _Sample:
        return _Sample(self.engine.read(path))

    def prepare_array(self, rgb: np.ndarray) -> _Sample:
        """A video frame (the video driver streams frames through predict and render)."""
        return _Sample(rgb)

    def predict(self, samples: list[_Sample]) -> list[dict]:
        images = [s.rgb for s in samples]
        results = []
        for rgb, faces in zip(images, self.engine.analyse(images)):
            records = []
            for face in faces:
                name, dist = self.gallery.match(face.descriptor, self.engine.threshold)
                records.append({"name": name, "distance": round(dist, 4), **face.to_record()})
            results.append({"size": list(rgb.shape[:2]), "threshold": self.engine.threshold,
                            "detector": self.engine.detector_name, "faces": records})
        return results

    def save(self, path: str, sample: _Sample, result: dict, out_dir: Path) -> list[str]:
        target = self.output_name(path)
        write_image(target, self.render(sample.rgb, sample, result))
        return [str(target)]

    def render(self, rgb: np.ndarray, sample: _Sample, result: dict) -> np.ndarray:
        """Boxes named after the nearest known person (or `unknown`) with the distance, and the 5 landmarks."""
        from cvtool.io.render import draw_detections

        known = sorted(set(self.gallery.names))
        detections = [{"label": f["name"], "index": (known.index(f["name"]) + 1) if f["name"] in known else 0,
                       "score": f["distance"], "text": f"{f['name']} d={f['distance']:.2f}", "box": f["box"],
                       "keypoints": [[x, y, 1] for x, y in f["landmarks"]]} for f in result["faces"]]
        return draw_detections(rgb, detections)

    def already_done(self, path: str) -> bool:
        return self.output_name is not None and self.output_name.exists(path)


COLUMNS = ["name", "distance", "x1", "y1", "x2", "y2"]


def rows(result: dict) -> list[list]:
    return [[f["name"], f["distance"], *f["box"]] for f in result["faces"]] or [["(no face)", "", "", "", "", ""]]
