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
from typing import Callable

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
    from cvtool.version import __version__

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
        "default_conf": loaded.default_conf,  # detectors: the score threshold their scores are made for
        "decision_threshold": loaded.decision_threshold,  # two-class segmenters: class 1's probability threshold
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


# -- reduced precision: fp16 and INT8, checked by the agreement that matters for the task ---------------------

def _same_argmax(expected: list, got: list) -> float:
    """The fraction of positions along axis 0 (and any after axis 1) where the two outputs' argmax over axis 1
    (the classes) agree: inputs with the same top class, or pixels with the same class."""
    import numpy as np

    return float(np.mean(expected[0].argmax(1) == got[0].argmax(1)))


def _largest_distance(expected: list, got: list) -> float:
    """The largest Euclidean distance between the two outputs' embeddings of one input."""
    import numpy as np

    return float(np.max(np.linalg.norm(expected[0].reshape(len(expected[0]), -1)
                                       - got[0].reshape(len(got[0]), -1).astype(np.float32), axis=1)))


def _best_box_iou(expected: list, got: list) -> float:
    """Boxes B x N x 4, objectness B x N, class probabilities B x N x C (the same anchors on both sides): the mean
    IoU of each image's 100 best-scored boxes (PyTorch's scores) with the reduced model's boxes of those anchors."""
    import numpy as np

    boxes, objectness, probs = expected
    scores = objectness * probs.max(-1)  # yolo.box_scores' rule, on NumPy arrays
    ious = []
    for b in range(len(boxes)):
        top = np.argsort(-scores[b])[:100]
        ious.append(_paired_iou(boxes[b][top], got[0][b][top].astype(np.float32)))
    return float(np.mean(np.concatenate(ious)))


def _localized_box_iou(expected: list, got: list) -> float:
    """Localisers' raw [Pc, bx, by, bh, bw, c1..cn]: the mean IoU of the two outputs' decoded boxes, image by image."""
    from cvtool.models.localizer import box_iou, decode

    return float(box_iou(decode(expected[0])["box"], decode(got[0])["box"]).mean())


def _largest_point_error(expected: list, got: list) -> float:
    """Landmarks (B x 2N, fractions of the crop): the largest distance between the two outputs' points."""
    import numpy as np

    a = expected[0].reshape(len(expected[0]), -1, 2)
    b = got[0].reshape(len(got[0]), -1, 2).astype(np.float32)
    return float(np.max(np.linalg.norm(a - b, axis=2)))


@dataclass(frozen=True)
class Agreement:
    """How a task's reduced-precision export is checked against PyTorch (fp32): a measure of the two models'
    outputs on the same inputs, its name, and the bar it must reach."""

    bar: float
    measure: str  # what it measures, as the report and the refusal name it
    compute: Callable[[list, list], float]  # (PyTorch's outputs, the reduced model's) -> the measure
    lower_is_better: bool = False  # a distance: the bar is a ceiling

    def passes(self, value: float) -> bool:
        return value <= self.bar if self.lower_is_better else value >= self.bar


# One entry per task a reduced-precision export is made for: the least agreement with PyTorch it must reach.
AGREEMENTS = {
    "classify": Agreement(0.95, "top-1 agreement", _same_argmax),  # fraction of inputs with the same top class
    "segment": Agreement(0.95, "pixel agreement", _same_argmax),  # fraction of pixels with the same class
    "detect": Agreement(0.80, "box IoU", _best_box_iou),  # mean IoU of the 100 best-scored boxes, anchor by anchor
    "localize": Agreement(0.90, "box IoU", _localized_box_iou),  # mean IoU of each image's one box
    # at most a tenth of dlib's 0.6 threshold
    "face-embed": Agreement(0.06, "largest embedding distance", _largest_distance, lower_is_better=True),
    # a hundredth of the crop: about 1 px of a 128 px crop, a few percent of an inter-ocular distance
    "landmarks": Agreement(0.01, "largest point distance (fraction of the crop)", _largest_point_error,
                           lower_is_better=True),
}


