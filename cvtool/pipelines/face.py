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
from cvtool.io.image import ARRAY_NAME, BYTES_NAME, DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, load_image, write_image
from cvtool.io.outputs import OutputNamer
from cvtool.models.dlib.mmod import DEFAULT_MIN_FACE  # noqa: F401 - px: the smallest face auto detection seeks
from cvtool.models.loading import LoadedModel
from cvtool.tasks.verify_face import SPEC as VERIFY_FACE

TASK = "verify-face"
DEFAULT_EMBEDDER = VERIFY_FACE.default_model
DLIB_THRESHOLD = 0.6  # the dist_thresh dlib's metric loss was trained with (stored in the model file)
COMPARABLE = 0.8  # a second face at least this prominent (size x centrality) makes "the face" ambiguous
CENTRE_WEIGHT = 0.5  # prominence = side x (1 - CENTRE_WEIGHT x distance from the centre / half-diagonal)
MOSTLY_VISIBLE = 2 / 3  # faces cut more than this by the frame are chosen only when no whole face exists
# The search for the face a verdict uses (FaceEngine.find_main): a face smaller than COMPARABLE x the most
# prominent whole face found can be neither the choice nor a rival; NMS_SEPARATION smaller than those, its box
# cannot overlap theirs enough for dlib's NMS to drop one (intersection over the pair's bounding box > 0.338: two
# boxes whose sides differ 1.2^3 = 1.728x reach 0.335 at most), so the levels that find only such faces are not
# searched. (Not covered: a chain of three overlapping detections, where a smaller one outscores a middle one
# that outscores a larger one; bench/face_search.py checks the choices against the exhaustive search's.)
NMS_SEPARATION = 1.75
FIRST_SEARCH = 1 / 5  # the first levels searched: faces at least this fraction of the image's shorter side
SIDE_SLACK = 2.0  # px: a level's boxes are its window's side, give or take rounding
UNKNOWN = "unknown"
# Sanity on the models' outputs: a landmark this many box sizes outside its box, or a descriptor whose
# length lies outside the embedder's known range, is a failure for that input, never a verdict.
LANDMARK_SLACK = 1.0
UNIT_NORM = (0.99, 1.01)  # embedders written here output unit vectors
DESCRIPTOR_NORMS = {"dlib_face_resnet": (1.0, 2.0), "face_embed_small": UNIT_NORM}  # dlib: 1.31-1.63 on 75 real faces


