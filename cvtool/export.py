"""`cvtool export`: a model as an ONNX file, checked against PyTorch before a byte of it is written.

The machinery (graph, exporters, check, metadata) is cvtool/models/onnx_export.py, shared with
`--backend onnxruntime` and `cvtool bench`; this module is the command: what to load, where to write.
"""

from __future__ import annotations

from pathlib import Path

from cvtool.errors import UsageError
from cvtool.models.contract import ExportGraph
from cvtool.models.onnx_export import (
    CHECK_SIZE,
    DEFAULT_TOLERANCE,
    ExportCheckError,
    Exported,
    check,
    export_checked,
    graph_for,
    metadata,
    opset_of,
    to_onnx,
)
from cvtool.models.onnx_session import FORMAT, FORMAT_VERSION, make_session

__all__ = ["CHECK_SIZE", "DEFAULT_TOLERANCE", "FORMAT", "FORMAT_VERSION", "ExportCheckError", "ExportGraph", "Exported",
           "check", "default_out", "export_checked", "export_model", "graph_for", "load_target", "make_session",
           "metadata", "opset_of", "to_onnx"]


def export_model(loaded, out: str | Path, *, half: bool = False, int8: bool = False,
                 calibration: str | Path | None = None, **options) -> dict:
    """Export, check, and only then write `out` atomically; the report says how close onnxruntime came.

    `half`: fp16 weights and activations; `int8`: onnxruntime's static quantisation, activations calibrated on
    the images in `calibration`. Either is checked against PyTorch by the task's agreement (top-1 agreement,
    pixel agreement, box IoU, embedding distance: AGREEMENTS) on the calibration images (fp16 without
    them: the random check inputs) and refused below its bar."""
    from cvtool.io.atomic import atomic_write_bytes
    from cvtool.models.onnx_export import reduce_precision

    if half and int8:
        raise UsageError("--half and --int8 are separate precisions; choose one")
    if int8 and calibration is None:
        raise UsageError("--int8 needs --calibration DIR: images like those the model will see (a few dozen)")
    exported = export_checked(loaded, **options)
    if half or int8:
        inputs = (calibration_inputs(exported.graph, loaded.task, calibration) if calibration is not None
                  else check_inputs(exported.graph))
        exported = reduce_precision(exported, loaded.task, precision="fp16" if half else "int8", inputs=inputs)
    atomic_write_bytes(out, exported.data)
    return {"model": loaded.name, "path": str(out), **exported.report}


CALIBRATION_LIMIT = 64  # images read from --calibration (sorted by name)


def calibration_inputs(graph: ExportGraph, task: str, folder: str | Path, limit: int = CALIBRATION_LIMIT) -> list:
    """The images of `folder` as the exported graph takes them, one 1 x C x H x W float32 array each:
    preprocessed as the model's preprocessing says, letterboxed for a detector, and brought to the graph's
    size (any-size graphs: CHECK_SIZE square, a multiple of theirs). An unreadable image is skipped."""
    import cv2
    import numpy as np

    from cvtool.errors import InputError
    from cvtool.io.image import IMAGE_SUFFIXES, read_image
    from cvtool.ops.letterbox import letterbox

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--calibration {folder}: not a directory")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    side = -(-CHECK_SIZE // graph.multiple) * graph.multiple
    h, w = graph.size or (side, side)
    inputs = []
    for path in paths:
        try:
            rgb = read_image(path)
        except InputError:
            continue
        if task == "detect":
            rgb = letterbox(rgb, max(h, w))[0]
        x = graph.preprocess(rgb)  # C x H' x W'
        if x.shape[1:] != (h, w):
            x = cv2.resize(x.transpose(1, 2, 0), (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, -1).transpose(2, 0, 1)
        inputs.append(np.ascontiguousarray(x[None], dtype=np.float32))
    if not inputs:
        raise UsageError(f"--calibration {folder}: no readable images")
    return inputs


def check_inputs(graph: ExportGraph, n: int = 8) -> list:
    """Without calibration images: the random inputs (fixed seed) the fp32 check uses, at the graph's size."""
    import numpy as np

    side = -(-CHECK_SIZE // graph.multiple) * graph.multiple
    h, w = graph.size or (side, side)
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, graph.channels, h, w)).astype(np.float32) for _ in range(n)]


def load_target(target: str, weights: Path | None = None):
    """`MODEL` (its default weights, or --weights FILE) or a `CHECKPOINT` file, loaded on the CPU."""
    from cvtool.device import CPU
    from cvtool.models.loading import load_model

    path = Path(target)
    if weights is None and (path.is_file() or path.suffix in (".pt", ".pth", ".bin")):
        if path.suffix.lower() == ".onnx":
            raise UsageError(f"{target}: already an ONNX file")
        return load_model(None, task=None, weights=path, device=CPU)
    return load_model(target, task=None, weights=weights, device=CPU)


def default_out(target: str, loaded) -> Path:
    """Beside a checkpoint (best.pt -> best.onnx), else NAME.onnx in the working directory."""
    path = Path(target)
    return path.with_suffix(".onnx") if path.is_file() else Path(f"{loaded.name}.onnx")
