"""`cvtool export`: a model as an ONNX file, checked against PyTorch before a byte of it is written.

The graph is the network as the pipelines call it: logits for classifiers and segmenters, the
stylised image for the style networks, and for our YOLO detector the head *with* its box decoding
(boxes in letterboxed pixels, objectness, class probabilities). Thresholds and non-max suppression
stay outside the graph, in the same post-processing the PyTorch backend uses. cvtool's metadata
(architecture, task, classes, preprocessing, source weights) travels inside the file, so
`--weights model.onnx` needs nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from cvtool.errors import EXIT_INPUT_FAILED, CvtoolError, UsageError

FORMAT = "cvtool-onnx"
FORMAT_VERSION = 1
DEFAULT_TOLERANCE = 1e-4  # max abs difference, as a fraction of the largest PyTorch output value
CHECK_SIZE = 256  # side of the check inputs for networks that take any size
_SCALE_FLOOR = 1e-12


class ExportCheckError(CvtoolError):
    """onnxruntime does not reproduce PyTorch within tolerance: the file is not written."""

    exit_code = EXIT_INPUT_FAILED


@dataclass
class ExportGraph:
    """What goes into the ONNX graph, and the input it takes."""

    module: object  # nn.Module: one float tensor B x C x H x W in, tensor(s) out
    channels: int
    size: tuple[int, int] | None  # fixed H, W; None: any size that is a multiple of `multiple`
    multiple: int
    outputs: list[str]
    preprocess: object  # Preprocess, as the exported graph expects it
    extra: dict = field(default_factory=dict)  # what running the graph needs beyond it (YOLO: img_size)


@dataclass
class Exported:
    data: bytes  # the serialised ONNX model, metadata included
    session: object  # onnxruntime.InferenceSession on `data`
    graph: ExportGraph
    report: dict


def _tensor_module(net):
    import torch

    class Network(torch.nn.Module):
        """The network with torchvision's {"out": ...} dict unwrapped (segmenters)."""

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            out = self.net(x)
            return out["out"] if isinstance(out, dict) else out

    return Network().eval()


def _yolo_module(net):
    import torch

    from cvtool.models.yolo import decode

    class Decoded(torch.nn.Module):
        """Head + decoding: (boxes B x N x 4 in letterboxed pixels, objectness B x N, class probs B x N x C)."""

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return decode(self.net(x), self.net.anchors)

    return Decoded().eval()


def _input_channels(net, preprocess) -> int:
    """The first convolution says how many channels the network takes (a colour U-Net, a grey LeNet)."""
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            return int(module.in_channels)
    return preprocess.channels


def graph_for(loaded, img_size: int | None = None) -> ExportGraph:
    """The exportable form of a loaded model (a `cvtool.models.loading.LoadedModel`)."""
    net, pre = loaded.module, loaded.preprocess
    channels = _input_channels(net, pre)
    if loaded.task == "detect":
        if not (hasattr(net, "detect_images") and hasattr(net, "anchors")):
            raise UsageError(f"{loaded.name}: only cvtool's YOLO detector exports to ONNX; torchvision's detectors "
                             "do not (their resizing and NMS are data-dependent Python)")
        from cvtool.models.yolo import STRIDE

        size = img_size or int(net.img_size)
        if size % STRIDE:
            raise UsageError(f"--img-size must be a multiple of {STRIDE} for {loaded.name}")
        return ExportGraph(_yolo_module(net), channels, (size, size), 1, ["boxes", "objectness", "class_probs"], pre,
                           {"img_size": size})
    if loaded.task == "classify":
        if img_size and pre.crop_size:  # keep the resize-to-crop ratio the weights were made with
            resize = round(img_size * (pre.resize_size or pre.crop_size) / pre.crop_size)
            pre = replace(pre, crop_size=img_size, resize_size=resize)
        size = img_size or pre.crop_size
        return ExportGraph(_tensor_module(net), channels, (size, size) if size else None, 1, ["logits"], pre)
    if loaded.task in ("segment", "stylize"):
        multiple = int(getattr(net, "size_multiple", 1))
        if img_size and img_size % multiple:
            raise UsageError(f"--img-size must be a multiple of {multiple} for {loaded.name}")
        name = "logits" if loaded.task == "segment" else "image"
        return ExportGraph(_tensor_module(net), channels, (img_size, img_size) if img_size else None, multiple, [name],
                           pre)
    if loaded.task == "face-embed":  # a face chip of a fixed size in, a descriptor out
        size = img_size or pre.crop_size or (pre.resize_size if pre.resize_mode == "exact" else None)
        return ExportGraph(_tensor_module(net), channels, (size, size) if size else None, 1, ["embedding"], pre)
    if loaded.task == "face-detect":  # the CNN over a pyramid canvas of any size -> score map; pyramid and NMS outside
        return ExportGraph(_tensor_module(net), channels, None, 1, ["scores"], pre)
    raise UsageError(f"{loaded.name}: {loaded.task} models do not export to ONNX yet")


