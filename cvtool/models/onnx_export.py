"""Exporting a model to ONNX in memory, checked against PyTorch: the machinery under `cvtool export`,
`--backend onnxruntime` and `cvtool bench`.

The graph is what the registry entry's export hook builds (cvtool/models/contract.py): logits for
classifiers and segmenters, the stylised image for the style networks, for our YOLO detector the
head *with* its box decoding. Thresholds and non-max suppression stay outside the graph. cvtool's
metadata (architecture, task, classes, preprocessing, source weights) travels inside the file, so a
.onnx file needs nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass

from cvtool.errors import EXIT_INPUT_FAILED, CvtoolError, UsageError
from cvtool.models.contract import ExportGraph
from cvtool.models.onnx_session import FORMAT, FORMAT_VERSION, METADATA_KEY, first_line, make_session

DEFAULT_TOLERANCE = 1e-4  # max abs difference, as a fraction of the largest PyTorch output value
CHECK_SIZE = 256  # side of the check inputs for networks that take any size
_SCALE_FLOOR = 1e-12


class ExportCheckError(CvtoolError):
    """onnxruntime does not reproduce PyTorch within tolerance: the file is not written."""

    exit_code = EXIT_INPUT_FAILED


@dataclass
class Exported:
    data: bytes  # the serialised ONNX model, metadata included
    session: object  # onnxruntime.InferenceSession on `data`
    graph: ExportGraph
    report: dict


def graph_for(loaded, img_size: int | None = None) -> ExportGraph:
    """The exportable form of a loaded model (a `cvtool.models.loading.LoadedModel`): its entry's export hook."""
    entry = loaded.contract
    if entry.export is None:
        raise UsageError(f"{loaded.name}: {entry.export_refusal or f'{loaded.task} models do not export to ONNX yet'}")
    return entry.export(loaded, img_size)


def _sample_sizes(graph: ExportGraph) -> list[tuple[int, int]]:
    if graph.size is not None:
        return [graph.size]
    m = graph.multiple
    side = -(-CHECK_SIZE // m) * m
    return [(side, side + m * -(-32 // m)), (side, side)]  # non-square first: the export's example too


def _dynamic_axes(graph: ExportGraph, dynamic_batch: bool) -> list[int]:
    return ([0] if dynamic_batch else []) + ([2, 3] if graph.size is None else [])


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
            dynamo_error = first_line(exc)
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
                             f"TorchScript exporter: {first_line(exc)})") from None


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
                                       f"({first_line(exc)})") from None
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
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    data = proto.SerializeToString()
    session = make_session(data, threads=threads)
    report = check(graph, session, dynamic_batch=dynamic_batch, tolerance=tolerance)
    report.update(exporter=exporter, opset=opset_of(proto), bytes=len(data))
    return Exported(data, session, graph, report)
