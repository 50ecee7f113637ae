"""Classification training data: ImageFolder trees, MNIST IDX files, and CSV lists.

Each reader turns its layout into one `LabelledImages` (sources + labels + class names); one
torch Dataset then decodes, augments and preprocesses them the same way `cvtool classify` does, so
what a model is trained on is exactly what it will be shown.
"""

from __future__ import annotations

import csv
import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from cvtool.errors import CvtoolError, InputError, UsageError
from cvtool.io.image import IMAGE_SUFFIXES, read_image
from cvtool.ops.preprocess import Preprocess


class DataError(CvtoolError):
    """The training data cannot be used as given; said before training starts."""


# Segmentation data: images in the first of these sub-folders that exists, masks in the first of these
SEGMENT_IMAGE_DIRS = ("images", "image", "imgs")
SEGMENT_MASK_DIRS = ("masks", "mask", "labels", "label", "annotations")

# What each task's reader lists inside a data folder: None, the whole tree (image-folder classes, face
# identities, content photos); else these sub-folders (detection: images with VOC annotations or YOLO labels).
DATA_SUBFOLDERS: dict[str, tuple[str, ...] | None] = {
    "classify": None, "face": None, "stylize": None,
    "segment": SEGMENT_IMAGE_DIRS + SEGMENT_MASK_DIRS,
    "detect": ("images", "annotations", "labels"),
    "landmarks": None,  # images (or images/) with .pts beside them or in labels/
    "localize": ("images", "annotations", "labels"),  # the detection layouts
}


def data_folders(task: str, spec: str | Path | None) -> list[Path]:
    """The folders whose files `task` reads from the data `spec` (a folder; a COCO JSON file's folder holds
    its images/), which a run or plot folder must stay out of (cvtool.io.outputs.check_outside_data). A data
    file (a CSV, IDX files) names its images itself: none."""
    if spec is None:
        return []
    path = Path(spec)
    if task in ("detect", "localize") and path.is_file():  # a COCO JSON file
        path = path.parent
    if not path.is_dir():
        return []
    names = DATA_SUBFOLDERS[task]
    return [path] if names is None else [path / name for name in names if (path / name).is_dir()]


@dataclass
class LabelledImages:
    sources: list  # file paths, or HxWx3 uint8 arrays for formats that hold pixels themselves (IDX)
    labels: list[int]
    classes: list[str]
    origin: str
    skipped: list[str] = field(default_factory=list)  # "path: reason" for files left out
    size: int | None = None  # files are shrunk to this shorter side when read (decode_all's size)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "LabelledImages":
        return LabelledImages(
            [self.sources[i] for i in indices], [self.labels[i] for i in indices], self.classes, self.origin,
            size=self.size,
        )

    def image(self, index: int) -> np.ndarray:
        """The pixels of sample `index`: kept in memory, or read from disk now (the lazy path), the same either way."""
        source = self.sources[index]
        if isinstance(source, np.ndarray):
            return source
        image = read_image(source)
        return _shrink(image, self.size) if self.size else image


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def read_image_folder(root: Path) -> LabelledImages:
    """One sub-folder per class (torchvision's ImageFolder layout)."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError("no class folders: expected one sub-folder of images per class", root)
    empty = [d.name for d in class_dirs if not _image_files(d)]
    if empty:
        raise DataError(f"class folder(s) with no images: {', '.join(empty[:5])}", root)
    sources, labels = [], []
    for index, folder in enumerate(class_dirs):
        files = _image_files(folder)
        sources += files
        labels += [index] * len(files)
    return LabelledImages(sources, labels, [d.name for d in class_dirs], str(root))


def read_csv_list(path: Path) -> LabelledImages:
    """`path,label` rows (a header row is allowed); relative paths are relative to the CSV."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise DataError(f"line {line_no}: expected 'path,label'", path)
            rows.append((row[0].strip(), row[1].strip()))
    if rows and rows[0][0].lower() == "path":
        rows = rows[1:]
    if not rows:
        raise DataError("no rows", path)
    classes = sorted({label for _, label in rows}, key=_natural_key)
    index = {name: i for i, name in enumerate(classes)}
    sources = [Path(p) if Path(p).is_absolute() else path.parent / p for p, _ in rows]
    return LabelledImages(sources, [index[label] for _, label in rows], classes, str(path))


