"""Detection training data in the three layouts users have: Pascal VOC XML, YOLO text labels, COCO JSON."""

from __future__ import annotations

import json
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


def read_voc(root: Path) -> BoxedImages:
    """root/images/*.jpg with root/annotations/*.xml (Pascal VOC: <object><name>, <bndbox> in pixels)."""
    images = _images_by_stem(root / "images")
    records, names = [], set()
    for xml_path in sorted((root / "annotations").glob("*.xml")):
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            raise DataError(f"not valid XML ({exc})", xml_path) from None
        stem = Path(tree.findtext("filename") or xml_path.stem).stem
        image = images.get(stem) or images.get(xml_path.stem)
        if image is None:
            raise DataError("no image with this annotation's file name in images/", xml_path)
        objects = []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append((obj.findtext("name").strip(), coords))
            names.add(objects[-1][0])
        records.append((image, objects))
    classes = sorted(names)
    return _assemble(records, classes)


def read_yolo(root: Path) -> BoxedImages:
    """root/images/* with root/labels/<stem>.txt lines `class cx cy w h` (fractions); names in
    root/classes.txt, one per line, if present."""
    import cv2

    images = _images_by_stem(root / "images")
    names_file = root / "classes.txt"
    classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()] if names_file.exists() else None
    records, top = [], -1
    for stem, image in images.items():
        label_file = root / "labels" / f"{stem}.txt"
        rows = [line.split() for line in label_file.read_text().splitlines() if line.strip()] if label_file.exists() else []
        h, w = cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2] if rows else (1, 1)
        objects = []
        for row in rows:
            c, cx, cy, bw, bh = int(row[0]), *map(float, row[1:5])
            objects.append((c, [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]))
            top = max(top, c)
        records.append((image, objects))
    classes = classes or [f"class_{i}" for i in range(top + 1)]
    return _assemble(records, classes, by_index=True)


def read_coco(json_path: Path) -> BoxedImages:
    """A COCO JSON file; image paths relative to the file's folder or its images/ folder."""
    doc = json.loads(json_path.read_text())
    categories = sorted(doc["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    per_image: dict[int, list] = {img["id"]: [] for img in doc["images"]}
    for ann in doc.get("annotations", []):
        x, y, w, h = ann["bbox"]
        per_image[ann["image_id"]].append((index[ann["category_id"]], [x, y, x + w, y + h]))
    records = []
    for img in doc["images"]:
        path = json_path.parent / img["file_name"]
        if not path.exists():
            path = json_path.parent / "images" / img["file_name"]
        records.append((path, per_image[img["id"]]))
    data = _assemble(records, [c["name"] for c in categories], by_index=True)
    data.category_ids = [int(c["id"]) for c in categories]
    return data


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
