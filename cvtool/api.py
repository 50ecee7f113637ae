"""cvtool's Python API: one object per task, loaded once and called many times.

    import cvtool
    det = cvtool.Detector("fasterrcnn_mobilenet_v3_large_fpn")   # or weights="runs/raccoon/best.pt"
    res = det("street.jpg")              # a path, bytes, an RGB uint8 array, a PIL image, or a list of these
    res.boxes, res.labels, res.scores    # NumPy arrays / lists
    res.to_dict()                        # exactly the record `cvtool detect` prints for that image
    res.save("street.detect.jpg")        # the annotated image (res.plot() returns it as an array)
    for r in det.stream("clip.mp4", vid_stride=5): ...   # video frames, bounded memory
    for r in det.run(["photos/"], out="boxes/"): ...    # a batch as the CLI runs it: files, folders, globs

Images given as arrays are **RGB**, dtype uint8, shape H x W x 3 (see `cvtool.io.image.load_image`).
Nothing here prints; every failure a user can cause is a `cvtool.CvtoolError` (an `InputError` for a
bad image) carrying the one-line message the CLI shows. A loaded model may be called from several
threads at once: preprocessing runs in the caller's thread, the forward pass is serialised by a lock.
`threads=N` on any task object sets this process's compute threads (PyTorch, OpenCV, onnxruntime;
process-wide, see `cvtool.device.set_threads`); `run(..., shard=(K, N), records="done.jsonl")` splits a
batch between processes and makes it resumable (README, "Batch jobs at scale").
The CLI (`cvtool.cli`) is a thin adapter over these objects.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, Iterable, Iterator, Sequence, TypeVar, overload

import numpy as np

from cvtool.errors import InputError, UsageError
from cvtool.io.image import ImageSource, load_image
from cvtool.tasks.classify import SPEC as CLASSIFY
from cvtool.tasks.common import BATCH_SIZE, BUFFER, VID_STRIDE
from cvtool.tasks.detect import DEFAULT_CONF, SPEC as DETECT
from cvtool.tasks.landmarks import SPEC as LANDMARKS
from cvtool.tasks.localize import SPEC as LOCALIZE
from cvtool.tasks.options import CALL, CSV
from cvtool.tasks.segment import SPEC as SEGMENT
from cvtool.tasks.spec import TaskSpec
from cvtool.tasks.stylize import OPTIMISED_SIZE, SPEC as STYLIZE
from cvtool.tasks.track import SPEC as TRACK
from cvtool.tasks.verify_face import SPEC as VERIFY_FACE

__all__ = [
    "Result", "ClassifyResult", "DetectResult", "LocalizeResult", "SegmentResult", "StylizeResult", "VerifyResult",
    "Classifier", "Detector", "Localizer", "Segmenter", "Stylizer", "FaceVerifier", "LandmarkDetector",
    "LandmarksResult",
    "list_models", "export_onnx", "Tracker", "TrackResult",
]

Sources = "ImageSource | Sequence[ImageSource]"


# -- results ---------------------------------------------------------------------------------------

@dataclass
class Result:
    """One input's (or one video frame's) answer. `to_dict()` is the record the CLI prints for it."""

    record: dict
    image: np.ndarray | None = field(default=None, repr=False)  # the input, RGB, when it was kept
    _render: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    @property
    def path(self) -> str | None:
        return self.record.get("path")

    @property
    def error(self) -> str | None:
        """The one-line reason this input failed (only from `run`/`stream`; direct calls raise instead)."""
        return self.record.get("error")

    @property
    def ok(self) -> bool:
        return "error" not in self.record

    @property
    def result(self) -> dict:
        """The task's answer, as in the record's `result`."""
        return self.record.get("result", {})

    def to_dict(self) -> dict:
        """A copy of the record (JSON-ready: plain lists, numbers and strings)."""
        import copy

        return copy.deepcopy(self.record)

    def plot(self) -> np.ndarray:
        """The annotated image (RGB uint8), as `--out` would draw it."""
        if self.image is None or self._render is None:
            raise UsageError("this result keeps no pixels (results of run() don't, to bound memory); "
                             "call the model on the image itself to plot it")
        return self._render(self.image)

    def save(self, path: str | Path) -> Path:
        """Write `plot()` to `path` (format by suffix), atomically."""
        from cvtool.io.image import write_image

        write_image(path, self.plot())
        return Path(path)


class ClassifyResult(Result):
    @property
    def top_k(self) -> list[dict]:
        return self.result["top_k"]

    @property
    def label(self) -> str:
        return self.top_k[0]["label"]

    @property
    def prob(self) -> float:
        return self.top_k[0]["prob"]


class DetectResult(Result):
    @property
    def detections(self) -> list[dict]:
        return self.result["detections"]

    @property
    def boxes(self) -> np.ndarray:
        """N x 4 float32 `[x1, y1, x2, y2]` in the input's own pixels."""
        return np.array([d["box"] for d in self.detections], np.float32).reshape(-1, 4)

    @property
    def scores(self) -> np.ndarray:
        return np.array([d["score"] for d in self.detections], np.float32)

    @property
    def labels(self) -> list[str]:
        return [d["label"] for d in self.detections]

    @property
    def class_ids(self) -> np.ndarray:
        return np.array([d["index"] for d in self.detections], np.int64)


class TrackResult(DetectResult):
    """One frame's tracked boxes: `detections` each with a `track_id`; `counts` the line/zone counts so far."""

    @property
    def track_ids(self) -> np.ndarray:
        return np.array([d["track_id"] for d in self.detections], np.int64)

    @property
    def counts(self) -> dict:
        return self.result.get("counts", {})


class LocalizeResult(DetectResult):
    """One object per image: `pc` (is there one), `box` (x1 y1 x2 y2 in the input's pixels), `label`,
    `class_prob`: the network's answer whatever Pc is; `found`: Pc >= conf (`detections` then holds that box)."""

    @property
    def pc(self) -> float:
        return self.result["pc"]

    @property
    def box(self) -> np.ndarray:
        return np.array(self.result["box"], np.float32)

    @property
    def label(self) -> str:
        return self.result["label"]

    @property
    def class_prob(self) -> float:
        return self.result["class_prob"]

    @property
    def found(self) -> bool:
        return bool(self.result["detections"])


class SegmentResult(Result):
    mask: np.ndarray | None = None  # H x W class indices at the input's size

    @property
    def classes(self) -> list[dict]:
        return self.result["classes"]

    def png(self) -> bytes:
        """The class mask as an 8-bit palette PNG (pixel value = class index): the bytes `--out` writes as
        NAME.mask.png, and `POST /segment?format=png`'s answer."""
        from cvtool.io.render import indexed_png

        if self.mask is None:
            raise UsageError("this result keeps no mask (results of run() are written to --out instead)")
        return indexed_png(self.mask)


class StylizeResult(Result):
    stylized: np.ndarray | None = None  # the stylised image, RGB uint8

    def plot(self) -> np.ndarray:
        if self.stylized is None:
            raise UsageError("this result keeps no pixels (results of run() are written to --out instead)")
        return self.stylized

    def png(self) -> bytes:
        """The stylised image as an RGB PNG (lossless): `POST /stylize`'s answer."""
        import cv2

        return cv2.imencode(".png", self.plot()[..., ::-1])[1].tobytes()


class VerifyResult(Result):
    @property
    def same(self) -> bool:
        return bool(self.result["same"])

    @property
    def distance(self) -> float:
        return float(self.result["distance"])

    @property
    def threshold(self) -> float:
        return float(self.result["threshold"])


