"""The model registry: one entry per model name, carrying everything needed to run it.

An entry knows how to build its network, where its default weights come from, how images must be
preprocessed for them and what the outputs mean. Callers look models up by name; nothing else in
cvtool branches on model names.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from cvtool.errors import UsageError
from cvtool.models import contract

if TYPE_CHECKING:
    import torch.nn as nn

    from cvtool.ops.preprocess import Preprocess


class WeightsSource(Protocol):
    """Where a model's default weights live: a download (cached), or a file inside the package."""

    kind: str  # "download", "packaged", or "package" (a file from an installed package, converted)
    filename: str

    def is_available(self) -> bool:
        """True when the file is on this machine already (no network needed): local_file() exists."""

    def local_file(self) -> Path | None:
        """Where the file is or will be on this machine, found without fetching, converting or importing torch
        (None where it cannot be known); `cvtool models` checks it for its `on disk` column."""

    def local_path(self, *, offline: bool | None = None, progress: bool = True,
                   alternative: str | None = "--weights FILE") -> Path:
        """The weights file on disk, fetching it first if needed; errors offer `alternative` (the caller's
        option for giving the file instead, None when there is none)."""


@dataclass(frozen=True)
class DownloadedWeights:
    url: str
    sha256: str | None = None
    size_mb: float | None = None
    kind: str = "download"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def is_available(self) -> bool:
        return self.local_file().is_file()

    def local_file(self) -> Path:
        from cvtool.models import weights

        return weights.cached_path(self.url)

    def local_path(self, *, offline: bool | None = None, progress: bool = True,
                   alternative: str | None = "--weights FILE") -> Path:
        from cvtool.models import weights

        try:
            return weights.fetch(self.url, sha256=self.sha256, offline=offline, progress=progress,
                                 alternative=alternative)
        except weights.CorruptWeightsError as exc:  # the fix names the model these weights belong to
            model = next((e.name for e in _REGISTRY.values() if e.weights is self), None)
            raise (exc.for_model(model) if model else exc) from None


@dataclass(frozen=True)
class PackagedWeights:
    """Weights small enough to ship inside cvtool itself, so a fresh install works offline."""

    filename: str
    kind: str = "packaged"

    @property
    def path(self) -> Path:
        return Path(__file__).parent / "packaged" / self.filename

    def is_available(self) -> bool:
        return self.path.is_file()

    def local_file(self) -> Path:
        return self.path

    def local_path(self, *, offline: bool | None = None, progress: bool = True,
                   alternative: str | None = "--weights FILE") -> Path:
        return self.path


@dataclass(frozen=True)
class ModelEntry:
    """A named model: builder + default weights + preprocessing + labels + task + licence, and its contract:
    how it is fed, run and exported (see cvtool/models/contract.py). Callers read these fields; nothing
    probes a module for attributes or branches on its task to find out."""

    name: str
    task: str
    family: str
    builder: Callable[..., "nn.Module"] | None  # None: not a network (a classical detector, run by face_detector)
    preprocess: Callable[[], "Preprocess"]
    classes: Callable[[], list[str] | None]
    weights: WeightsSource | None = None
    licence: str = ""
    description: str = ""
    num_params: int | None = None
    build_kwargs: dict = field(default_factory=dict)
    # The last linear / 1x1-conv layer's outputs are the classes (true for classifiers and segmenters,
    # not for detectors, whose heads also regress boxes): lets a plain state_dict say its class count.
    head_is_classes: bool = True
    # -- the contract --
    input_kind: str = "image"  # one of contract.INPUT_KINDS
    # inputs must be a multiple of this on each side: an int, or a function of the built module (a U-Net's depth)
    size_multiple: int | Callable[["nn.Module"], int] = 1
    default_conf: float | None = None  # detectors: the score threshold their scores are made for
    forward: Callable = contract.call  # (module, inputs) -> the pipeline's outputs, PyTorch
    graph_forward: Callable = contract.call  # (onnx network, inputs) -> the same from the exported graph
    export: Callable | None = None  # (loaded, img_size) -> contract.ExportGraph; None: not exportable
    export_refusal: str = ""  # why not, when export is None
    # the plain conv/ReLU/pool stack perceptual losses read named layers from (Gatys stylize): VGGs; None: none
    feature_stack: Callable[["nn.Module"], "nn.Module"] | None = None
    # (loaded, rgb uint8) -> what `forward` takes for one image, made in the pipelines' decoding threads (our
    # YOLO letterboxes there), with a `shape` whose last two are the network input's height and width; None: the
    # pipeline's own [0, 1] tensor
    prepare_input: Callable | None = None
    # (loaded) -> the side of the square every image is letterboxed to (our YOLO), what its activations grow with;
    # None: the network takes each image at its own size (or resizes it itself)
    input_side: Callable | None = None
    # task "face-detect": (entry, models.face_detectors.FaceDetectorOptions) -> an object whose detect(list of
    # RGB uint8) gives per image [(left, top, right, bottom, score)], dlib-style inclusive boxes
    face_detector: Callable | None = None
    aliases: tuple[str, ...] = ()  # other names it answers to (`--detector mmod` for dlib_mmod_face)
    # -- training (`cvtool train`) --
    # the training arguments that are build options of this network, recorded in a checkpoint's arch_kwargs (the
    # U-Net's --width, --depth and --in-channels); () : none of them are
    train_build_options: tuple[str, ...] = ()
    # (preprocess(), build options) -> the preprocessing a network built with those options takes (a U-Net built
    # for 3 input channels reads colour); None: preprocess() whatever the options
    preprocess_for_build: Callable[["Preprocess", dict], "Preprocess"] | None = None
    # training pads every image to a multiple of this on each side; None: the built network's size_multiple
    train_multiple: int | None = None

    def __post_init__(self):
        if self.input_kind not in contract.INPUT_KINDS:
            raise ValueError(f"{self.name}: unknown input_kind {self.input_kind!r}")

    def check_network(self) -> None:
        """UsageError unless this entry is a network cvtool can build, load and export."""
        if self.builder is None:
            reason = self.export_refusal or "not a neural network"
            raise UsageError(f"model {self.name!r}: {reason}")

    def size_multiple_of(self, module) -> int:
        """The size multiple of a built module of this entry."""
        return int(self.size_multiple(module) if callable(self.size_multiple) else self.size_multiple)

    def train_preprocess(self, build_options: dict) -> "Preprocess":
        """The preprocessing of this network built with `build_options` (see preprocess_for_build)."""
        base = self.preprocess()
        return base if self.preprocess_for_build is None else self.preprocess_for_build(base, build_options)

    def train_multiple_of(self, **build_options) -> int:
        """The side multiple training pads images to, for this network built with `build_options`: train_multiple,
        else its size_multiple (a function of the module: read from one built on the meta device, no weights)."""
        if self.train_multiple is not None:
            return self.train_multiple
        if not callable(self.size_multiple):
            return int(self.size_multiple)
        import torch

        with torch.device("meta"):
            return self.size_multiple_of(self.build(**build_options))

    def build(self, num_classes: int | None = None, **overrides) -> "nn.Module":
        """`overrides`: architecture options a checkpoint recorded (e.g. a U-Net's width and depth)."""
        self.check_network()
        kwargs = {**self.build_kwargs, **overrides}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return self.builder(**kwargs)


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}  # alias -> name