def _sample_sizes(graph: ExportGraph) -> list[tuple[int, int]]:
    if graph.size is not None:
        return [graph.size]
    m = graph.multiple
    side = -(-CHECK_SIZE // m) * m
    return [(side, side + m * -(-32 // m)), (side, side)]  # non-square first: the export's example too


def _dynamic_axes(graph: ExportGraph, dynamic_batch: bool) -> list[int]:
    return ([0] if dynamic_batch else []) + ([2, 3] if graph.size is None else [])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def to_onnx(graph: ExportGraph, *, dynamic_batch: bool, opset: int | None = None):
    """(onnx.ModelProto, exporter name): torch.export-based (dynamo) first, the TorchScript exporter if that fails."""
    import torch

    h, w = _sample_sizes(graph)[0]
    example = torch.randn(2 if dynamic_batch else 1, graph.channels, h, w, generator=torch.Generator().manual_seed(1))
    axes = _dynamic_axes(graph, dynamic_batch)
    with _quiet():
        try:
            from torch.export import Dim

            program = torch.onnx.export(
                graph.module, (example,), dynamo=True, verbose=False, opset_version=opset,
                input_names=["input"], output_names=graph.outputs,
                dynamic_shapes=({axis: Dim.DYNAMIC for axis in axes},) if axes else None,
            )
            proto = program.model_proto
            if opset is not None and opset_of(proto) != opset:  # it converts down only where it can
                raise ValueError(f"it gives opset {opset_of(proto)}, not {opset}")
            return proto, "dynamo"
        except Exception as exc:  # noqa: BLE001 - any exporter failure means: try the other exporter
            dynamo_error = _first_line(exc)
        try:
            import onnx

            buffer = io.BytesIO()
            names = {0: "batch", 2: "height", 3: "width"}
            torch.onnx.export(
                graph.module, (example,), buffer, dynamo=False, opset_version=opset or 17,
                input_names=["input"], output_names=graph.outputs,
                dynamic_axes={"input": {a: names[a] for a in axes}} if axes else None,
            )
            return onnx.load_from_string(buffer.getvalue()), "torchscript"
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"cannot be exported to ONNX (dynamo exporter: {dynamo_error}; "
                             f"TorchScript exporter: {_first_line(exc)})") from None


@contextlib.contextmanager
def _quiet():
    """The exporters' progress prints, warnings and log records (tracebacks included) kept off our stdout/stderr:
    what matters reaches the user as the one-line error or the check's verdict."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL + 1)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def opset_of(proto) -> int | None:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def make_session(model: bytes | str | Path, *, device=None, threads: int | None = None, source: str | None = None,
                 spin: bool = True):
    """An onnxruntime session on the CPU, or on CUDA when asked and this onnxruntime has it.

    `spin=False` stops its threads busy-waiting between runs (fairer when timing against PyTorch)."""
    import onnxruntime as ort

    from cvtool.errors import WeightsError

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would land on our stderr
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UsageError("--device cuda with onnxruntime needs the onnxruntime-gpu package (this onnxruntime has "
                             f"{', '.join(ort.get_available_providers())})")
        providers = [("CUDAExecutionProvider", {"device_id": getattr(device, "index", None) or 0}), "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(model) if isinstance(model, Path) else model, options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's many failure types, one line each
        raise WeightsError(f"onnxruntime cannot load it ({_first_line(exc)})", source) from None


def check(graph: ExportGraph, session, *, dynamic_batch: bool, tolerance: float) -> dict:
    """Run PyTorch and onnxruntime on the same random inputs; raise ExportCheckError beyond tolerance.

    The difference is judged relative to the outputs' scale (the largest absolute PyTorch value of
    each output), so logits near 1e-3 and box corners near 300 pixels are held to the same standard.
    """
    import numpy as np
    import torch

    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(0)
    worst = {"max_abs_diff": 0.0, "relative": 0.0, "output_scale": 0.0}
    shapes = []
    for batch in (2, 3) if dynamic_batch else (1,):
        for h, w in _sample_sizes(graph):
            x = torch.randn(batch, graph.channels, h, w, generator=generator)
            with torch.inference_mode():
                expected = graph.module(x)
            expected = [t.numpy() for t in (expected if isinstance(expected, (tuple, list)) else (expected,))]
            try:
                got = session.run(None, {input_name: x.numpy()})
            except Exception as exc:  # noqa: BLE001
                raise ExportCheckError(f"onnxruntime fails on a {batch}x{graph.channels}x{h}x{w} input "
                                       f"({_first_line(exc)})") from None
            shapes.append([batch, graph.channels, h, w])
            for name, want, have in zip(graph.outputs, expected, got):
                if tuple(want.shape) != tuple(have.shape):
                    raise ExportCheckError(f"output {name} is {list(have.shape)} in onnxruntime but {list(want.shape)} "
                                           "in PyTorch")
                diff = float(np.max(np.abs(want.astype(np.float64) - have))) if want.size else 0.0
                scale = float(np.max(np.abs(want))) if want.size else 0.0
                relative = diff / max(scale, _SCALE_FLOOR)
                if not np.isfinite(diff) or relative > tolerance:
                    raise ExportCheckError(
                        f"onnxruntime differs from PyTorch on output {name}: max abs diff {diff:.3g} is "
                        f"{relative:.3g} of the output scale {scale:.3g}, above the tolerance {tolerance:g}; "
                        "nothing written")
                if relative >= worst["relative"]:
                    worst = {"max_abs_diff": diff, "relative": relative, "output_scale": scale}
    return {**worst, "tolerance": tolerance, "checked_inputs": shapes}


def metadata(loaded, graph: ExportGraph, *, dynamic_batch: bool, exporter: str) -> dict:
    from cvtool import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cvtool_version": __version__,
        "arch": loaded.name,
        "task": loaded.task,
        "classes": list(loaded.classes),
        "preprocess": graph.preprocess.to_dict(),
        "source_weights_sha256": loaded.weights_sha256,
        "input": {"channels": graph.channels, "size": list(graph.size) if graph.size else None,
                  "multiple": graph.multiple, "dynamic_batch": dynamic_batch},
        "outputs": graph.outputs,
        "exporter": exporter,
        **graph.extra,
    }


def export_checked(loaded, *, img_size: int | None = None, dynamic_batch: bool = False, opset: int | None = None,
                   tolerance: float = DEFAULT_TOLERANCE, threads: int | None = None) -> Exported:
    """Export a CPU model to ONNX in memory and check it; nothing touches the disk."""
    graph = graph_for(loaded, img_size)
    proto, exporter = to_onnx(graph, dynamic_batch=dynamic_batch, opset=opset)
    meta = metadata(loaded, graph, dynamic_batch=dynamic_batch, exporter=exporter)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "cvtool", json.dumps(meta)
    data = proto.SerializeToString()
    session = make_session(data, threads=threads)
    report = check(graph, session, dynamic_batch=dynamic_batch, tolerance=tolerance)
    report.update(exporter=exporter, opset=opset_of(proto), bytes=len(data))
    return Exported(data, session, graph, report)


def export_model(loaded, out: str | Path, **options) -> dict:
    """Export, check, and only then write `out` atomically; the report says how close onnxruntime came."""
    from cvtool.io.atomic import atomic_write_bytes

    exported = export_checked(loaded, **options)
    atomic_write_bytes(out, exported.data)
    return {"model": loaded.name, "path": str(out), **exported.report}


def load_target(target: str, weights: Path | None = None):
    """`MODEL` (its default weights, or --weights FILE) or a `CHECKPOINT` file, loaded on the CPU."""
    import torch

    from cvtool.models.loading import load_model

    path = Path(target)
    if weights is None and (path.is_file() or path.suffix in (".pt", ".pth", ".bin")):
        if path.suffix.lower() == ".onnx":
            raise UsageError(f"{target}: already an ONNX file")
        return load_model(None, task=None, weights=path, device=torch.device("cpu"))
    return load_model(target, task=None, weights=weights, device=torch.device("cpu"))


def default_out(target: str, loaded) -> Path:
    """Beside a checkpoint (best.pt -> best.onnx), else NAME.onnx in the working directory."""
    path = Path(target)
    return path.with_suffix(".onnx") if path.is_file() else Path(f"{loaded.name}.onnx")