def agreement(task: str, expected: list, got: list) -> float:
    """How well reduced-precision outputs agree with PyTorch's, in the measure of AGREEMENTS[task]."""
    if task not in AGREEMENTS:
        raise UsageError(f"--half/--int8: no agreement check for {task} models yet")
    return AGREEMENTS[task].compute(expected, got)


def _paired_iou(a, b):
    import numpy as np

    x1, y1 = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    x2, y2 = np.minimum(a[:, 2], b[:, 2]), np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: np.clip(z[:, 2] - z[:, 0], 0, None) * np.clip(z[:, 3] - z[:, 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def reduce_precision(exported: Exported, task: str, *, precision: str, inputs: list, threads: int | None = None) -> Exported:
    """The checked fp32 export as fp16 (weights and activations; float32 input and outputs kept) or INT8
    (onnxruntime's static QDQ quantisation, activations calibrated on `inputs`), then checked against PyTorch
    on `inputs` (1 x C x H x W arrays) by the task's agreement; below its bar: ExportCheckError, nothing written."""
    import os
    import tempfile

    import numpy as np
    import onnx
    import torch

    if task not in AGREEMENTS:
        raise UsageError(f"--{'half' if precision == 'fp16' else 'int8'}: no agreement check for {task} models yet "
                         f"({', '.join(AGREEMENTS)} only)")
    if not inputs:
        raise UsageError("no check inputs (give --calibration DIR with images)")
    proto = onnx.load_from_string(exported.data)
    with _quiet():
        if precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            reduced = convert_float_to_float16(proto, keep_io_types=True)
        else:
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

            input_name = proto.graph.input[0].name

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.items = iter(inputs)

                def get_next(self):
                    item = next(self.items, None)
                    return None if item is None else {input_name: item}

            with tempfile.TemporaryDirectory(prefix="cvtool-int8-") as tmp:
                source, target = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
                onnx.save(proto, source)
                try:  # reduce_range: 7-bit weights. CPUs without VNNI (AVX2) multiply u8 x s8 pairs with
                    # VPMADDUBSW, whose 16-bit sums saturate for 8-bit weights (255 x 127 x 2 > 32767): the same
                    # file gave top-1 agreement 0.925 there and 0.975 on an AVX512-VNNI CPU. With 7 bits the sums
                    # stay within 16 bits (255 x 64 x 2 < 32767), so every CPU computes the same integers
                    quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                    reduce_range=True, activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8)
                except Exception as exc:  # noqa: BLE001
                    raise ExportCheckError(f"onnxruntime cannot quantise it to INT8 ({first_line(exc)})") from None
                reduced = onnx.load(target)
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))
    meta["precision"] = precision
    del reduced.metadata_props[:]
    entry = reduced.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    data = reduced.SerializeToString()
    try:
        session = make_session(data, threads=threads)
    except Exception as exc:  # noqa: BLE001
        raise ExportCheckError(f"onnxruntime cannot run the {precision} model ({first_line(exc)})") from None
    name = session.get_inputs()[0].name
    expected, got = [], []
    for x in inputs:
        with torch.inference_mode():
            want = exported.graph.module(torch.from_numpy(x))
        expected.append([t.numpy() for t in (want if isinstance(want, (tuple, list)) else (want,))])
        got.append(session.run(None, {name: x}))
    stack = lambda outs: [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]  # noqa: E731
    check = AGREEMENTS[task]
    value = check.compute(stack(expected), stack(got))
    if not np.isfinite(value) or not check.passes(value):
        raise ExportCheckError(f"the {precision} model's {check.measure} with PyTorch is {value:.4f} on {len(inputs)} "
                               f"inputs, {'above' if check.lower_is_better else 'below'} the bar {check.bar:g}; "
                               "nothing written")
    report = {**exported.report, "precision": precision, "bytes": len(data), "fp32_bytes": len(exported.data),
              "agreement": {"measure": check.measure, "value": round(value, 4), "bar": check.bar,
                            "inputs": len(inputs)}}
    return Exported(data, session, exported.graph, report)