# -- the shared machinery --------------------------------------------------------------------------

def _name_of(source: Any) -> str | None:
    import os

    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else None


def _prefetch(fn, items: list, *, workers: int, lookahead: int) -> Iterator:
    """fn(item) for each item, in order, computed up to `lookahead` ahead by `workers` threads."""
    import collections
    from concurrent.futures import ThreadPoolExecutor

    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cvtool-api") as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _as_list(sources) -> tuple[list, bool]:
    if isinstance(sources, (list, tuple)):
        return list(sources), False
    return [sources], True


def _load(model: str | None, *, task: str, weights, device: str, backend: str, default: str,
          progress: bool, on_export: Callable[[Path], None] | None, threads: int | None = None, half: bool = False):
    from cvtool.device import half_dtype, place, set_threads
    from cvtool.models import onnx_backend

    set_threads(threads)  # before any session is made: onnxruntime fixes its pool then
    onnx_backend.check_backend(backend)
    if half and (backend == "onnxruntime" or onnx_backend.is_onnx_file(weights)):
        raise UsageError("--half is for --backend torch; for onnxruntime export a half model: cvtool export --half")
    if backend != "torch" or onnx_backend.is_onnx_file(weights):  # torch-free: an .onnx file, or the cached export
        cached, chosen = (None, "torch") if half else onnx_backend.resolve_auto(
            model, task=task, weights=weights, device=place(device, torch_free=True), default=default)
        if cached is not None:
            cached.half = None
            return cached
        if backend == "auto":  # nothing cached: what auto resolves to (onnxruntime asked for by name exports now)
            backend = chosen
    # onnxruntime with `auto`: its CUDA provider when it has one, else the CPU's (never a failure)
    where = place(device)
    loaded = onnx_backend.load(model, task=task, weights=weights, device=where, backend=backend,
                               progress=progress, default=default, on_export=on_export)
    loaded.half = half_dtype(where) if half else None
    return loaded


def _workers(workers: int | None, loaded, shard: tuple[int, int] | None = None) -> int:
    """The decoding threads of a batch (cvtool.device.decode_workers), for the loaded network's device."""
    from cvtool.device import decode_workers

    return decode_workers(workers, loaded.device, shard)


def describe_loaded(loaded) -> str:
    """`resnet18 on cpu, weights resnet18-f37072fd.pth (sha256 f37072fd4e0b)`: the line the CLI logs."""
    where = "onnxruntime" if loaded.backend == "onnxruntime" else loaded.device
    if loaded.meta.get("backend_choice"):  # `--backend auto` took the cached export
        where = f"{where} ({loaded.meta['backend_choice']})"
    return f"{loaded.name} on {where}, weights {Path(loaded.weights_path).name} (sha256 {loaded.weights_sha256[:12]})"


R = TypeVar("R", bound=Result)

# each task's defaults, from the task table (cvtool.tasks): the signatures below read them, never restate them
_C, _D, _S, _Y, _V = (spec.defaults(route="api") for spec in (CLASSIFY, DETECT, SEGMENT, STYLIZE, VERIFY_FACE))