def _natural_key(text: str):
    return (0, int(text)) if text.isdigit() else (1, text)


def _open_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def read_idx_array(path: Path) -> np.ndarray:
    """The IDX format of MNIST: magic (0, 0, type, ndim), big-endian dims, then the data."""
    data = _open_maybe_gz(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError("not an IDX file (bad magic number)", path)
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise DataError(f"IDX data type 0x{data[2]:02x} is not supported", path)
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"IDX header says {shape} but the file holds {body.size} values (truncated?)", path)
    return body.reshape(shape)


def read_idx_pair(images_path: Path, labels_path: Path) -> LabelledImages:
    images, labels = read_idx_array(images_path), read_idx_array(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"expected images N x H x W and labels N, got {images.shape} and {labels.shape}", images_path)
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels in {labels_path.name}", images_path)
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    # MNIST is white ink on black; store as RGB like any decoded image
    sources = [np.repeat(img[..., None].astype(np.uint8), 3, axis=2) for img in images]
    return LabelledImages(sources, [int(v) for v in labels], classes, str(images_path))


def _find_idx_pair(folder: Path, prefix: str = "") -> tuple[Path, Path] | None:
    images = sorted(folder.glob(f"{prefix}*-images-idx3-ubyte*")) or sorted(folder.glob(f"{prefix}*-images.idx3-ubyte*"))
    if not images:
        return None
    stem = images[0].name.split("-images")[0]
    labels = sorted(folder.glob(f"{stem}-labels*idx1-ubyte*"))
    if not labels:
        raise DataError(f"no labels file ({stem}-labels-idx1-ubyte) beside {images[0].name}", folder)
    return images[0], labels[0]


def open_classification_data(spec: str | Path) -> LabelledImages:
    """Recognise the layout of `spec`: a CSV, an IDX images file, a folder of IDX files, or an ImageFolder."""
    path = Path(spec)
    if not path.exists():
        raise DataError("no such file or directory", path)
    if path.is_file() and path.suffix.lower() == ".csv":
        data = read_csv_list(path)
    elif path.is_file() and "idx3-ubyte" in path.name:
        pair = _find_idx_pair(path.parent, path.name.split("-images")[0])
        data = read_idx_pair(*pair)
    elif path.is_dir() and _find_idx_pair(path) is not None:
        data = read_idx_pair(*_find_idx_pair(path))
    elif path.is_dir():
        data = read_image_folder(path)
    else:
        raise DataError("expected an ImageFolder directory, a CSV of path,label, or MNIST IDX files", path)
    if len(data.classes) < 2:
        raise DataError(f"only one class ({data.classes[0]!r}); a classifier needs at least two", path)
    return data


def in_memory_budget() -> int:
    """Bytes of decoded training pixels kept in memory; above it training reads from disk in the
    DataLoader workers (CVTOOL_TRAIN_IN_MEMORY_MB overrides; 0 = always from disk)."""
    import os

    return int(float(os.environ.get("CVTOOL_TRAIN_IN_MEMORY_MB", "1024")) * 2**20)


def decode_all(data: LabelledImages, size: int | None, on_skip: Callable[[str], None] | None = None) -> LabelledImages:
    """Decode every file once before training: bad files are dropped with a warning (not a crash mid-epoch).
    The pixels, shrunk to `size` on the shorter side, are kept in memory for every epoch while they fit
    in `in_memory_budget()`; a larger data set keeps only the paths, and each epoch decodes (and shrinks)
    them again, lazily, in the DataLoader workers: the same pixels, in memory that does not grow with the data."""
    sources, origins, labels, skipped = [], [], [], list(data.skipped)
    budget, held = in_memory_budget(), 0
    for source, label in zip(data.sources, data.labels):
        try:
            image = source if isinstance(source, np.ndarray) else read_image(source)
        except InputError as exc:
            skipped.append(str(exc))
            if on_skip:
                on_skip(str(exc))
            continue
        if not isinstance(source, np.ndarray):
            image = _shrink(image, size) if size else image
            held += image.nbytes
        sources.append(image if held <= budget else None)  # pixels are dropped once over the budget
        origins.append(source)
        labels.append(label)
    if held > budget:  # too large to hold: every file is read from disk when it is needed
        sources = origins
    if not sources:
        raise DataError("none of the images could be read", data.origin)
    missing = sorted(set(range(len(data.classes))) - set(labels))
    if missing:
        raise DataError(f"no readable images left for class(es) {', '.join(data.classes[i] for i in missing[:5])}", data.origin)
    return LabelledImages(sources, labels, data.classes, data.origin, skipped, size=size)