def source_name(source) -> str:
    """How errors and records name an image: its path, or <bytes> / <array> for what has none."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return BYTES_NAME
    return ARRAY_NAME


def record_path(source) -> str | None:
    """A record's `path`/`path_b`: the path, or None for an image that has none (the API's convention)."""
    return str(source) if isinstance(source, (str, os.PathLike)) else None


@dataclass
class Face:
    box: tuple[float, float, float, float]  # left, top, right, bottom in image pixels
    score: float
    landmarks: np.ndarray  # 5 x 2, image pixels
    descriptor: np.ndarray | None = None
    visible: float = 1.0  # the fraction of the box inside the image
    image_size: tuple[int, int] | None = None  # (height, width) of the image it was found in
    index: int | None = None  # its number in the image, left to right
    why: str | None = None  # how choose_face picked it

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return max(0.0, right - left) * max(0.0, bottom - top)

    @property
    def centrality(self) -> float:
        """1 at the image centre, falling to 1 - CENTRE_WEIGHT at a corner (1 when the image is unknown)."""
        if self.image_size is None:
            return 1.0
        h, w = self.image_size
        left, top, right, bottom = self.box
        dx, dy = (left + right) / 2 - w / 2, (top + bottom) / 2 - h / 2
        return 1.0 - CENTRE_WEIGHT * min(1.0, float(np.hypot(dx, dy) / max(1e-9, np.hypot(w / 2, h / 2))))

    @property
    def prominence(self) -> float:
        return float(np.sqrt(self.area)) * self.centrality

    def to_record(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4),
                "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks]}


def face_detector_entry(name: str):
    """The registry's face detector called `name` (an entry name or alias: mmod, haar), or a UsageError
    listing them."""
    from cvtool.models.registry import get_entry, list_entries

    try:
        return get_entry(name, "face-detect")  # imports only as far as the name (no torch for mmod / haar)
    except UsageError:
        names = ", ".join(e.aliases[0] if e.aliases else e.name for e in list_entries("face-detect"))
        raise UsageError(f"--detector {name!r}: choose one of {names}") from None


class FaceEngine:
    """The chain shared by verify, identify and calibrate; batched over all faces of a batch of images."""

    def __init__(self, embedder: LoadedModel, *, detector: str = "mmod", upsample: int | None = None,
                 threshold: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_face: float = DEFAULT_MIN_FACE, detect_pixels: int | None = None, on_export=None):
        from cvtool.models.dlib.shape_predictor import load_shape_predictor
        from cvtool.models.face_detectors import FaceDetectorOptions, make_face_detector

        entry = face_detector_entry(detector)
        self.embedder = embedder
        self.detector_name = entry.aliases[0] if entry.aliases else entry.name  # records say mmod / haar
        if min_face <= 0:
            raise UsageError(f"--min-face {min_face}: must be a positive size in pixels")
        # the detector runs where the embedder does: onnxruntime keeps the whole chain free of torch
        self.detector = make_face_detector(entry, FaceDetectorOptions(
            device=embedder.device, backend=embedder.backend, upsample=upsample, min_face=min_face,
            detect_pixels=detect_pixels, on_export=on_export))
        self.landmarks = load_shape_predictor("5")
        self.threshold = threshold if threshold is not None else embedder_threshold(embedder)
        self.max_pixels = max_pixels

    @property
    def model_name(self) -> str:
        return self.embedder.name

    @property
    def weights_sha256(self) -> str:
        return self.embedder.weights_sha256

    def read(self, source) -> np.ndarray:
        """A path, encoded bytes, an RGB uint8 array or a PIL image -> HxWx3 uint8 RGB (or InputError)."""
        return load_image(source, max_pixels=self.max_pixels)

    def find(self, images: list[np.ndarray], names: list[str] | None = None) -> list[list[Face]]:
        """Faces per image, left to right (the numbering --face-index uses). A face whose landmarks are
        not finite or lie far outside its box raises InputError naming the image (`names`)."""
        return [self._faces(rgb, boxes, names[k] if names else None)
                for k, (rgb, boxes) in enumerate(zip(images, self.detector.detect(images)))]

    def _faces(self, rgb: np.ndarray, boxes: list[tuple], name: str | None) -> list[Face]:
        """Detector boxes -> Faces with landmarks, left to right (or InputError naming the image)."""
        if not boxes:
            return []
        rects = np.array([b[:4] for b in boxes], dtype=np.float64)
        points = self.landmarks.predict(rgb, rects)
        faces = [Face(tuple(float(v) for v in b[:4]), float(b[4]), np.asarray(p, dtype=np.float64),
                      visible=_visible_fraction(b[:4], rgb.shape), image_size=tuple(rgb.shape[:2]))
                 for b, p in zip(boxes, points)]
        faces.sort(key=lambda f: (f.box[0], f.box[1]))
        for i, face in enumerate(faces):
            face.index = i
            problem = landmark_problem(face)
            if problem:
                raise InputError(problem, name)
        return faces

    def find_main(self, rgb: np.ndarray, name: str | None = None) -> tuple[list[Face], float | None]:
        """The faces choose_face needs to pick the face of a photo without --face-index, and the smallest face
        side searched (None: every level, or a detector without levels): coarse pyramid levels first, finer
        ones only while they could hold the choice or a rival (see NMS_SEPARATION). The choice, its box and so
        its distance are the exhaustive search's; faces too small to matter are not looked for."""
        search = self.detector.search(rgb)
        if search is None:
            return self.find([rgb], [name] if name else None)[0], None
        sides = search.level_sides
        first = FIRST_SEARCH * min(rgb.shape[:2])
        todo = {k for k, side in enumerate(sides) if side >= first} or set(range(len(sides)))
        boxes: list[tuple] = []
        while todo:
            search.run(todo)
            boxes = search.faces()
            todo = _levels_that_matter(boxes, sides, rgb.shape) - search.searched
        faces = self._faces(rgb, boxes, name)
        smallest = min((sides[k] for k in search.searched), default=None)
        return faces, (None if smallest is None or len(search.searched) == len(sides) else smallest)

    def describe(self, images: list[np.ndarray], faces: list[list[Face]], names: list[str] | None = None) -> None:
        """Fill every face's descriptor, one forward pass for all of them. A descriptor that is not finite,
        or whose length is outside what the embedder produces, raises InputError naming the image."""
        from cvtool.ops.face_align import chip_details, extract_chip

        chips, owners = [], []
        for rgb, image_faces in zip(images, faces):
            for face in image_faces:
                chips.append(self.embedder.preprocess(extract_chip(rgb, chip_details(face.landmarks))))
                owners.append(face)
        if not chips:
            return
        if self.embedder.backend == "onnxruntime":
            out = self.embedder.module.run(np.stack(chips))[0].astype(np.float32, copy=False)
        else:
            import torch

            with torch.inference_mode():
                batch = torch.from_numpy(np.stack(chips)).to(self.embedder.device.torch)
                out = self.embedder.forward(batch).float().cpu().numpy()  # the entry's forward, under --half
        for face, descriptor in zip(owners, out):
            face.descriptor = descriptor
        for k, image_faces in enumerate(faces):
            for face in image_faces:
                problem = descriptor_problem(face, self.descriptor_norms)
                if problem:
                    raise InputError(problem, names[k] if names else None)

    @property
    def descriptor_norms(self) -> tuple[float, float] | None:
        return DESCRIPTOR_NORMS.get(self.embedder.name)

    def analyse(self, images: list[np.ndarray], names: list[str] | None = None) -> list[list[Face]]:
        faces = self.find(images, names)
        self.describe(images, faces, names)
        return faces