class _Task(Generic[R]):
    """Load once, call many times. Subclasses say how to build their pipeline and wrap a result (a subclass of
    `_Task[DetectResult]` returns DetectResults from every call: what a type checker sees too).

    Its options are its task's (`spec`, cvtool.tasks): the per-call ones (stage CALL) are held in `options`, read
    as attributes (`det.iou`), and changed with `with_options`; every value is range-checked by the table."""

    spec: TaskSpec
    result_type: type[R]

    def __init__(self, loaded, options: dict[str, Any]):
        self.loaded = loaded
        self.options = options
        self._lock = threading.Lock()
        self._pipeline = self._make_pipeline(None)

    @classmethod
    def _call_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The per-call options among a constructor's arguments, range-checked before anything loads."""
        cls.spec.options.check(given)
        return {name: given[name] for name in cls.spec.options.names(stage=CALL, route="api") if name in given}

    def with_options(self, **changes: Any):
        """The same loaded network with other per-call options (`det.with_options(conf=0.5)`): a new object
        sharing the network and its lock; this one is unchanged. Only the task's per-call options are taken."""
        allowed = self.spec.options.names(stage=CALL, route="api")
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            raise UsageError(f"{', '.join(unknown)}: not a per-call option of {self.spec.name} "
                             f"(those are {', '.join(allowed)})")
        self.spec.options.check(changes)
        changes = self._normalise(changes)
        if all(self.options.get(name) == value for name, value in changes.items()):
            return self
        other = copy.copy(self)
        other.options = {**self.options, **changes}
        other._pipeline = other._make_pipeline(None)
        return other

    def _normalise(self, options: dict[str, Any]) -> dict[str, Any]:
        """Per-call options as the pipeline takes them (a model's own default for a None, lists as lists; an
        empty comma list is None: every class)."""
        def one(name: str, value: Any) -> Any:
            if self.spec.options[name].type == CSV:
                return list(value) if value else None
            return list(value) if isinstance(value, tuple) else value

        return {name: one(name, value) for name, value in options.items()}

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # what subclasses provide
    def _make_pipeline(self, out_dir: Path | None):
        raise NotImplementedError

    @property
    def task(self) -> str:
        return self.spec.name

    @property
    def columns(self) -> list[str]:
        """The CLI's table/CSV header (the task table's)."""
        return list(self.spec.columns)

    def rows(self, result: dict) -> list[list]:
        """The CLI's table/CSV rows of one result."""
        return self.spec.rows(result)

    @property
    def extra_formats(self) -> dict | None:
        """Output formats beyond json/jsonl/csv/table that this model can write (`-f coco`), or None."""
        return None

    def _wrap(self, record: dict, rgb: np.ndarray | None, sample, result: dict) -> R:
        return self.result_type(record, rgb, self._render_for(sample, result))

    def _render_for(self, sample, result) -> Callable[[np.ndarray], np.ndarray] | None:
        """How `Result.plot()` draws this input: the pipeline's own renderer (the one `--out` uses)."""
        pipeline = self._pipeline
        return lambda rgb: pipeline.render(rgb, sample, result)

    # the public surface
    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def classes(self) -> list[str]:
        return list(self.loaded.classes)

    @property
    def weights_sha256(self) -> str:
        return self.loaded.weights_sha256

    def describe(self) -> str:
        return describe_loaded(self.loaded)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    @overload
    def __call__(self, source: ImageSource, *, batch_size: int = BATCH_SIZE.default,
                 workers: int | None = None) -> R: ...

    @overload
    def __call__(self, source: list[Any] | tuple[Any, ...], *, batch_size: int = BATCH_SIZE.default,
                 workers: int | None = None) -> list[R]: ...  # list[Any]: a list[Path] is no list[ImageSource]

    def __call__(self, source, *, batch_size: int = BATCH_SIZE.default, workers: int | None = None):
        """One image -> one Result; a list -> a list of Results, in order. A bad image raises InputError.

        A list is decoded and preprocessed by `workers` threads while the previous batch runs (default: 2 on
        the CPU, one per core up to 8 when the network runs on a GPU)."""
        BATCH_SIZE.check(batch_size)
        sources, single = _as_list(source)
        if single:
            return self.predict_prepared([self.prepare(source)])[0]
        results: list[R] = []
        batch: list = []
        workers = _workers(workers, self.loaded)
        for prepared in _prefetch(self.prepare, sources, workers=workers, lookahead=2 * max(1, batch_size)):
            batch.append(prepared)
            if len(batch) >= batch_size:
                results += self.predict_prepared(batch)
                batch = []
        if batch:
            results += self.predict_prepared(batch)
        return results

    # the two halves of a call, for callers that batch inputs themselves (cvtool serve batches requests)
    def prepare(self, source: ImageSource) -> tuple:
        """Decode and preprocess one image (thread-safe; no network): the `prepared` item predict_prepared takes."""
        start = time.perf_counter()
        rgb = load_image(source, max_pixels=self.max_pixels)
        sample = self._pipeline.prepare_array(rgb)
        return _name_of(source), rgb, sample, (time.perf_counter() - start) * 1000

    def batch_key(self, prepared: tuple) -> Hashable:
        """Prepared items with equal keys may share one forward pass without changing each other's results."""
        return None

    def input_pixels(self, prepared: tuple) -> int:
        """The pixels of the network's input for a prepared item (what its activations grow with), so that a
        caller batching items can bound a pass's memory; here the decoded image's."""
        height, width = prepared[1].shape[:2]
        return int(height * width)

    def predict_prepared(self, prepared: list) -> list[R]:
        """Results of prepared items, in order, from one forward pass (under this object's lock)."""
        from cvtool.pipelines.base import result_record

        if not prepared:
            return []
        start = time.perf_counter()
        with self._lock:
            outputs = self._pipeline.predict([p[2] for p in prepared])
        infer_ms = (time.perf_counter() - start) * 1000 / len(prepared)
        results = []
        for (name, rgb, sample, ms), result in zip(prepared, outputs):
            extras = self._extras(result)
            record = result_record(self._pipeline, name, ms + infer_ms, result)
            results.append(self._finish(self._wrap(record, rgb, sample, result), sample, extras))
        return results

    def _extras(self, result: dict) -> dict:
        """Pixels a pipeline puts in its result for saving (not part of the record)."""
        return {"image": result.pop("image")} if "image" in result else {}

    def _finish(self, res: R, sample, extras: dict) -> R:
        return res

    def stream(self, source: str | Path | Sequence[str | Path], *, vid_stride: int = 1,
               batch_size: int = BATCH_SIZE.default, buffer: bool | None = BUFFER.default) -> Iterator[R]:
        """The frames of a video file, `cam:N` or a live stream (rtsp://, .m3u8, .mjpg), every `vid_stride`-th,
        with bounded memory; a list of sources is read all at once, each in its own thread.

        Yields one Result per kept frame (`record["frame"]`, `record["time_s"]`; for a camera or stream also
        `lag_ms`, and `dropped`). `buffer` (cvtool.tasks.common.BUFFER): None reads a camera or stream newest-frame
        (frames a slower model has no time for are dropped) and a file every frame; True every frame; False a file
        too newest-frame, at its own frame rate. A single video that cannot be read raises InputError; one that
        fails part-way (or, of a list, any that fails) gives a Result whose `error` says why."""
        from cvtool.pipelines.video import run_videos

        BATCH_SIZE.check(batch_size)
        VID_STRIDE.check(vid_stride)
        sources = [str(source)] if isinstance(source, (str, Path)) else [str(s) for s in source]
        first = isinstance(source, (str, Path))  # one source that cannot be read raises
        for record, rgb, sample, result in run_videos(self._pipeline, sources, batch_size=batch_size,
                                                      stride=vid_stride, with_frames=True, lock=self._lock,
                                                      buffer=buffer):
            if first and "error" in record:
                raise InputError(record["error"], record["path"])
            first = False
            if "error" in record:
                yield self.result_type(record)
                continue
            extras = self._extras(result)
            yield self._finish(self._wrap(record, rgb, sample, result), sample, extras)

    def run(self, inputs: str | Path | Iterable, *, out: str | Path | None = None, recursive: bool = False,
            batch_size: int = BATCH_SIZE.default, workers: int | None = None, skip_existing: bool = False,
            vid_stride: int = 1, buffer: bool | None = BUFFER.default,
            on_skip: Callable[[str], None] | None = None, shard: tuple[int, int] | None = None,
            records: str | Path | Any = None) -> Iterator[R]:
        """A batch as the CLI runs it: files, directories, globs (or `InputItem`s), images and videos.

        Yields one Result per input (per kept frame of a video), in input order; a bad input yields a
        Result whose `error` says why and the batch goes on. With `out`, each input's outputs are written
        there atomically (`record["outputs"]`); `skip_existing` skips inputs whose output exists.
        `shard=(K, N)`: only shard K of N of the inputs (cvtool.io.shards: N processes split any input list
        with no coordination). `records`: a JSON Lines journal (a path, or an open `cvtool.io.journal.Journal`)
        every record is appended to as it is produced; inputs it already records as done are skipped
        (`on_skip` is told), whatever `out` is."""
        from cvtool.io.outputs import check_out_dir

        BATCH_SIZE.check(batch_size)
        VID_STRIDE.check(vid_stride)
        out_dir = Path(out) if out is not None else None
        check_out_dir(out_dir, skip_existing=skip_existing)
        return _run_batch(self._make_pipeline(out_dir), inputs, self.result_type, recursive=recursive, out_dir=out_dir,
                          batch_size=batch_size, workers=_workers(workers, self.loaded, shard),
                          skip_existing=skip_existing, vid_stride=vid_stride, buffer=buffer, on_skip=on_skip,
                          lock=self._lock, shard=shard, records=records, runner=self._batch_runner())

    def _batch_runner(self) -> Callable | None:
        """What plays a batch's inputs through the pipeline: None, cvtool.pipelines.runner.run; the Tracker's
        plays one sequence at a time (cvtool.pipelines.track.run_sequences)."""
        return None


def _input_items(inputs, recursive: bool, out_dir: Path | None, guard, also_protect=()) -> Iterator:
    """Paths, directories and globs expanded as the CLI expands them (previous outputs in `out_dir` are
    not inputs; every input is protected by `guard`); `InputItem`s (already expanded) pass through."""
    from cvtool.io.inputs import InputItem, expand_inputs

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    for path in also_protect:
        guard.add(path)
    for spec in inputs:
        if isinstance(spec, InputItem):
            if spec.error is None:
                guard.add(spec.path)
            yield spec
        else:
            items, _ = expand_inputs([str(spec)], recursive=recursive, out_dir=out_dir, guard=guard)
            yield from items


def _run_batch(pipeline, inputs, result_type: type[R], *, recursive, out_dir, batch_size, workers, skip_existing,
               vid_stride, on_skip, lock, also_protect=(), shard=None, records=None, runner=None,
               buffer=None) -> Iterator[R]:
    """Check `shard` and open the `records` journal now (a bad one is a UsageError at the call), then
    the batch, lazily."""
    from cvtool.io.journal import Journal
    from cvtool.io.shards import check_shard

    if shard is not None:
        shard = check_shard(shard)
    journal = records if records is None or isinstance(records, Journal) else Journal(records)
    return _batch(pipeline, inputs, result_type, recursive=recursive, out_dir=out_dir, batch_size=batch_size,
                  workers=workers, skip_existing=skip_existing, vid_stride=vid_stride, on_skip=on_skip, lock=lock,
                  also_protect=also_protect, shard=shard, journal=journal, own_journal=journal is not records,
                  runner=runner, buffer=buffer)


