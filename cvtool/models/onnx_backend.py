"""onnxruntime in place of PyTorch for the network of every pipeline.

classify, detect, segment and the face chain run an onnxruntime model on NumPy arrays from end to end
(`OnnxNetwork.run`): preprocessing, letterboxing, tiling, thresholds, NMS (OpenCV's) and the records are
the NumPy forms of the same functions the PyTorch backend uses (cvtool/ops), and neither torch nor the
registry's model modules are imported: what the pipelines need of the model travels in the file's
metadata. Callers that hand it tensors (stylize, `cvtool bench`) go through the entry's `graph_forward`
(`model.forward`). Models are exported on the fly into the user cache (keyed by
model, weights sha256 and input shape; each file checked against the hash recorded beside it when
it was written, and re-exported on a mismatch), or read from a .onnx file made by `cvtool export`,
whose embedded metadata replaces the checkpoint's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cvtool.cache import cache_root, load_verified, write_verified
from cvtool.device import CPU, Placement
from cvtool.errors import UsageError, WeightsError
from cvtool.models.onnx_session import FORMAT, FORMAT_VERSION, METADATA_KEY, make_session

BACKENDS = ("auto", "torch", "onnxruntime")


class OnnxNetwork:
    """An onnxruntime session with the call the pipelines make on an nn.Module: a float batch in, tensor(s) out.

    A graph exported with a fixed batch size is run in chunks of that size, so any --batch-size works.
    """

    def __init__(self, session, meta: dict, source: str, nbytes: int):
        self.session, self.meta, self.source = session, meta, source
        self.nbytes = nbytes  # the model file's size: what its weights take in memory, about
        first = session.get_inputs()[0]
        self.input_name = first.name
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None
        size = meta["input"].get("size")
        self.fixed_size = tuple(size) if size else None
        self.size_multiple = int(meta["input"].get("multiple") or 1)

    def __call__(self, batch):
        import torch

        outputs = [torch.from_numpy(out) for out in self.run(batch.detach().to("cpu", torch.float32).contiguous().numpy())]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def run(self, array) -> list:
        """A float32 NumPy batch in, the graph's outputs as NumPy arrays (no torch: the pipelines' call)."""
        import numpy as np

        if self.fixed_size is not None and tuple(array.shape[-2:]) != self.fixed_size:
            h, w = self.fixed_size
            raise UsageError(f"{self.source}: this ONNX file takes {h}x{w} inputs only, not "
                             f"{array.shape[-2]}x{array.shape[-1]}; export it without --img-size, or use --tile {h}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        step = self.fixed_batch or len(array)
        chunks = [self.session.run(None, {self.input_name: array[i : i + step]}) for i in range(0, len(array), step)]
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def eval(self):
        return self

    def to(self, *args, **kwargs):
        return self


def read_metadata(path: str | Path, data: bytes | None = None) -> dict:
    """cvtool's metadata from a .onnx file (or its bytes, `data`, already read); a WeightsError naming
    the file when it is missing or not ONNX."""
    import onnx

    path = Path(path)
    if data is None:
        if not path.is_file():
            raise WeightsError("no such file" if not path.exists() else "is a directory, not an ONNX file", path)
        data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf's decode errors
        raise WeightsError("not an ONNX file (unrecognised content)", path) from None
    return check_metadata({p.key: p.value for p in proto.metadata_props}, path)


def check_metadata(props: dict, path) -> dict:
    """cvtool's metadata from a file's metadata_props (onnx's or an onnxruntime session's): a WeightsError
    naming the file when it has none, or a format this cvtool does not understand."""
    try:
        meta = json.loads(props[METADATA_KEY])
    except (KeyError, ValueError):
        raise WeightsError("an ONNX file without cvtool's metadata; make it with `cvtool export`", path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("format_version"), int):
        raise WeightsError("an ONNX file without cvtool's metadata; make it with `cvtool export`", path)
    if meta["format_version"] > FORMAT_VERSION:
        raise WeightsError(f"cvtool ONNX format {meta['format_version']} is newer than this cvtool understands", path)
    return meta


def open_onnx(path: str | Path, *, task: str | None, device: Placement | None = None,
              weights_sha256: str | None = None, data: bytes | None = None):
    """A LoadedModel whose module is an onnxruntime session on `path` (a file from `cvtool export`), on
    `device`'s providers (None: the CPU's).

    `data`: the file's bytes, already read (and checked) by the caller; the session is made from them."""
    from cvtool.models.registry import get_entry

    if data is None:
        if not Path(path).is_file():
            read_metadata(path)  # the one-line reason: missing, or a directory
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise WeightsError(f"cannot read it ({exc.strerror or exc})", path) from None
    meta = read_metadata(path, data)
    if task is not None and meta["task"] != task:
        raise UsageError(f"{path}: an ONNX {meta['task']} model, not a {task} model")
    entry = get_entry(meta["arch"], meta["task"])
    session = make_session(data, device=device, source=str(path))
    return _onnx_model(session, meta, path, data, weights_sha256, entry=entry)