# Modules whose import registers the built-in models, cheapest first. They are imported on demand,
# and only as far as a lookup needs: `--help` imports none, a LeNet-5 run never imports torchvision.
_BUILTIN_MODULES = [
    "cvtool.models.face_detectors",  # no torch: the cached-ONNX face chain looks its detector up here
    "cvtool.models.lenet",
    "cvtool.models.localizer",  # classification with localisation on a classifier backbone (torch only)
    "cvtool.models.unet",
    "cvtool.models.face_embedder",
    "cvtool.models.transformer_net",
    "cvtool.models.yolo",
    "cvtool.models.face_resnet",  # torch only: before torchvision's, so the face path never imports torchvision
    "cvtool.models.face_landmarks",
    "cvtool.models.landmark_net",  # torch; torchvision only when its backbone is one of torchvision's
    "cvtool.models.torchvision_classifiers",
    "cvtool.models.torchvision_segmenters",
    "cvtool.models.torchvision_detectors",
]
_loaded_modules: set[str] = set()


def register(entry: ModelEntry) -> ModelEntry:
    for name in (entry.name, *entry.aliases):
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    _ALIASES.update({alias: entry.name for alias in entry.aliases})
    return entry


def unregister(name: str) -> None:
    entry = _REGISTRY.pop(name, None)
    for alias in entry.aliases if entry else ():
        _ALIASES.pop(alias, None)


def _load_builtins(until: str | None = None) -> None:
    """Import built-in model modules until `until` is registered (all of them when None)."""
    for module in _BUILTIN_MODULES:
        if until is not None and (until in _REGISTRY or until in _ALIASES):
            return
        if module not in _loaded_modules:
            _loaded_modules.add(module)
            importlib.import_module(module)


def registered_names() -> list[str]:
    """The models registered in this process so far (built-in modules are imported on first lookup)."""
    return list(_REGISTRY)


def get_entry(name: str, task: str | None = None) -> ModelEntry:
    _load_builtins(until=name)
    entry = _REGISTRY.get(_ALIASES.get(name, name))
    if entry is None:
        close = difflib.get_close_matches(name, [*_REGISTRY, *_ALIASES], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `cvtool models`"
        raise UsageError(f"unknown model {name!r}{hint}")
    if task is not None and entry.task != task:
        raise UsageError(f"model {name!r} is a {entry.task} model, not a {task} model; see `cvtool models --task {task}`")
    return entry


def list_entries(task: str | None = None) -> list[ModelEntry]:
    """Every registered model, or those of `task` (an unknown task is a UsageError listing the known ones)."""
    _load_builtins()
    tasks = sorted({e.task for e in _REGISTRY.values()})
    if task is not None and task not in tasks:
        raise UsageError(f"unknown task {task!r}; the tasks: {', '.join(tasks)}")
    entries = [e for e in _REGISTRY.values() if task is None or e.task == task]
    return sorted(entries, key=lambda e: (e.task, e.family, e.name))
