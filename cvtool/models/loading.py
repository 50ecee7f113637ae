"""Turning a model name and/or a weights file into a ready-to-run network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cvtool.device import Placement
from cvtool.errors import UsageError, WeightsError
from cvtool.models.checkpoint import DECISION_THRESHOLD_FIELD
from cvtool.models.registry import ModelEntry, get_entry
from cvtool.ops.preprocess import Preprocess


@dataclass
class LoadedModel:
    name: str
    task: str
    module: object  # torch.nn.Module, in eval mode, on `device`
    preprocess: Preprocess
    classes: list[str]
    weights_path: str
    weights_sha256: str
    device: Placement  # where `module` runs and the pipelines put its inputs; on onnxruntime the CPU's
    meta: dict = field(default_factory=dict)  # a checkpoint's other fields (e.g. a face embedder's threshold)
    entry: ModelEntry | None = None  # the registry entry (looked up by `name` when not given)
    backend: str = "torch"  # "torch": `module` is the nn.Module; "onnxruntime": an onnx_backend.OnnxNetwork
    half: object = None  # --half: the torch dtype forward() autocasts to (cvtool.device.half_dtype); None: float32

    @property
    def contract(self) -> ModelEntry:
        """The registry entry: its declared input kind, size multiple, default confidence, forward and export."""
        if self.entry is None:
            self.entry = get_entry(self.name)
        return self.entry

    def forward(self, inputs):
        """What the pipelines call: the entry's forward adapter on this backend's network."""
        if self.backend != "torch":
            return self.contract.graph_forward(self.module, inputs)
        from cvtool.device import autocast

        with autocast(self.device, self.half):
            return self.contract.forward(self.module, inputs)

    @property
    def size_multiple(self) -> int:
        """Inputs must be a multiple of this on each side."""
        if self.backend == "torch":
            return self.contract.size_multiple_of(self.module)
        return self.module.size_multiple  # the exported graph's own, from its metadata

    def prepare_input(self, rgb):
        """One decoded image as this model's forward takes it (the entry's hook), or None: no own preparation."""
        hook = self.contract.prepare_input
        return None if hook is None else hook(self, rgb)

    @property
    def default_conf(self) -> float | None:
        """Detectors: the score threshold the entry declares for its scores (None: the caller's default).

        On onnxruntime, what the file's metadata says (`default_conf`), else the entry's when it is known
        already: an exported model is run without importing its entry's module (and torch with it); the one
        exported detector, our YOLO, declares the callers' default, 0.25."""
        if self.backend != "torch" and self.entry is None:
            return self.module.meta.get("default_conf")  # an OnnxNetwork
        return self.contract.default_conf

    @property
    def decision_threshold(self) -> float | None:
        """Two-class segmenters: the probability class 1 needs, as `train segment` chose it on its validation
        images and stored it in the checkpoint (on onnxruntime: the file's metadata); None: the plain argmax."""
        source = self.meta if self.backend == "torch" else self.module.meta  # an OnnxNetwork's file metadata
        value = source.get(DECISION_THRESHOLD_FIELD)
        return None if value is None else float(value)

    @property
    def runs_on_arrays(self) -> bool:
        """onnxruntime: the pipelines feed `module.run` NumPy arrays and post-process NumPy arrays, torch-free."""
        return self.backend == "onnxruntime"


def load_model(
    name: str | None,
    *,
    task: str,
    weights: str | Path | None = None,
    device=None,  # a cvtool.device.Placement (or a training recipe's torch.device); None: the CPU
    offline: bool | None = None,
    progress: bool = True,
    default: str | None = None,
    weights_option: str | None = "--weights FILE",
) -> LoadedModel:
    """Build `name` and load its weights: `weights` (a file) when given, else the entry's default weights.

    A cvtool checkpoint names its own architecture, classes and preprocessing, so `--weights FILE`
    alone is enough; a plain state_dict needs `--model` to say what it fits.
    """
    import torch

    from cvtool.models.checkpoint import apply_state_dict, load_weights_file

    if weights is not None:
        loaded = load_weights_file(weights)
        if name and loaded.arch and loaded.arch != name:
            raise UsageError(f"{weights}: checkpoint is for {loaded.arch!r}, not {name!r}; drop --model or pick {loaded.arch}")
        arch = loaded.arch or name  # never the default: guessing an architecture for a file misleads
        if arch is None:
            raise UsageError(f"{weights}: a plain state_dict does not say its architecture; add --model NAME")
        entry = get_entry(arch, task)
    else:
        entry = get_entry(name or default, task)
        entry.check_network()
        if entry.weights is None:
            raise WeightsError(f"{entry.name} has no default weights; pass --weights FILE (a checkpoint from `cvtool train`)")
        loaded = load_weights_file(entry.weights.local_path(offline=offline, progress=progress,
                                                            alternative=weights_option))

    num_classes = len(loaded.classes) if loaded.classes else None
    arch_kwargs = dict(loaded.meta.get("arch_kwargs") or {})
    with torch.device("meta"):  # shapes only: no time spent initialising weights about to be replaced
        module = entry.build(num_classes=num_classes, **arch_kwargs)
        head_size = _head_size(module, loaded.state_dict) if entry.head_is_classes else None
        if head_size is not None and num_classes is None and head_size != _head_size(module, module.state_dict()):
            module = entry.build(num_classes=head_size, **arch_kwargs)  # a plain state_dict fine-tuned for other classes
            num_classes = head_size
    apply_state_dict(module, loaded.state_dict, source=str(loaded.path), model_name=entry.name, assign=True)
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):  # non-persistent buffers: build for real
        module = entry.build(num_classes=num_classes, **arch_kwargs)
        apply_state_dict(module, loaded.state_dict, source=str(loaded.path), model_name=entry.name)
    classes = loaded.classes or entry.classes()
    n_outputs = _head_size(module, module.state_dict()) if entry.head_is_classes else None
    if not classes or (n_outputs is not None and len(classes) != n_outputs):
        classes = [f"class_{i}" for i in range(n_outputs or 0)]
    preprocess = Preprocess.from_dict(loaded.preprocess) if loaded.preprocess else entry.preprocess()
    device = Placement.of(device)
    module.eval().to(device.torch)
    return LoadedModel(
        name=entry.name,
        task=entry.task,
        module=module,
        preprocess=preprocess,
        classes=list(classes),
        weights_path=str(loaded.path),
        weights_sha256=loaded.sha256,
        device=device,
        meta=dict(loaded.meta),
        entry=entry,
    )


def _head_size(module, state_dict: dict) -> int | None:
    """The number of classes as `state_dict` has it: out-features of the last linear layer, or for
    fully convolutional networks (U-Net, segmenters) out-channels of the last 1x1 convolution."""
    import torch

    linear = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    pointwise = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    names = linear or pointwise
    if not names:
        return None
    weight = state_dict.get(f"{names[-1]}.weight")
    return None if weight is None else int(weight.shape[0])