def _batch(pipeline, inputs, result_type: type[R], *, recursive, out_dir, batch_size, workers, skip_existing,
           vid_stride, on_skip, lock, also_protect, shard, journal, own_journal, runner=None,
           buffer=None) -> Iterator[R]:
    from cvtool.io.outputs import protecting
    from cvtool.io.shards import select
    from cvtool.pipelines.runner import already_done, run

    def skip(path: str) -> bool:
        done = (journal is not None and journal.done(path)) or (skip_existing and already_done(pipeline, path))
        if done and on_skip is not None:
            on_skip(path)
        return done

    try:
        with protecting() as guard:  # no output of this batch lands on one of its inputs (or another batch's)
            items = select(_input_items(inputs, recursive, out_dir, guard, also_protect), shard)
            records = (runner or run)(pipeline, items, batch_size=batch_size, workers=workers, out_dir=out_dir,
                                      skip=skip, vid_stride=vid_stride, buffer=buffer, lock=lock)
            stream = journal.track(records) if journal is not None else records
            try:
                for record in stream:
                    yield result_type(record)
            finally:
                stream.close()
                records.close()
    finally:
        if own_journal and journal is not None:
            journal.close()


class Classifier(_Task[ClassifyResult]):
    """Top-k labels per image: LeNet-5, torchvision's classifiers, or a `cvtool train classify` checkpoint.

    `Classifier("resnet18")`, `Classifier(weights="runs/digits/best.pt")`, `backend="onnxruntime"`."""

    spec = CLASSIFY
    result_type = ClassifyResult

    def __init__(self, model: str | None = None, *, weights: str | Path | None = None, top_k: int = _C["top_k"],
                 device: str = _C["device"], backend: str = _C["backend"], max_pixels: int = _C["max_pixels"],
                 progress: bool = False, on_export: Callable[[Path], None] | None = None,
                 threads: int | None = _C["threads"], half: bool = _C["half"], full_decode: bool = _C["full_decode"]):
        options = self._call_options(dict(top_k=top_k, max_pixels=max_pixels, threads=threads, full_decode=full_decode))
        loaded = _load(model, task=self.spec.name, default=self.spec.default_model, weights=weights, device=device,
                       backend=backend,
                       progress=progress, on_export=on_export, threads=threads, half=half)
        super().__init__(loaded, options)

    def _make_pipeline(self, out_dir):
        from cvtool.pipelines.classify import ClassifyPipeline

        return ClassifyPipeline(self.loaded, top_k=self.top_k, max_pixels=self.max_pixels, out_dir=out_dir,
                                full_decode=self.full_decode)

    def batch_key(self, prepared: tuple) -> Hashable:
        return tuple(prepared[2].shape)  # the pass stacks its inputs: one shape per pass

    def input_pixels(self, prepared: tuple) -> int:
        return int(prepared[2].shape[-2] * prepared[2].shape[-1])


class _KeptClasses:
    """The tasks with a `classes` option (the classes kept): its old attribute name, for one release."""

    options: dict[str, Any]

    @property
    def keep_classes(self) -> list[str] | None:
        """Deprecated (one release): the classes kept, `options["classes"]` (`classes` is the model's class list)."""
        import warnings

        warnings.warn("keep_classes is deprecated; use options['classes']", DeprecationWarning, stacklevel=2)
        return self.options["classes"]


class Detector(_KeptClasses, _Task[DetectResult]):
    """Boxes, labels and scores: our YOLO-style detector, torchvision's detectors, Keypoint R-CNN, faces.

    `conf=None` takes the model's own default (0.25; 0 for `face`, whose scores are margins)."""

    spec = DETECT
    result_type = DetectResult

    def __init__(self, model: str | None = None, *, weights: str | Path | None = None,
                 conf: float | None = _D["conf"], iou: float = _D["iou"], classes: Sequence[str] | None = _D["classes"],
                 max_det: int = _D["max_det"], keypoints: bool = _D["keypoints"], save_crops: bool = _D["save_crops"],
                 save_txt: bool = _D["save_txt"], device: str = _D["device"], backend: str = _D["backend"],
                 max_pixels: int = _D["max_pixels"], progress: bool = False,
                 on_export: Callable[[Path], None] | None = None, threads: int | None = _D["threads"],
                 half: bool = _D["half"], full_decode: bool = _D["full_decode"]):
        options = self._call_options(dict(conf=conf, iou=iou, classes=classes, max_det=max_det, keypoints=keypoints,
                                          save_crops=save_crops, save_txt=save_txt, max_pixels=max_pixels,
                                          threads=threads, full_decode=full_decode))
        self.loaded = _load(model, task=self.spec.name, default=self.spec.default_model, weights=weights, device=device,
                       backend=backend,
                            progress=progress, on_export=on_export, threads=threads, half=half)
        super().__init__(self.loaded, self._normalise(options))

    def _normalise(self, options: dict[str, Any]) -> dict[str, Any]:
        options = super()._normalise(options)
        if "conf" in options and options["conf"] is None:  # the model's own
            options["conf"] = default_conf(self.loaded)
        return options

    def _make_pipeline(self, out_dir):
        from cvtool.pipelines.detect import DetectPipeline

        o = self.options
        return DetectPipeline(self.loaded, conf=o["conf"], iou=o["iou"], max_det=o["max_det"], classes=o["classes"],
                              keypoints=o["keypoints"], save_crops=o["save_crops"], save_txt=o["save_txt"],
                              max_pixels=o["max_pixels"], out_dir=out_dir, full_decode=o["full_decode"])

    def batch_key(self, prepared: tuple) -> Hashable:
        return self._pipeline.batch_key(prepared[2])

    def input_pixels(self, prepared: tuple) -> int:
        return self._pipeline.input_pixels(prepared[2])

    @property
    def extra_formats(self) -> dict:
        """`-f coco` and `-f yolo`: writers that know this model's categories."""
        from cvtool.pipelines.detect import extra_formats

        return extra_formats(self.loaded)

    @property
    def coco_categories(self) -> dict[int, dict]:
        """Class index -> COCO category {"id", "name"}: what `-f coco` lists (cvtool.pipelines.detect)."""
        return self._pipeline.categories

    def tracker(self, **options: Any) -> "Tracker":
        """A `Tracker` over this same network (shared, not reloaded; one lock), this detector's iou, classes and
        max_det unless `options` (the Tracker's per-call options) say otherwise."""
        mine = {name: self.options[name] for name in ("iou", "classes", "max_det", "max_pixels")}
        return Tracker._over(self.loaded, self._lock, {**mine, **options})

    def track(self, source: str | Path, **options: Any) -> Iterator["TrackResult"]:
        """`self.tracker(**options).stream(source)`: a video's (or camera's) frames with track ids."""
        return self.tracker(**options).stream(source)


_L = LOCALIZE.defaults(route="api")


class Localizer(_Task[LocalizeResult]):
    """Classification with localisation, one object per image: a `cvtool train localize` checkpoint.

    `Localizer(weights="runs/pets/best.pt")("cat.jpg")` -> `.pc`, `.box`, `.label`, `.found` (Pc >= conf)."""

    spec = LOCALIZE
    result_type = LocalizeResult

    def __init__(self, model: str | None = None, *, weights: str | Path | None = None, conf: float = _L["conf"],
                 device: str = _L["device"], backend: str = _L["backend"], max_pixels: int = _L["max_pixels"],
                 progress: bool = False, on_export: Callable[[Path], None] | None = None,
                 threads: int | None = _L["threads"], half: bool = _L["half"]):
        options = self._call_options(dict(conf=conf, max_pixels=max_pixels, threads=threads))
        loaded = _load(model, task=self.spec.name, default=self.spec.default_model, weights=weights, device=device,
                       backend=backend, progress=progress, on_export=on_export, threads=threads, half=half)
        super().__init__(loaded, options)

    def _make_pipeline(self, out_dir):
        from cvtool.pipelines.localize import LocalizePipeline

        return LocalizePipeline(self.loaded, conf=self.conf, max_pixels=self.max_pixels, out_dir=out_dir)

    def batch_key(self, prepared: tuple) -> Hashable:
        return tuple(prepared[2][1].shape)  # the network's input: one square size per model

    def input_pixels(self, prepared: tuple) -> int:
        return int(prepared[2][1].shape[-2] * prepared[2][1].shape[-1])

    @property
    def extra_formats(self) -> dict:
        """`-f coco` and `-f yolo`, as `cvtool detect` writes them (the found box, its score Pc)."""
        from cvtool.pipelines.detect import writers_for

        return writers_for({i: {"id": i + 1, "name": name} for i, name in enumerate(self.classes)})