def _levels_that_matter(boxes: list[tuple], sides: list[float], shape) -> set[int]:
    """The pyramid levels whose faces could still change choose_face's answer, given the faces found so far:
    every level while no whole face is found; else those whose faces could be the choice or a rival (at least
    COMPARABLE x the best prominence: sqrt(area) x centrality is at most the side) or overlap one of those
    enough for dlib's NMS to drop either (within NMS_SEPARATION of the smallest of them in side)."""
    faces = [Face(tuple(float(v) for v in b[:4]), float(b[4]), np.zeros((0, 2)),
                  visible=_visible_fraction(b[:4], shape), image_size=tuple(shape[:2])) for b in boxes]
    whole = [f for f in faces if f.visible >= MOSTLY_VISIBLE]
    if not whole:
        return set(range(len(sides)))
    best = max(f.prominence for f in whole)
    relevant = [f for f in whole if f.prominence >= COMPARABLE * best]  # the choice, and its rivals if any
    smallest = min(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in relevant)
    bound = min(COMPARABLE * best, smallest / NMS_SEPARATION)
    return {k for k, side in enumerate(sides) if side + SIDE_SLACK >= bound}


def _where(face: Face) -> str:
    return f"face {face.index} at {[int(round(v)) for v in face.box]}" if face.index is not None else "a face"


