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
