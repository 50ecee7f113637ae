"""Convert a dlib model file from face_recognition_models once per machine, and cache the result.

Parsing the .dat files is pure Python (fast for the networks, seconds for the landmark forests), so the
converted state_dict is saved with torch.save under the user cache directory, keyed by the source file's
size and SHA-256 prefix (a reinstalled or different package version gets its own entry). It is written
with cvtool.cache.write_verified (atomically, with a sidecar holding the SHA-256 of the content and of
the source) and read back with load_verified, then torch.load(weights_only=True) from the very bytes
that were checked. A cache file that was altered, lacks its sidecar, or no longer matches its source
is rebuilt from the source, never used.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cvtool.cache import cache_root, file_sha256, load_verified, write_verified
from cvtool.errors import WeightsError

PACKAGE = "face_recognition_models"
_HASH_CHARS = 16


def face_models_dir() -> Path | None:
    """The `models/` folder of the installed face_recognition_models package (found without importing it)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def face_model_path(filename: str) -> Path:
    """A model file shipped by face_recognition_models; a one-line WeightsError when it is not installed."""
    folder = face_models_dir()
    if folder is None:
        raise WeightsError(f"{filename} comes from the face_recognition_models package, which is not installed; "
                           "pip install face_recognition_models")
    path = folder / filename
    if not path.is_file():
        raise WeightsError(f"{path}: missing from the installed face_recognition_models; "
                           "pip install --force-reinstall face_recognition_models")
    return path


def cache_path_for(dat_path: str | Path, name: str) -> Path:
    """Where the converted state_dict of `dat_path` lives (whether or not it exists yet)."""
    dat_path = Path(dat_path)
    try:
        size = dat_path.stat().st_size
        digest = file_sha256(dat_path)  # remembered per file version: the 100 MB landmark file is read once
    except OSError as exc:
        raise WeightsError(f"cannot read ({exc.strerror or exc})", dat_path) from None
    return cache_root() / "dlib" / f"{name}-{size}-{digest[:_HASH_CHARS]}.pt"


def _load_cached(path: Path, source: Path) -> dict | None:
    """The cached state_dict when its bytes match their recorded hash and `source` is unchanged; else None."""
    import torch

    data = load_verified(path, source)
    if data is None:
        return None
    try:
        content = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # hashed fine but unreadable (written by another torch?): rebuild rather than fail
        return None
    if isinstance(content, dict) and content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return content
    return None


def _convert_and_save(dat_path: Path, converter: Callable[[Path], dict], target: Path, *, required: bool) -> dict:
    import torch

    state = converter(dat_path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        write_verified(target, buffer.getvalue(), source=dat_path)
    except OSError as exc:
        if required:
            raise WeightsError(f"cannot write the converted weights ({exc.strerror or exc}); set CVTOOL_CACHE "
                               "to a writable folder", target) from None
    return state  # not required: a read-only cache only costs a re-conversion next time


def ensure_converted(dat_path: str | Path, converter: Callable[[Path], dict], name: str) -> Path:
    """The cached converted file for `dat_path`, converting (and replacing a corrupt cache file) first if needed."""
    dat_path = Path(dat_path)
    target = cache_path_for(dat_path, name)
    if _load_cached(target, dat_path) is None:
        _convert_and_save(dat_path, converter, target, required=True)
    return target


def converted_state_dict(dat_path: str | Path, converter: Callable[[Path], dict], name: str) -> dict:
    """`converter(dat_path)`'s state_dict, from the cache when it holds a verified copy; else converted and cached."""
    dat_path = Path(dat_path)
    target = cache_path_for(dat_path, name)
    cached = _load_cached(target, dat_path)
    return cached if cached is not None else _convert_and_save(dat_path, converter, target, required=False)


def converted_arrays(dat_path: str | Path, converter: Callable[[Path], dict], name: str) -> dict:
    """converted_state_dict as NumPy arrays, read from the verified cache file without importing torch (the
    landmark predictor runs on NumPy); converted (with torch) only when the cache lacks a good copy."""
    dat_path = Path(dat_path)
    data = load_verified(cache_path_for(dat_path, name), dat_path)
    if data is not None:
        try:
            return read_tensor_arrays(data)
        except Exception:  # noqa: BLE001 - not the plain dict of tensors cvtool writes: converted again below
            pass
    return {k: v.numpy() for k, v in converted_state_dict(dat_path, converter, name).items()}


_STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "LongStorage": "<i8", "IntStorage": "<i4",
                   "ShortStorage": "<i2", "ByteStorage": "u1", "CharStorage": "i1", "BoolStorage": "?",
                   "HalfStorage": "<f2"}


def read_tensor_arrays(data: bytes) -> dict:
    """A torch.save'd flat dict of tensors (the format this module writes) as NumPy arrays, without torch.
    Like torch.load(weights_only=True) it resolves nothing but tensors, dicts and storages: any other
    global in the pickle raises."""
    import collections
    import pickle
    import zipfile

    import numpy as np

    archive = zipfile.ZipFile(io.BytesIO(data))
    (pickled,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    prefix = pickled[: -len("data.pkl")]

    def rebuild(storage, offset, size, stride, *_):
        item = storage.itemsize
        view = np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), tuple(s * item for s in stride))
        return np.array(view)

    class Reader(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if module == "torch" and name in _STORAGE_DTYPES:
                return _STORAGE_DTYPES[name]
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

        def persistent_load(self, pid):
            kind, dtype, key = pid[0], pid[1], pid[2]
            if kind != "storage" or not isinstance(dtype, str):
                raise pickle.UnpicklingError("unexpected persistent id")
            return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype)

    state = Reader(io.BytesIO(archive.read(pickled))).load()
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError("not a flat dict of tensors")
    return dict(state)


# The registry's "package" weights by model name, known here without importing the models (or torch).
PACKAGE_FILES = {"dlib_face_resnet": "dlib_face_recognition_resnet_model_v1.dat",
                 "dlib_mmod_face": "mmod_human_face_detector.dat"}


def converted_path(name: str | None) -> Path | None:
    """Where model `name`'s converted weights live (existing or not), for the models in PACKAGE_FILES; None
    for any other name or when face_recognition_models is not installed."""
    filename = PACKAGE_FILES.get(name or "")
    folder = face_models_dir()
    if filename is None or folder is None or not (folder / filename).is_file():
        return None
    try:
        return cache_path_for(folder / filename, name)
    except WeightsError:
        return None


@dataclass(frozen=True)
class PackageModelWeights:
    """Weights source kind "package": a file installed by face_recognition_models, converted and cached here."""

    filename: str
    name: str  # the cache entry's name
    converter: Callable[[Path], dict]
    kind: str = "package"

    def is_available(self) -> bool:
        path = self.local_file()
        return path is not None and path.is_file()

    def local_file(self) -> Path | None:
        folder = face_models_dir()
        return None if folder is None else folder / self.filename

    def local_path(self, *, offline: bool | None = None, progress: bool = True,
                   alternative: str | None = None) -> Path:
        """The converted state_dict file (no network is ever needed: the source is an installed package)."""
        return ensure_converted(face_model_path(self.filename), self.converter, self.name)


def load_converted_module(build: Callable, filename: str, converter: Callable[[Path], dict], name: str,
                          device=None):
    """A network rebuilt from a face_recognition_models file: built on the meta device (no wasted
    initialisation), the converted weights assigned, in eval mode on `device`."""
    import torch

    with torch.device("meta"):
        model = build()
    model.load_state_dict(converted_state_dict(face_model_path(filename), converter, name), strict=True, assign=True)
    return model.eval().to(device or "cpu")
