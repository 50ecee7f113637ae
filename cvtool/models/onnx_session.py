"""onnxruntime at the lowest level: sessions and the format constants of cvtool's ONNX files.

Everything that runs an ONNX graph (the exporter's check, `--backend onnxruntime`, `cvtool bench`)
makes its session here, so models/ never needs the export command to run a file.
"""

from __future__ import annotations

from pathlib import Path

from cvtool.device import CPU, Placement
from cvtool.errors import WeightsError

FORMAT = "cvtool-onnx"  # the "format" field of the metadata cvtool writes into every .onnx file
FORMAT_VERSION = 1
METADATA_KEY = "cvtool"  # the metadata_props key holding that JSON


def first_line(exc: BaseException) -> str:
    """An exception as one short line (onnxruntime's and the exporters' messages run to pages)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def make_session(model: bytes | str | Path, *, device: Placement | None = None, threads: int | None = None,
                 source: str | None = None, spin: bool = True):
    """An onnxruntime session on `device`'s providers (None: the CPU's): CUDA's when asked and this onnxruntime
    has them (cvtool.device.Placement.providers).

    `spin=False` stops its threads busy-waiting between runs (fairer when timing against PyTorch)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would land on our stderr
    if not threads:
        from cvtool.device import configured_threads

        threads = configured_threads()  # --threads / the process's share when sharded
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = (device or CPU).providers
    try:
        return ort.InferenceSession(str(model) if isinstance(model, Path) else model, options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's many failure types, one line each
        raise WeightsError(f"onnxruntime cannot load it ({first_line(exc)})", source) from None
