"""Detection training data in the three layouts users have: Pascal VOC XML, YOLO text labels, COCO JSON."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvtool.errors import UsageError
from cvtool.io.image import IMAGE_SUFFIXES
from cvtool.train.datasets import DataError


@dataclass
class BoxedImages:
    paths: list[Path]
    boxes: list[np.ndarray]  # per image: N x 4, x1 y1 x2 y2 in the image's pixels
    labels: list[np.ndarray]  # per image: N class indices
    classes: list[str]
    skipped: list[str] = field(default_factory=list)
    category_ids: list[int] | None = None  # COCO JSON: the file's category id of each class

    def subset(self, indices) -> "BoxedImages":
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        return BoxedImages(pick(self.paths), pick(self.boxes), pick(self.labels), self.classes,
                           category_ids=self.category_ids)


def _images_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


FRACTION_SLACK = 1e-3  # YOLO fractions this far past 0-1 are rounding (clipped), not another unit


def read_voc(root: Path) -> BoxedImages:
    """root/images/*.jpg with root/annotations/*.xml (Pascal VOC: <object><name>, <bndbox> in pixels)."""
    images = _images_by_stem(root / "images")
    records, names = [], set()
    for xml_path in sorted((root / "annotations").glob("*.xml")):
        try:
            tree = ET.fromstring(_bytes(xml_path))
        except ET.ParseError as exc:
            raise DataError(f"not valid XML ({exc})", xml_path) from None
        if tree.tag != "annotation":
            raise DataError(f"not a Pascal VOC annotation (its root is <{tree.tag}>, not <annotation>)", xml_path)
        stem = Path(tree.findtext("filename") or xml_path.stem).stem
        image = images.get(stem) or images.get(xml_path.stem)
        if image is None:
            raise DataError("no image with this annotation's file name in images/", xml_path)
        objects = []
        for n, obj in enumerate(tree.iter("object"), 1):
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise DataError(f"object {n} has no <name>", xml_path)
            box = obj.find("bndbox")
            if box is None:
                raise DataError(f"object {n} ({name}) has no <bndbox>", xml_path)
            coords = [_number(box.findtext(k), f"object {n} ({name}): <{k}>", xml_path)
                      for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append((name, _checked_box(coords, f"object {n} ({name})", xml_path)))
            names.add(name)
        records.append((image, objects))
    classes = sorted(names)
    return _assemble(records, classes)


def read_yolo(root: Path) -> BoxedImages:
    """root/images/* with root/labels/<stem>.txt lines `class cx cy w h` (fractions of the image as it is
    shown, EXIF orientation applied; a sixth column, a score as `cvtool detect --save-txt` writes, is
    ignored); names in root/classes.txt, one per line, if present."""
    from cvtool.errors import InputError
    from cvtool.io.image import image_size

    images = _images_by_stem(root / "images")
    names_file = root / "classes.txt"
    classes = [line.strip() for line in _text(names_file).splitlines() if line.strip()] if names_file.exists() else None
    if classes == []:
        raise DataError("no class names in it (one per line)", names_file)
    records, top = [], -1
    for stem, image in images.items():
        label_file = root / "labels" / f"{stem}.txt"
        rows = [(i, line.split()) for i, line in enumerate(_text(label_file).splitlines(), 1)
                if line.strip()] if label_file.exists() else []
        objects = []
        for line_no, row in rows:
            where = f"line {line_no}"
            if len(row) not in (5, 6):
                raise DataError(f"{where}: expected `class cx cy w h` (5 columns, or 6 with a score), got "
                                f"{len(row)}", label_file)
            if not (row[0].isascii() and row[0].isdigit()):
                raise DataError(f"{where}: the class {row[0]!r} is not a whole number >= 0", label_file)
            c = int(row[0])
            if classes is not None and c >= len(classes):
                raise DataError(f"{where}: class {c}, but {names_file} names {len(classes)} "
                                f"(0-{len(classes) - 1})", label_file)
            values = [_number(v, f"{where}: {k}", label_file)
                      for k, v in zip(("cx", "cy", "w", "h", "score"), row[1:])]
            if not all(-FRACTION_SLACK <= v <= 1 + FRACTION_SLACK for v in values[:4]):
                raise DataError(f"{where}: cx cy w h must be fractions of the image (0-1), got "
                                f"{' '.join(row[1:5])}", label_file)
            objects.append((c, tuple(min(max(v, 0.0), 1.0) for v in values[:4])))
            top = max(top, c)
        if objects:
            try:
                h, w = image_size(image)  # as training reads it (EXIF orientation applied), from the header
            except InputError:
                objects = []  # training and validation report the unreadable image and go on without it
            else:
                objects = [(c, [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
                           for c, (cx, cy, bw, bh) in objects]
        records.append((image, objects))
    classes = classes or [f"class_{i}" for i in range(top + 1)]
    return _assemble(records, classes, by_index=True)


def read_coco(json_path: Path) -> BoxedImages:
    """A COCO JSON file; image paths relative to the file's folder or its images/ folder."""
    try:
        doc = json.loads(_bytes(json_path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc})", json_path) from None
    try:
        categories = sorted(doc["categories"], key=lambda c: _whole(c["id"], "a category id"))
        index = {c["id"]: i for i, c in enumerate(categories)}
        per_image: dict[int, list] = {_whole(img["id"], "an image id"): [] for img in doc["images"]}
        names = [str(c["name"]) for c in categories]
        files = [(img["id"], _string(img["file_name"], "a file_name")) for img in doc["images"]]
        annotations = doc.get("annotations", [])
        if not isinstance(annotations, list):
            raise _Malformed("annotations is not a list")
    except _Malformed as exc:
        raise DataError(f"not a COCO detection file ({exc})", json_path) from None
    except KeyError as exc:
        raise DataError(f"not a COCO detection file (no {exc.args[0]!r} field)", json_path) from None
    except (TypeError, AttributeError):
        raise DataError("not a COCO detection file (unexpected structure)", json_path) from None
    for n, ann in enumerate(annotations):
        where = f"annotations[{n}]"
        if not isinstance(ann, dict) or not {"bbox", "image_id", "category_id"} <= set(ann):
            raise DataError(f"{where}: needs bbox, image_id and category_id", json_path)
        if not isinstance(ann["image_id"], int) or ann["image_id"] not in per_image:
            raise DataError(f"{where}: image_id {ann['image_id']!r} is not in images", json_path)
        if not isinstance(ann["category_id"], int) or ann["category_id"] not in index:
            raise DataError(f"{where}: category_id {ann['category_id']!r} is not in categories", json_path)
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}", json_path)
        x, y, w, h = (_number(v, f"{where}: bbox", json_path, json_value=True) for v in bbox)
        per_image[ann["image_id"]].append((index[ann["category_id"]], _checked_box([x, y, x + w, y + h], where,
                                                                                   json_path)))
    records = []
    for image_id, file_name in files:
        path = json_path.parent / file_name
        if not path.exists():
            path = json_path.parent / "images" / file_name
        records.append((path, per_image[image_id]))
    data = _assemble(records, names, by_index=True)
    data.category_ids = [int(c["id"]) for c in categories]
    return data


def _number(text, where: str, source: Path, *, json_value: bool = False) -> float:
    """A finite float, or DataError naming the file and the place (`json_value`: a JSON number, not a string or
    true/false)."""
    if json_value and (isinstance(text, bool) or not isinstance(text, (int, float))):
        raise DataError(f"{where} has {json.dumps(text)}, not a number", source)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where} is {text!r}, not a number", source) from None
    if not math.isfinite(value):
        raise DataError(f"{where} is {text!r}, not a finite number", source)
    return value


def _checked_box(coords: list[float], where: str, source: Path) -> list[float]:
    """x1 y1 x2 y2 with x2 >= x1 and y2 >= y1, or DataError. An inverted box is a mistake; an empty one is data
    (VOC's 1-pixel boxes have xmin == xmax; COCO 2017 itself has boxes of height 0) and is kept, as before."""
    x1, y1, x2, y2 = coords
    if x2 < x1 or y2 < y1:
        raise DataError(f"{where}: the box {x1:g},{y1:g} to {x2:g},{y2:g} is inverted (its right and bottom edges "
                        "must not be before its left and top)", source)
    return coords


class _Malformed(Exception):
    """A COCO field of the wrong kind (its message says which)."""


def _whole(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"{what} is {json.dumps(value)}, not a whole number")
    return value


def _string(value, what: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{what} is {json.dumps(value)}, not a string")
    return value


def _bytes(path: Path) -> bytes:
    """The file's bytes; a FIFO or device refused at once (never waited on), as image inputs are."""
    from cvtool.io.files import NotRegularFileError, open_regular

    try:
        with open_regular(path, "rb") as handle:
            return handle.read()
    except NotRegularFileError as exc:
        raise DataError(exc.reason, path) from None
    except OSError as exc:
        raise DataError(f"cannot read it ({exc.strerror or exc})", path) from None


def _text(path: Path) -> str:
    try:
        return _bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", path) from None



def _assemble(records, classes: list[str], by_index: bool = False) -> BoxedImages:
    if not records:
        raise DataError("no annotated images found")
    lookup = {name: i for i, name in enumerate(classes)}
    paths, boxes, labels = [], [], []
    for image, objects in records:
        paths.append(Path(image))
        boxes.append(np.array([coords for _, coords in objects], dtype=np.float32).reshape(-1, 4))
        labels.append(np.array([c if by_index else lookup[c] for c, _ in objects], dtype=np.int64))
    return BoxedImages(paths, boxes, labels, classes)


def open_detection_data(spec: str | Path) -> BoxedImages:
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".json":
        data = read_coco(path)
    elif (path / "annotations").is_dir() and (path / "images").is_dir():
        data = read_voc(path)
    elif (path / "labels").is_dir() and (path / "images").is_dir():
        data = read_yolo(path)
    else:
        raise DataError("expected images/ with annotations/ (VOC XML) or labels/ (YOLO), or a COCO .json file", path)
    if not data.classes:
        raise UsageError(f"{spec}: no boxes in the annotations")
    return data