def landmark_problem(face: Face) -> str | None:
    """Why a face's landmarks cannot be trusted (not finite, or far outside its box), or None."""
    points = np.asarray(face.landmarks, dtype=np.float64)
    if not np.isfinite(points).all():
        return f"the landmark model gave non-finite points for {_where(face)}"
    left, top, right, bottom = face.box
    slack = LANDMARK_SLACK * max(right - left, bottom - top, 1.0)
    outside = ((points[:, 0] < left - slack) | (points[:, 0] > right + slack) | (points[:, 1] < top - slack)
               | (points[:, 1] > bottom + slack))
    if outside.any():
        x, y = points[int(np.argmax(outside))]
        return f"the landmark model put a point at ({x:.0f}, {y:.0f}), far outside {_where(face)}"
    return None


def descriptor_problem(face: Face, norms: tuple[float, float] | None) -> str | None:
    """Why a face's descriptor cannot be compared (not finite, or a length the embedder never gives), or None."""
    descriptor = np.asarray(face.descriptor, dtype=np.float64)
    if not np.isfinite(descriptor).all():
        return f"the embedder gave a non-finite descriptor for {_where(face)} (broken weights?)"
    length = float(np.linalg.norm(descriptor))
    if norms is not None and not norms[0] <= length <= norms[1]:
        return (f"the embedder gave a descriptor of length {length:.3g} for {_where(face)}, outside its normal "
                f"{norms[0]:g}-{norms[1]:g} (broken weights?)")
    return None


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
    """The face to compare: --face-index, else the most prominent one (size x centrality, so the subject
    of a portrait wins over a smaller passer-by near the edge); two comparable faces are an error, not a
    guess. A face mostly cut off by the frame is passed over when a whole one exists. The chosen face's
    `why` says how it was picked."""
    if not faces:
        raise InputError("no face found", path)
    if index is not None:
        if not 0 <= index < len(faces):
            raise InputError(f"--face-index {index}: only {len(faces)} face(s) found (numbered from 0, left to right)",
                             path)
        return _chosen(faces[index], index, "--face-index")
    if len(faces) == 1:
        return _chosen(faces[0], 0, "the only face")
    whole = [f for f in faces if f.visible >= MOSTLY_VISIBLE]
    ranked = sorted(whole or faces, key=lambda f: f.prominence, reverse=True)
    number = {id(f): i for i, f in enumerate(faces)}
    if len(ranked) > 1 and ranked[1].prominence >= COMPARABLE * ranked[0].prominence:
        ranked_ids = {id(f) for f in ranked}
        rivals = [f for f in faces if id(f) in ranked_ids and f.prominence >= COMPARABLE * ranked[0].prominence]
        boxes = "; ".join(f"{number[id(f)]}: {[int(v) for v in f.box]}" for f in rivals)
        raise InputError(f"{len(rivals)} faces of similar size ({boxes}); choose one with --face-index N", path)
    best = ranked[0]
    ratio = ranked[1].prominence / best.prominence if len(ranked) > 1 else 0.0
    cut = len(faces) - len(whole) if whole else 0
    why = (f"the most prominent of {len(faces)} faces (size x centrality; the next is {ratio:.2f} as prominent"
           + (f"; {cut} cut off by the frame passed over" if cut else "") + ")")
    return _chosen(best, number[id(best)], why)


def _chosen(face: Face, index: int, why: str) -> Face:
    face.index, face.why = index, why
    return face


def chosen_record(face: Face) -> dict:
    """The face a verdict used: its record, its number (left to right) and why it was the one."""
    return {**face.to_record(), "index": face.index, "chosen": face.why}


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


# -- verify: two images, one verdict