_T = TRACK.defaults(route="api")


class Tracker(_KeptClasses, _Task[TrackResult]):
    """Objects followed across frames: any detector's boxes (the models `Detector` takes), each with a `track_id`
    (ByteTrack, cvtool.ops.tracking), and counts of `line` crossings and `zone` entries and exits
    (cvtool.ops.counting), per track.

    `tr = Tracker("face")`: each call `tr(frame)` is the next frame of one sequence and `reset()` starts another;
    `stream(video)` and `run(inputs)` track each video (and each run of images, in order) on its own.
    `track_high=None`: the model's own confidence threshold (0.25; 0 for `face`); `new_track=None`: track_high."""

    spec = TRACK
    result_type = TrackResult

    def __init__(self, model: str | None = None, *, weights: str | Path | None = None, iou: float = _T["iou"],
                 classes: Sequence[str] | None = _T["classes"], max_det: int = _T["max_det"],
                 track_high: float | None = _T["track_high"], track_low: float = _T["track_low"],
                 new_track: float | None = _T["new_track"], match_iou: float = _T["match_iou"],
                 track_buffer: int = _T["track_buffer"], tracker: str = _T["tracker"],
                 line: Sequence[float] | None = _T["line"], zone: Sequence[float] | None = _T["zone"],
                 trail: int = _T["trail"], device: str = _T["device"], backend: str = _T["backend"],
                 max_pixels: int = _T["max_pixels"], progress: bool = False,
                 on_export: Callable[[Path], None] | None = None, threads: int | None = _T["threads"],
                 half: bool = _T["half"]):
        options = self._call_options(dict(iou=iou, classes=classes, max_det=max_det, track_high=track_high,
                                          track_low=track_low, new_track=new_track, match_iou=match_iou,
                                          track_buffer=track_buffer, tracker=tracker, line=line, zone=zone,
                                          trail=trail, max_pixels=max_pixels, threads=threads))
        self.loaded = _load(model, task=DETECT.name, default=self.spec.default_model, weights=weights, device=device,
                            backend=backend, progress=progress, on_export=on_export, threads=threads, half=half)
        self._last = None  # the pipeline of the latest run (its counts are the summary)
        super().__init__(self.loaded, self._normalise(options))

    def _make_pipeline(self, out_dir):
        from cvtool.ops.tracking import TrackerSettings
        from cvtool.pipelines.detect import DetectPipeline
        from cvtool.pipelines.track import TrackPipeline

        o = self.options
        high = o["track_high"] if o["track_high"] is not None else default_conf(self.loaded)
        low = min(o["track_low"], high)  # the detector runs at the low threshold: the second stage needs its boxes
        settings = TrackerSettings(track_high=high, track_low=low,
                                   new_track=o["new_track"] if o["new_track"] is not None else high,
                                   match_iou=o["match_iou"], track_buffer=o["track_buffer"])
        # frames decoded in full: the boxes of a sequence do not depend on --out (reduced JPEG decoding would)
        detector = DetectPipeline(self.loaded, conf=low, iou=o["iou"], max_det=o["max_det"], classes=o["classes"],
                                  max_pixels=o["max_pixels"], full_decode=True)
        return TrackPipeline(detector, settings, tracker=o["tracker"], line=o["line"], zone=o["zone"],
                             trail=o["trail"], out_dir=out_dir)

    @classmethod
    def _over(cls, loaded, lock, options: dict[str, Any]) -> "Tracker":
        """A Tracker over an already loaded detector (Detector.tracker), sharing its lock."""
        allowed = set(cls.spec.options.names(stage=CALL, route="api"))
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise UsageError(f"{', '.join(unknown)}: not a per-call option of track (those are {', '.join(allowed)})")
        tracker = cls.__new__(cls)
        tracker.loaded, tracker._last = loaded, None
        defaults = {name: cls.spec.options[name].default for name in allowed}
        _Task.__init__(tracker, loaded, tracker._normalise(cls._call_options({**defaults, **options})))
        tracker._lock = lock
        return tracker

    def reset(self) -> None:
        """Start a new sequence for the calls `tr(frame)`: ids from 1 again, counts from 0."""
        self._pipeline.start(None)

    def stream(self, source, **options) -> Iterator[TrackResult]:  # type: ignore[override]
        """`Detector.stream`, each source tracked on its own (a fresh tracker per video)."""
        if isinstance(source, (str, Path)):
            self._pipeline.start(str(source))
            yield from super().stream(source, **options)
            return
        for one in source:
            self._pipeline.start(str(one))
            yield from super().stream([one], **options)

    def _batch_runner(self) -> Callable:
        from cvtool.pipelines.track import run_sequences

        def runner(pipeline, items, **run_options):
            self._last = pipeline
            return run_sequences(pipeline, items, **run_options)

        return runner

    @property
    def counts(self) -> dict[str, dict]:
        """The line/zone counts of each sequence of the latest `run` (video path -> counts; "images" for a run of
        images); {} without --line/--zone."""
        return dict(self._last.counts) if self._last is not None else {}

    @property
    def extra_formats(self) -> dict:
        """`-f mot`: MOTChallenge text (cvtool.pipelines.track.MotWriter)."""
        from cvtool.pipelines.track import EXTRA_FORMATS

        return dict(EXTRA_FORMATS)


def default_conf(loaded) -> float:
    """The confidence threshold a model's scores call for (declared on its registry entry; the task's otherwise)."""
    return float(loaded.default_conf) if loaded.default_conf is not None else DEFAULT_CONF