def _shrink(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = size / min(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def check_val_split(fraction: float) -> None:
    """A UsageError unless `fraction` (--val-split, the share held out for validation) is in (0, 1)."""
    if not 0 < fraction < 1:
        raise UsageError(f"--val-split must be between 0 and 1, got {fraction}")


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val) with `fraction` of each class held out (at least one per class)."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    check_val_split(fraction)
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    classes = int((counts > 0).sum())
    if (counts == 1).any():
        raise DataError(f"{int((counts == 1).sum())} class(es) have a single image: holding out a validation image "
                        "of every class needs at least 2 each; add images or give --val DATA")
    # small data: at least one validation image per class (scikit-learn refuses a smaller held-out set)
    size = fraction if fraction * len(labels) >= classes else classes
    train, val = train_test_split(indices, test_size=size, stratify=labels, random_state=seed)
    return sorted(train.tolist()), sorted(val.tolist())


class Augment:
    """Small random affine jitter (shift, scale, rotation) and optional horizontal flip, on uint8 pixels.

    Flips are off by default: they change the meaning of digits and text."""

    def __init__(self, *, shift: float = 0.08, scale: float = 0.1, degrees: float = 10.0, hflip: bool = False):
        self.shift, self.scale, self.degrees, self.hflip = shift, scale, degrees, hflip

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        angle = rng.uniform(-self.degrees, self.degrees)
        scale = 1 + rng.uniform(-self.scale, self.scale)
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        matrix[:, 2] += rng.uniform(-self.shift, self.shift, size=2) * (w, h)
        border = tuple(int(v) for v in np.median(np.concatenate([image[0], image[-1]]), axis=0))
        out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border)
        if self.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


def sample_index(item) -> tuple[int, int | None]:
    """A dataset's __getitem__ argument: (index, augmentation seed) from the engine's training batches
    (cvtool.train.engine.EpochBatches), or a bare index (validation, or a caller indexing the dataset
    itself: the seed is then drawn from torch's RNG)."""
    if isinstance(item, tuple):
        return int(item[0]), int(item[1])
    return int(item), None


def brightness_contrast(image: np.ndarray, rng: np.random.Generator, *, contrast: float,
                        brightness: float) -> np.ndarray:
    """Training augmentation: uint8 pixels times a gain in 1 +- `contrast`, plus a bias in +- `brightness` grey
    levels (drawn in that order), clipped to uint8."""
    gain = 1 + rng.uniform(-contrast, contrast)
    bias = rng.uniform(-brightness, brightness)
    return np.clip(image.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def augmentation_rng(seed: int | None) -> np.random.Generator:
    if seed is None:
        import torch

        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return np.random.default_rng(seed)


class ClassificationDataset:
    """Decoded images -> (preprocessed tensor, label), with augmentation for training."""

    takes_augmentation_seeds = True  # __getitem__((index, seed)): see cvtool.train.engine.EpochBatches

    def __init__(self, data: LabelledImages, preprocess: Preprocess, augment: Augment | None = None):
        self.data, self.preprocess, self.augment = data, preprocess, augment

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item):
        import torch

        index, seed = sample_index(item)
        image = self.data.image(index)
        if self.augment is not None:
            image = self.augment(image, augmentation_rng(seed))
        return torch.from_numpy(self.preprocess(image)), self.data.labels[index]