def verify(engine: FaceEngine, a, b, *, index_a: int | None = None, index_b: int | None = None) -> dict:
    """One record: the distance, the threshold and the verdict, with the faces used and why (raises InputError).

    `a` and `b` are any image source engine.read takes: paths, encoded bytes, RGB arrays, PIL images;
    for those without a path the record's path is None and errors name them <bytes> / <array>."""
    start = time.perf_counter()
    names = [source_name(a), source_name(b)]
    images = [engine.read(a), engine.read(b)]
    found = [engine.find_main(image, name) if index is None else (engine.find([image], [name])[0], None)
             for image, name, index in zip(images, names, (index_a, index_b))]
    faces = [f for f, _ in found]
    chosen = [choose_face(faces[0], index_a, names[0]), choose_face(faces[1], index_b, names[1])]
    for image, face, name in zip(images, chosen, names):
        engine.describe([image], [[face]], [name])
    dist = distance(chosen[0].descriptor, chosen[1].descriptor)
    return {
        "path": record_path(a), "task": TASK, "model": engine.model_name,
        "weights_sha256": engine.weights_sha256, "ms": round((time.perf_counter() - start) * 1000, 1),
        "result": {
            "path_b": record_path(b), "same": dist < engine.threshold, "distance": round(dist, 4),
            "threshold": engine.threshold, "detector": engine.detector_name, "model": engine.model_name,
            "faces_found": [len(faces[0]), len(faces[1])],
            # faces smaller than this (px) were not looked for: they could not change the choice (null: all were)
            "searched_from_px": [None if side is None else round(side) for _, side in found],
            "face_a": chosen_record(chosen[0]), "face_b": chosen_record(chosen[1]),
        },
    }