class Segmenter(_KeptClasses, _Task[SegmentResult]):
    """A class per pixel: our U-Net, torchvision's segmenters. `res.mask` is H x W class indices.

    `threshold` (two-class models): the decision on class 1's probability (cvtool.ops.regions.thresholded_labels:
    below 0.5 the argmax's cells grow into the pixels above it, never into each other); None: the checkpoint's
    own (`train segment` picks it on validation), else the argmax."""

    spec = SEGMENT
    result_type = SegmentResult

    def __init__(self, model: str | None = None, *, weights: str | Path | None = None, alpha: float = _S["alpha"],
                 classes: Sequence[str] | None = _S["classes"], save_mask: bool = _S["save_mask"],
                 tile: int | None = _S["tile"], overlap: int = _S["overlap"], tile_batch: int = _S["tile_batch"],
                 device: str = _S["device"], backend: str = _S["backend"], max_pixels: int = _S["max_pixels"],
                 progress: bool = False, on_export: Callable[[Path], None] | None = None,
                 threads: int | None = _S["threads"], half: bool = _S["half"],
                 threshold: float | None = _S["threshold"], full_decode: bool = _S["full_decode"]):
        options = self._call_options(dict(alpha=alpha, classes=classes, save_mask=save_mask, tile=tile,
                                          overlap=overlap, tile_batch=tile_batch, threshold=threshold,
                                          max_pixels=max_pixels, threads=threads, full_decode=full_decode))
        loaded = _load(model, task=self.spec.name, default=self.spec.default_model, weights=weights, device=device,
                       backend=backend,
                       progress=progress, on_export=on_export, threads=threads, half=half)
        super().__init__(loaded, self._normalise(options))

    @property
    def decision_threshold(self) -> float | None:
        """The threshold on class 1's probability this segmenter applies (None: the argmax)."""
        return self._pipeline.threshold

    def describe(self) -> str:
        threshold = self.decision_threshold
        return super().describe() + (f", threshold {threshold:g} on {self.classes[1]}" if threshold is not None else "")

    def _make_pipeline(self, out_dir):
        from cvtool.pipelines.segment import SegmentPipeline

        o = self.options
        return SegmentPipeline(self.loaded, alpha=o["alpha"], classes=o["classes"], save_mask=o["save_mask"],
                               tile=o["tile"], overlap=o["overlap"], tile_batch=o["tile_batch"],
                               max_pixels=o["max_pixels"], out_dir=out_dir, threshold=o["threshold"],
                               full_decode=o["full_decode"])

    def batch_key(self, prepared: tuple) -> Hashable:
        return self._pipeline.batch_key(prepared[2])

    def input_pixels(self, prepared: tuple) -> int:
        return self._pipeline.input_pixels(prepared[2])

    def _finish(self, res: SegmentResult, sample, extras: dict) -> SegmentResult:
        res.mask = sample.labels
        return res



class Stylizer(_Task[StylizeResult]):
    """Neural style transfer, in one of two modes:

    - feed-forward: `Stylizer(model="runs/starry/best.pt")` (a `cvtool train style` network): one forward
      pass per image or video frame;
    - optimisation (Gatys et al.): `Stylizer(style="starry.jpg")` (or several styles with `style_blend`);
      `settings` are `cvtool.pipelines.stylize.StyleSettings` fields (size, steps, content_weight, ...).

    `res.stylized` (and `res.plot()`) is the stylised image."""

    spec = STYLIZE
    result_type = StylizeResult

    def __init__(self, model: str | Path | None = None, *, style: ImageSource | Sequence[ImageSource] | None = None,
                 vgg: str = _Y["vgg"], weights: str | Path | None = None, size: int | None = _Y["size"],
                 tile: int | None = _Y["tile"], overlap: int = _Y["overlap"], device: str = _Y["device"],
                 backend: str = _Y["backend"], max_pixels: int = _Y["max_pixels"], progress: bool = False,
                 on_step=None, on_export: Callable[[Path], None] | None = None, threads: int | None = _Y["threads"],
                 half: bool = _Y["half"], **settings):
        from cvtool.pipelines import stylize as task
        from cvtool.tasks.stylize import SETTINGS

        unknown = sorted(set(settings) - set(SETTINGS.names()))
        if unknown:
            raise UsageError(f"unknown style setting: {', '.join(unknown)} (the settings are "
                             f"{', '.join(SETTINGS.names())})")
        options = self._call_options(dict(size=size, tile=tile, overlap=overlap, max_pixels=max_pixels,
                                          threads=threads, **settings))
        self.on_step = on_step
        self.feed_forward = model is not None
        self._style_paths: list[str] = []
        if self.feed_forward:
            if style is not None:
                raise UsageError("a feed-forward --model carries its style; drop the style images")
            if settings:
                raise UsageError(f"{', '.join(sorted(settings))}: optimisation settings, not for a --model network")
            loaded = _load(None, task=self.spec.name, weights=model, device=device, backend=backend,
                           default=self.spec.default_model, progress=progress, on_export=on_export, threads=threads,
                           half=half)
            super().__init__(loaded, options)
            return
        from cvtool.models.onnx_backend import check_backend

        check_backend(backend)
        if backend != "torch":
            raise UsageError(f"--backend {backend} needs --model (a feed-forward network); the optimisation needs "
                             "gradients, so it runs on torch")
        if half:
            raise UsageError("--half is for a feed-forward --model network; the optimisation runs in float32")
        styles, _ = _as_list(style) if style is not None else ([], True)
        if not styles:
            raise UsageError("give a style image: cvtool stylize CONTENT STYLE, or --style STYLE")
        self.settings = task.StyleSettings(size=size or OPTIMISED_SIZE, **settings)
        style_images = [load_image(s, max_pixels=max_pixels) for s in styles]  # a bad one fails before VGG loads
        loaded = _load(vgg, task="classify", weights=weights, device=device, backend="torch", default=vgg,
                       progress=progress, on_export=None, threads=threads)
        if loaded.contract.feature_stack is None:
            raise UsageError(f"{loaded.name} has no VGG-style feature stack; use --vgg vgg19 or vgg16")
        features = loaded.contract.feature_stack(loaded.module)
        self.stylizer = task.Stylizer(features, loaded.preprocess.mean, loaded.preprocess.std, self.settings,
                                      loaded.device)
        self.stylizer.set_styles(style_images)
        self._style_paths = [name for name in map(_name_of, styles) if name is not None]  # never overwritten
        super().__init__(loaded, options)

    def with_options(self, **changes: Any):
        if changes and not self.feed_forward:
            raise UsageError("an optimising Stylizer's settings are fixed when it is made (its styles are analysed "
                             "then); make another Stylizer")
        return super().with_options(**changes)

    @property
    def columns(self) -> list[str]:
        return list(self.spec.tables["feed_forward"].columns if self.feed_forward else self.spec.columns)

    def rows(self, result: dict) -> list[list]:
        return (self.spec.tables["feed_forward"].rows if self.feed_forward else self.spec.rows)(result)

    @property
    def name(self) -> str:
        return self.loaded.name if self.feed_forward else f"gatys/{self.loaded.name}"

    def _make_pipeline(self, out_dir, *, single_file: bool = False, save_every: int | None = None):
        from cvtool.pipelines import stylize as task

        out = Path(out_dir) if out_dir is not None else Path(".")
        if self.feed_forward:
            o = self.options
            return task.FastStylePipeline(self.loaded, out=out, single_file=single_file, size=o["size"],
                                          tile=o["tile"], overlap=o["overlap"], max_pixels=o["max_pixels"])
        return task.StylizePipeline(self.stylizer, model_name=self.name, weights_sha256=self.loaded.weights_sha256,
                                    out=out, single_file=single_file, save_every=save_every, on_step=self.on_step,
                                    max_pixels=self.max_pixels)

    def prepare(self, source) -> tuple:
        if self.feed_forward:
            return super().prepare(source)
        from cvtool.io.image import ARRAY_NAME

        start = time.perf_counter()
        rgb = load_image(source, max_pixels=self.max_pixels)
        return _name_of(source), rgb, (_name_of(source) or ARRAY_NAME, rgb), (time.perf_counter() - start) * 1000

    def predict_prepared(self, prepared: list) -> list[StylizeResult]:
        if self.feed_forward:
            return super().predict_prepared(prepared)
        from cvtool.pipelines.base import result_record

        results = []
        for name, rgb, sample, ms in prepared:  # one optimisation per content image
            start = time.perf_counter()
            with self._lock:
                result = self._pipeline.predict([sample])[0]
            extras = self._extras(result)
            record = result_record(self._pipeline, name, ms + (time.perf_counter() - start) * 1000, result)
            results.append(self._finish(StylizeResult(record, rgb), None, extras))
        return results

    def _finish(self, res: StylizeResult, sample, extras: dict) -> StylizeResult:
        res.stylized = extras.get("image")
        return res

    def _render_for(self, sample, result):
        return None

    def run(self, inputs: str | Path | Iterable, *, out: str | Path | None = "stylized", recursive: bool = False,
            batch_size: int = 1, workers: int | None = 1, skip_existing: bool = False, vid_stride: int = 1,
            buffer: bool | None = BUFFER.default, on_skip: Callable[[str], None] | None = None,
            shard: tuple[int, int] | None = None, records: str | Path | Any = None,
            save_every: int | None = None) -> Iterator[StylizeResult]:
        """Stylise each content image (or video, feed-forward only) into `out`: a file name for one input
        (`result.png`, `clip.mp4`), else a directory (`NAME.stylized.png`); stylised images are always
        written, so `out` cannot be None. `save_every`: the optimisation's intermediate images too. `workers`:
        decoding threads, 1 unless given (None too: one optimisation at a time gains nothing from more)."""
        from cvtool.io.inputs import is_single_file
        from cvtool.io.outputs import check_out_dir, one_input_for_file

        if out is None:
            raise UsageError("Stylizer.run writes the stylised images: give out (a folder, or a file for one input)")
        out = Path(out)
        workers = 1 if workers is None else workers
        single_file = is_single_file(out)
        if single_file:
            from cvtool.io.inputs import InputItem, expand_inputs

            specs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
            items = [i for spec in specs for i in ([spec] if isinstance(spec, InputItem)
                                                  else expand_inputs([str(spec)], recursive=recursive)[0])]
            inputs = one_input_for_file(out, items)
        else:
            check_out_dir(out)
        pipeline = self._make_pipeline(out, single_file=single_file, save_every=save_every)
        return _run_batch(pipeline, inputs, StylizeResult, recursive=recursive, out_dir=out,
                          batch_size=batch_size, workers=workers, skip_existing=skip_existing, vid_stride=vid_stride,
                          buffer=buffer, on_skip=on_skip, lock=self._lock, also_protect=self._style_paths,
                          shard=shard, records=records)