def _onnx_model(session, meta: dict, path, data: bytes, weights_sha256: str | None, *, entry=None,
                extra: dict | None = None):
    """The LoadedModel of an onnxruntime session on a file from `cvtool export` (its metadata `meta`). Its
    device is the CPU's placement: onnxruntime moves data itself, the pipelines hand it CPU arrays."""
    from cvtool.models.loading import LoadedModel
    from cvtool.ops.preprocess import Preprocess

    return LoadedModel(
        name=meta["arch"],
        task=meta["task"],
        module=OnnxNetwork(session, meta, str(path), len(data)),
        preprocess=Preprocess.from_dict(meta["preprocess"]),
        classes=list(meta["classes"]),
        weights_path=str(path),
        weights_sha256=weights_sha256 or hashlib.sha256(data).hexdigest(),
        device=CPU,
        meta=extra or {},
        entry=entry,
        backend="onnxruntime",
    )


def cached_export_path(loaded, *, img_size: int | None = None) -> tuple[Path, object]:
    """Where the on-the-fly export of `loaded` lives: keyed by model, weights sha256, input shape and versions."""
    import onnxruntime
    import torch

    from cvtool.version import __version__
    from cvtool.models.onnx_export import graph_for

    graph = graph_for(loaded, img_size)
    shape = "x".join(["b", str(graph.channels), *(map(str, graph.size) if graph.size else ["h", "w"])])
    key = json.dumps([loaded.name, loaded.weights_sha256, shape, graph.multiple, torch.__version__,
                      onnxruntime.__version__, __version__, FORMAT_VERSION])
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return cache_root() / "onnx" / f"{loaded.name}-{loaded.weights_sha256[:12]}-{shape}-{digest}.onnx", graph


def to_onnxruntime(loaded, *, device: Placement | None = None, img_size: int | None = None, on_export=None, by_name: str | None = None):
    """`loaded` (a PyTorch model on the CPU) with its network swapped for onnxruntime, exporting into the cache
    when needed (always with a dynamic batch) and reusing the cached file afterwards. `by_name`: the model name
    `loaded` was asked for without a weights file (its default weights): a later `--backend auto` run with
    that name finds the export without PyTorch.

    The cached file is used only when its bytes hash to what was recorded beside it when it was written
    (and the source weights file still hashes as it did): anything else is exported again over it."""
    from cvtool.models.onnx_export import export_checked

    path, _ = cached_export_path(loaded, img_size=img_size)
    source = loaded.weights_path if Path(loaded.weights_path).is_file() else None
    data = load_verified(path, source)
    if data is not None:
        try:
            opened = open_onnx(path, task=loaded.task, device=device, weights_sha256=loaded.weights_sha256, data=data)
        except WeightsError:
            pass  # verified bytes this onnxruntime cannot load (another version wrote them): export again
        else:
            if img_size is None and source is not None:
                _write_pointers(source, loaded.task, path, loaded.weights_sha256, by_name)
            return opened
    if on_export is not None:
        on_export(path)
    data = export_checked(loaded, img_size=img_size, dynamic_batch=True).data
    try:
        write_verified(path, data, source)
    except OSError:
        pass  # a read-only cache costs a re-export next time, not this run
    opened = open_onnx(path, task=loaded.task, device=device, weights_sha256=loaded.weights_sha256, data=data)
    if img_size is None and source is not None:
        _write_pointers(source, loaded.task, path, loaded.weights_sha256, by_name)
    return opened