def save_pair(record: dict, engine: FaceEngine, out_dir: Path, images: list | None = None) -> list[str]:
    """Both images side by side at one height, the compared faces boxed, the verdict written across.

    `images` (the two sources verify was given) is needed when they have no path; by default the
    record's paths are read again."""
    import cv2

    from cvtool.io.render import draw_detections

    result = record["result"]
    verdict = "same person" if result["same"] else "different people"
    text = f"{verdict}: d={result['distance']:.3f} (threshold {result['threshold']:.3f})"
    panels = []
    sources = images if images is not None else [record["path"], result["path_b"]]
    for source, face in zip(sources, (result["face_a"], result["face_b"])):
        rgb = engine.read(source)
        det = {"label": "face", "index": 1 if result["same"] else 2, "score": face["score"], "box": face["box"],
               "keypoints": [[x, y, 1] for x, y in face["landmarks"]]}
        drawn = draw_detections(rgb, [det])
        scale = 480 / drawn.shape[0]
        panels.append(cv2.resize(drawn, (max(1, round(drawn.shape[1] * scale)), 480), interpolation=cv2.INTER_AREA))
    sheet = np.concatenate(panels, axis=1)
    banner = np.full((40, sheet.shape[1], 3), 255, np.uint8)
    cv2.putText(banner, text, (8, 27), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    stem_b = Path(result["path_b"]).stem if result["path_b"] else "image_b"
    target = OutputNamer(out_dir, f".vs.{stem_b}.jpg")(record["path"] or "image_a")
    write_image(target, np.concatenate([banner, sheet], axis=0))
    return [str(target)]


# -- calibrate: fit the threshold on the user's own labelled pairs

def read_pairs(path: str | Path) -> list[tuple[str, str, bool]]:
    """`path_a,path_b,same` rows (a header row is allowed; same: 1/0, true/false or yes/no).

    A file that cannot be read or has a malformed line stops the command: UsageError naming the file
    and the line (exit 2), as for any bad option."""
    import csv

    from cvtool.io.files import open_regular

    truthy, falsy = {"1", "true", "yes", "y"}, {"0", "false", "no", "n"}
    base = Path(path).parent
    pairs = []
    lineno = 0
    try:
        with open_regular(path, "r", newline="", encoding="utf-8") as handle:  # a FIFO would block
            for lineno, row in enumerate(csv.reader(handle), 1):
                if not row or row[0].strip().startswith("#"):
                    continue
                if len(row) != 3:
                    raise UsageError(f"line {lineno}: expected path_a,path_b,same; got {len(row)} field(s)", path)
                a, b, same = (c.strip() for c in row)
                if same.lower() not in truthy | falsy:
                    if lineno == 1:
                        continue  # a header
                    raise UsageError(f"line {lineno}: same must be 1/0, true/false or yes/no, not {same!r}", path)
                resolve = (lambda p: p if os.path.isabs(p) or os.path.exists(p) else str(base / p))
                pairs.append((resolve(a), resolve(b), same.lower() in truthy))
    except OSError as exc:
        raise UsageError(f"cannot read pairs file ({exc.strerror or exc})", path) from None
    except UnicodeDecodeError:
        raise UsageError("not a text CSV file", path) from None
    except csv.Error as exc:
        raise UsageError(f"line {lineno + 1}: not valid CSV ({exc})", path) from None
    if not pairs:
        raise UsageError("no pairs in the file", path)
    return pairs


def fit_threshold(distances: np.ndarray, same: np.ndarray) -> dict:
    """cvtool.ops.verification's fit, figures rounded to 4 places for the report."""
    from cvtool.ops.verification import fit_threshold as fit

    fitted = fit(distances, same)
    return {**fitted, **{k: round(fitted[k], 4) for k in ("threshold", "accuracy", "roc_auc") if fitted[k] is not None}}


def calibrate(engine: FaceEngine, pairs: list[tuple], on_pair: Callable[[], None] | None = None) -> dict:
    """Distances for every readable pair, the accuracy-maximising threshold and the current one's accuracy.

    Pairs of one kind only (all same, or all different) fit nothing: the result's `fitted` is false,
    `threshold` is None and `warnings` says why; the current threshold's accuracy is still measured."""
    cache: dict = {}

    def descriptor(source):
        name = source_name(source)
        key = name if name not in (ARRAY_NAME, BYTES_NAME) else ("id", id(source))
        if key not in cache:
            try:
                image = engine.read(source)
                faces = engine.find([image], [name])[0]
                face = choose_face(faces, None, name)
                engine.describe([image], [[face]], [name])
                cache[key] = face.descriptor
            except InputError as exc:
                cache[key] = str(exc)
        return cache[key]

    rows, failed = [], []
    for a, b, same in pairs:
        da, db = descriptor(a), descriptor(b)
        bad = [d for d in (da, db) if isinstance(d, str)]
        if bad:
            failed.append({"path": record_path(a), "path_b": record_path(b), "error": bad[0]})
        else:
            rows.append((distance(da, db), same))
        if on_pair:
            on_pair()
    if not rows:
        raise InputError(f"no pair could be measured (the first problem: {failed[0]['error']})")
    distances = np.array([r[0] for r in rows])
    same = np.array([r[1] for r in rows])
    fitted = fit_threshold(distances, same)
    warning = fitted.pop("warning")
    return {
        "task": TASK, "model": engine.model_name, "weights_sha256": engine.weights_sha256,
        "warnings": [f"{warning}; keep the current threshold ({engine.threshold}) or add pairs of the other kind"]
        if warning else [],
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
                faces = engine.find([image], [str(path)])[0]
                face = choose_face(faces, None, str(path))
                engine.describe([image], [[face]], [str(path)])
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
    no_video_reason = None  # takes videos: the hooks below

    def __init__(self, engine: FaceEngine, gallery: Gallery, out_dir=None):
        self.engine, self.gallery = engine, gallery
        self.max_pixels = engine.max_pixels  # a video's frames too
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
        try:
            analysed: list = self.engine.analyse(images)
        except InputError:  # a model gave nonsense for some face: find which image, and fail only that one
            analysed = []
            for rgb in images:
                try:
                    analysed.append(self.engine.analyse([rgb])[0])
                except InputError as exc:
                    analysed.append(exc.reason)
        results = []
        for rgb, faces in zip(images, analysed):
            if isinstance(faces, str):
                results.append({"size": list(rgb.shape[:2]), "threshold": self.engine.threshold,
                                "detector": self.engine.detector_name, "faces": [], "error": faces})
                continue
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

    def save_frame(self, path: str, index: int, rgb: np.ndarray, sample, result: dict) -> list[str]:
        return []  # a frame's record is all: no files of its own beside the video

    def already_done(self, path: str) -> bool:
        return self.output_name is not None and self.output_name.exists(path)