class LandmarksResult(Result):
    @property
    def faces(self) -> list[dict]:
        """Per face: its box, the detector's score (None without detection) and its points."""
        return self.result["faces"]

    @property
    def points(self) -> np.ndarray:
        """F x N x 2 float32 (x, y) in the input's own pixels, one row per face."""
        n = len(self.result["names"])
        return np.array([f["points"] for f in self.faces], np.float32).reshape(-1, n, 2)

    @property
    def boxes(self) -> np.ndarray:
        return np.array([f["box"] for f in self.faces], np.float32).reshape(-1, 4)


_L = LANDMARKS.defaults(route="api")


class LandmarkDetector(_Task[LandmarksResult]):
    """N (x, y) points per face (dlib's CNN face detector, then the network on each face's crop) or per image:
    a `cvtool train landmarks` checkpoint (`LandmarkDetector(weights="runs/helen/best.pt")`). `no_detect=True`
    takes each image as one crop. `points_for(image, boxes)`: the points of faces whose boxes you have."""

    spec = LANDMARKS
    result_type = LandmarksResult

    def __init__(self, model: str | None = None, *, weights: str | Path | None = None,
                 no_detect: bool = _L["no_detect"], detector: str = _L["detector"], min_face: float = _L["min_face"],
                 max_faces: int = _L["max_faces"], save_pts: bool = _L["save_pts"], device: str = _L["device"],
                 backend: str = _L["backend"], max_pixels: int = _L["max_pixels"], progress: bool = False,
                 on_export: Callable[[Path], None] | None = None, threads: int | None = _L["threads"],
                 half: bool = _L["half"]):
        from cvtool.models.landmark_net import BOX_FIT_FIELD, REGION_FIELD, landmark_fields
        from cvtool.pipelines.face import face_detector_entry

        options = self._call_options(dict(no_detect=no_detect, min_face=min_face, max_faces=max_faces,
                                          save_pts=save_pts, max_pixels=max_pixels, threads=threads))
        detector_entry = face_detector_entry(detector)  # an unknown detector is one line before any model loads
        loaded = _load(model, task=self.spec.name, default=self.spec.default_model, weights=weights, device=device,
                       backend=backend, progress=progress, on_export=on_export, threads=threads, half=half)
        self.face_detector = None
        fields = landmark_fields(loaded)
        if not no_detect and (fields[REGION_FIELD] or "box") == "box" and fields[BOX_FIT_FIELD]:
            from cvtool.models.face_detectors import FaceDetectorOptions, make_face_detector

            self.face_detector = make_face_detector(detector_entry, FaceDetectorOptions(
                device=loaded.device, backend=loaded.backend, min_face=min_face, on_export=on_export))
        super().__init__(loaded, options)

    def _make_pipeline(self, out_dir):
        from cvtool.pipelines.landmarks import LandmarksPipeline

        o = self.options
        return LandmarksPipeline(self.loaded, face_detector=self.face_detector, no_detect=o["no_detect"],
                                 max_faces=o["max_faces"], save_pts=o["save_pts"], max_pixels=o["max_pixels"],
                                 out_dir=out_dir)

    @property
    def layout(self):
        """The points' layout (cvtool.ops.landmarks.Layout): their number, flip pairs, the error's normaliser."""
        return self._pipeline.layout

    def points_for(self, image: ImageSource, boxes, *, reference: bool = False) -> np.ndarray:
        """F x N x 2 points of the faces in `boxes` (x1, y1, x2, y2 each): a face detector's boxes, mapped by the
        checkpoint's fit as a call maps them, or with `reference=True` boxes in the training convention (the
        points' own bounding box)."""
        pipeline = self._pipeline
        rgb = load_image(image, max_pixels=self.max_pixels)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not reference and pipeline.box_fit is None:
            raise UsageError(f"{self.loaded.weights_path}: no face-detector fit in this checkpoint; give "
                             "reference=True boxes")
        matrices = [pipeline.crop_for_reference(b) if reference else pipeline.crop_for(b) for b in boxes]
        with self._lock:
            return pipeline.points_in(rgb, matrices)