# -- finding a cached export without PyTorch ------------------------------------------------------------------
# to_onnxruntime leaves a pointer beside its export, keyed by the weights file and task, so that a later run
# can find the export knowing only the weights file (no registry, no torch): `cached_onnx`.


def _pointer_path(key: str, task: str) -> Path:
    """The pointer of a weights file (`key` its path) or of a model's default weights (`key` "model:NAME")."""
    key = json.dumps([key if key.startswith("model:") else str(Path(key).resolve()), task])
    return cache_root() / "onnx" / "by-weights" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _versions() -> dict:
    import onnxruntime

    from cvtool.version import __version__

    return {"cvtool": __version__, "onnxruntime": onnxruntime.__version__, "format_version": FORMAT_VERSION}


def _write_pointers(weights_path, task: str, export: Path, weights_sha256: str, by_name: str | None = None) -> None:
    record = {"export": export.name, "weights_sha256": weights_sha256, "weights": str(Path(weights_path).resolve()),
              **_versions()}
    try:
        write_verified(_pointer_path(str(weights_path), task), json.dumps(record).encode())
        if by_name:
            write_verified(_pointer_path(f"model:{by_name}", task), json.dumps(record).encode())
    except OSError:
        pass  # a read-only cache: the next run converts again


def cached_export(weights_path: str | Path | None, task: str, *, name: str | None = None) -> tuple[Path, bytes, str] | None:
    """(export path, its verified bytes, the weights' sha256) of the cached export of `weights_path` (or, with
    `weights_path` None, of model `name`'s default weights) for `task`, when to_onnxruntime made one with this
    cvtool and onnxruntime, it still hashes as written and the weights file still hashes as it did then; else
    None. Imports no torch."""
    if weights_path is None and name is None:
        return None
    raw = load_verified(_pointer_path(str(weights_path) if weights_path is not None else f"model:{name}", task))
    try:
        record = json.loads(raw) if raw is not None else None
    except ValueError:
        record = None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in _versions().items()):
        return None
    weights_path = Path(weights_path if weights_path is not None else str(record.get("weights", "")))
    if not weights_path.is_file():
        return None
    path = cache_root() / "onnx" / Path(str(record.get("export", ""))).name
    data = load_verified(path, weights_path)
    if data is None:
        return None
    return path, data, str(record.get("weights_sha256"))


def cached_onnx(weights_path: str | Path | None, task: str, *, device: Placement | None = None, name: str | None = None):
    """A LoadedModel on onnxruntime from the cached export of `weights_path` (or of model `name`'s default
    weights; see cached_export), made without importing torch (its entry is looked up only if a caller asks
    for its contract); None when there is none."""
    found = cached_export(weights_path, task, name=name)
    if found is None:
        return None
    path, data, sha = found
    try:
        return open_onnx_array(path, data, task=task, device=device, weights_sha256=sha,
                               choice="cached export")
    except WeightsError:
        return None  # verified bytes this onnxruntime cannot load: the caller converts again