class FaceVerifier:
    """Face verification, identification and calibration on dlib's models ported to PyTorch (offline).

        fv = cvtool.FaceVerifier()                  # or weights="runs/faces/best.pt", detector="haar"
        fv.verify("a.jpg", "b.jpg").same            # the record `cvtool verify-face a.jpg b.jpg` prints
        fv.faces(img)                               # every face: box, score, 5 landmarks, descriptor
        fv.embed(img)                               # the 128-D descriptor of the image's main face
        known = fv.gallery("known/")                # known/alice.jpg or known/alice/*.jpg
        fv.identify(img, known)                     # every face named, or "unknown"
        fv.calibrate([("a.jpg", "b.jpg", True), ...])  # the threshold that fits your photos
    """

    spec = VERIFY_FACE
    task = "verify-face"

    def __init__(self, model: str | None = None, *, weights: str | Path | None = None, detector: str = _V["detector"],
                 upsample: int | None = _V["upsample"], min_face: float = _V["min_face"],
                 threshold: float | None = _V["threshold"], device: str = _V["device"], backend: str = _V["backend"],
                 max_pixels: int = _V["max_pixels"], progress: bool = False,
                 on_export: Callable[[Path], None] | None = None, threads: int | None = _V["threads"],
                 half: bool = _V["half"]):
        from cvtool.pipelines import face as task

        self.spec.options.check(dict(upsample=upsample, min_face=min_face, threshold=threshold,
                                     max_pixels=max_pixels, threads=threads))
        task.face_detector_entry(detector)  # an unknown detector is one line before any model loads
        self.loaded = _load(model, task="face-embed", weights=weights, device=device, backend=backend,
                            default=self.spec.default_model, progress=progress, on_export=on_export, threads=threads,
                            half=half)
        self.engine = task.FaceEngine(self.loaded, detector=detector, upsample=upsample, threshold=threshold,
                                      max_pixels=max_pixels, min_face=min_face, on_export=on_export)
        self._lock = threading.Lock()

    @property
    def threshold(self) -> float:
        return self.engine.threshold

    @property
    def name(self) -> str:
        return self.loaded.name

    def describe(self) -> str:
        return describe_loaded(self.loaded)

    def __repr__(self) -> str:
        return f"FaceVerifier({self.describe()}, detector {self.engine.detector_name}, threshold {self.threshold})"

    def verify(self, a: ImageSource, b: ImageSource, *, index_a: int | None = None,
               index_b: int | None = None) -> VerifyResult:
        """Are A and B the same person? A missing or ambiguous face raises InputError, never a guess."""
        from cvtool.pipelines import face as task

        with self._lock:
            record = task.verify(self.engine, a, b, index_a=index_a, index_b=index_b)
        return VerifyResult(record)

    def faces(self, image: ImageSource) -> list:
        """Every face found, left to right: `Face(box, score, landmarks, descriptor)`."""
        rgb = load_image(image, max_pixels=self.engine.max_pixels)
        with self._lock:
            return self.engine.analyse([rgb])[0]

    def embed(self, image: ImageSource, *, index: int | None = None) -> np.ndarray:
        """The descriptor of the image's face (the clearly largest, or `index`), as `verify` picks it (and
        searched for as `verify` searches: without `index`, only as far as the choice needs)."""
        from cvtool.pipelines import face as task

        name = _name_of(image) or "<image>"
        rgb = load_image(image, max_pixels=self.engine.max_pixels)
        with self._lock:
            faces = self.engine.find_main(rgb, name)[0] if index is None else self.engine.find([rgb], [name])[0]
            face = task.choose_face(faces, index, name)
            self.engine.describe([rgb], [[face]], [name])
        assert face.descriptor is not None  # describe() gives every face it is handed a descriptor
        return face.descriptor

    def gallery(self, root: str | Path, *, warn: Callable[[str], None] | None = None):
        """Known people from `root` (one photo per person, or a folder per person); cached on disk."""
        from cvtool.pipelines import face as task

        with self._lock:
            return task.load_gallery(self.engine, root, warn=warn)

    def identify(self, image: ImageSource, gallery) -> Result:
        """Every face in `image` named after the nearest known person within the threshold, or "unknown"."""
        from cvtool.pipelines.face import IdentifyPipeline
        from cvtool.pipelines.base import result_record

        pipeline = IdentifyPipeline(self.engine, gallery)
        start = time.perf_counter()
        rgb = load_image(image, max_pixels=self.engine.max_pixels)
        sample = pipeline.prepare_array(rgb)
        with self._lock:
            result = pipeline.predict([sample])[0]
        record = result_record(pipeline, _name_of(image), (time.perf_counter() - start) * 1000, result)
        return Result(record, rgb, lambda img: pipeline.render(img, sample, result))

    def calibrate(self, pairs: str | Path | Sequence[tuple[ImageSource, ImageSource, bool]]) -> dict:
        """The threshold that maximises accuracy on labelled pairs (a CSV path_a,path_b,same, or tuples)."""
        from cvtool.pipelines import face as task

        if isinstance(pairs, (str, Path)):
            pairs = task.read_pairs(pairs)
        with self._lock:
            return task.calibrate(self.engine, list(pairs))

    def save_pair(self, result: VerifyResult, out: str | Path) -> list[str]:
        """The two faces of a verification, annotated, into `out`."""
        from cvtool.pipelines import face as task

        return task.save_pair(result.record, self.engine, Path(out))

    def run(self, inputs, gallery, *, out: str | Path | None = None, recursive: bool = False,
            batch_size: int = _V["batch_size"],
            workers: int | None = None, skip_existing: bool = False, vid_stride: int = 1,
            buffer: bool | None = BUFFER.default,
            on_skip: Callable[[str], None] | None = None, shard: tuple[int, int] | None = None,
            records: str | Path | Any = None) -> Iterator[Result]:
        """Identify every face in a batch of images/videos against `gallery`, as `verify-face --gallery` does
        (`shard`, `records`: as in `Classifier.run`)."""
        from cvtool.io.outputs import check_out_dir
        from cvtool.pipelines.face import IdentifyPipeline

        out_dir = Path(out) if out is not None else None
        check_out_dir(out_dir, skip_existing=skip_existing)
        return _run_batch(IdentifyPipeline(self.engine, gallery, out_dir=out_dir), inputs, Result, recursive=recursive,
                          out_dir=out_dir, batch_size=batch_size, workers=_workers(workers, self.loaded, shard),
                          skip_existing=skip_existing, vid_stride=vid_stride, buffer=buffer, on_skip=on_skip,
                          lock=self._lock, shard=shard, records=records)

    columns = list(VERIFY_FACE.columns)  # the gallery batch's table; a pair's is VERIFY_FACE.tables["pair"]
    extra_formats = None

    @staticmethod
    def rows(result: dict) -> list[list]:
        return VERIFY_FACE.rows(result)


# -- models and export -----------------------------------------------------------------------------

def list_models(task: str | None = None) -> list[dict]:
    """Every registered model (optionally of one task): name, task, size, weights source, licence, cached."""
    from cvtool.models import catalogue

    return catalogue.describe_all(task)


def export_onnx(target: str | Path, out: str | Path | None = None, *, weights: str | Path | None = None,
           img_size: int | None = None, dynamic_batch: bool = False, opset: int | None = None,
           tolerance: float = 1e-4, half: bool = False, int8: bool = False, calibration: str | Path | None = None,
           on_start: Callable[[str], None] | None = None) -> dict:
    """Export a model name (its default weights, or `weights`) or a checkpoint to ONNX, checked against
    PyTorch with onnxruntime before anything is written. Returns the report (path, max_abs_diff, ...).

    `half` (fp16) or `int8` (static quantisation calibrated on the images in `calibration`): checked by the
    task's agreement with PyTorch (top-1, pixels, box IoU, embedding distance) and refused below its bar."""
    from cvtool import export as exporter
    from cvtool.io.outputs import check_writable

    if out is not None:  # before the minutes an export can take
        check_writable(out, f"--out {out}")
    loaded = exporter.load_target(str(target), Path(weights) if weights is not None else None)
    target_path = Path(out) if out is not None else exporter.default_out(str(target), loaded)
    if out is None:
        check_writable(target_path, f"{target_path}")
    for source in (target, weights):  # inputs are never overwritten: `--out best.pt` for best.pt is refused
        if source is not None and Path(source).is_file() and Path(source).resolve() == target_path.resolve():
            raise UsageError(f"--out {target_path} is the weights file being exported; choose another file")
    if on_start is not None:
        on_start(f"exporting {loaded.name} (weights sha256 {loaded.weights_sha256[:12]}) to {target_path}")
    return exporter.export_model(loaded, target_path, img_size=img_size, dynamic_batch=dynamic_batch,
                                 opset=opset, tolerance=tolerance, half=half, int8=int8, calibration=calibration)