def open_onnx_array(path: str | Path, data: bytes | None = None, *, task: str | None,
                    device: Placement | None = None, weights_sha256: str | None = None, choice: str | None = None):
    """open_onnx without torch: metadata read from the session, the entry looked up
    lazily. Every pipeline runs such a model on NumPy arrays (`module.run`); `data`: the file's bytes, read
    here when not given."""
    if data is None:
        data = _read_onnx(path)
    session = make_session(data, device=device, source=str(path))
    meta = check_metadata(session.get_modelmeta().custom_metadata_map, path)
    if task is not None and meta["task"] != task:
        raise UsageError(f"{path}: an ONNX {meta['task']} model, not a {task} model")
    return _onnx_model(session, meta, path, data, weights_sha256,
                       extra={"backend_choice": choice} if choice else None)


def _read_onnx(path: str | Path) -> bytes:
    """A .onnx file's bytes; a WeightsError naming it when it is missing, a directory or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError("no such file" if not path.exists() else "is a directory, not an ONNX file", path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read it ({exc.strerror or exc})", path) from None


def is_onnx_file(weights) -> bool:
    """Whether `--weights` names an ONNX file (which always runs on onnxruntime, whatever --backend says)."""
    return weights is not None and Path(weights).suffix.lower() == ".onnx"


# `--backend auto`, decided before anything imports torch. A .onnx weights file runs on onnxruntime, on NumPy
# arrays from end to end (no torch). Otherwise, on the CPU: the tasks in CONVERT_ON_FIRST_USE (the face chain)
# are exported into the cache on first use and run from it afterwards; classify, detect and segment run from a
# cached export when one exists for these weights (made by an earlier `--backend onnxruntime` run), else on
# PyTorch as before (so `auto` never exports a model nobody asked to export, and never changes a result by more
# than the export's checked tolerance).
CONVERT_ON_FIRST_USE = ("face-embed",)
CACHED_TASKS = ("classify", "detect", "segment", "face-embed")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; use auto, torch or onnxruntime")


def resolve_auto(name: str | None, *, task: str, weights: str | Path | None, device: Placement,
                 default: str | None):
    """`--backend auto` (and any .onnx `weights`) before anything imports torch: (a LoadedModel on
    onnxruntime, or None; the backend to load with otherwise). `device`: `--device` placed without torch
    (cvtool.device.place(..., torch_free=True)). The cached export is used when it exists and is hash-valid for
    these weights, on the CPU (device cpu, or auto on a machine without an NVIDIA GPU)."""
    if is_onnx_file(weights):
        loaded = open_onnx_array(weights, task=task, device=device)
        if name and name != loaded.name:
            raise UsageError(f"{weights}: exported from {loaded.name!r}, not {name!r}; drop --model")
        return loaded, "onnxruntime"
    if task not in CACHED_TASKS or device.type != "cpu":
        return None, "torch"
    if task not in CONVERT_ON_FIRST_USE:
        return cached_onnx(weights, task, name=None if weights is not None else (name or default)), "torch"
    if weights is None:
        from cvtool.models.dlib.convert import converted_path

        path = converted_path(name or default)
        if path is None:
            return None, "torch"
    else:
        path = Path(weights)
    return cached_onnx(path, task), "onnxruntime"


def load(name: str | None, *, task: str, weights: str | Path | None, device: Placement, backend: str,
         default: str | None = None, progress: bool = True, on_export=None):
    """What `--backend` and `--weights` ask for: PyTorch, onnxruntime on the fly, or a given .onnx file, on
    `device` (onnxruntime: its providers for it).

    A .onnx weights file always runs on onnxruntime (PyTorch cannot run it), without importing torch.
    """
    check_backend(backend)
    if is_onnx_file(weights):
        return resolve_auto(name, task=task, weights=weights, device=device, default=default)[0]
    from cvtool.models.loading import load_model

    if backend == "torch":
        return load_model(name, task=task, weights=weights, device=device, progress=progress, default=default)
    loaded = load_model(name, task=task, weights=weights, device=CPU, progress=progress, default=default)
    return to_onnxruntime(loaded, device=device, on_export=on_export, by_name=(name or default) if weights is None else None)

