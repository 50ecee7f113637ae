"""What every task's pipeline is (the Pipeline protocol) and the records it makes; shared by the image
runner (runner.py) and the video driver (video.py), which import this and not each other's internals."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Pipeline(Protocol):
    task: str
    model_name: str
    weights_sha256: str | None

    def prepare(self, path: str) -> Any:
        """Decode and preprocess one input (runs in a worker thread); raise InputError when it is bad."""

    def predict(self, samples: list[Any]) -> list[dict]:
        """Run the model on a batch of prepared samples; one result dict per sample."""

    def save(self, path: str, sample: Any, result: dict, out_dir: Path) -> list[str]:
        """Write this input's outputs into `out_dir` atomically; return the files written."""


def error_record(path: str, reason: str) -> dict:
    return {"path": path, "error": reason}


def result_record(pipeline: Pipeline, path: str, ms: float, result: dict, **fields) -> dict:
    """The record of one input (or one video frame: `fields` are then `frame` and `time_s`)."""
    return {"path": path, "task": pipeline.task, "model": pipeline.model_name,
            "weights_sha256": pipeline.weights_sha256, **fields, "ms": round(ms, 3), "result": result}
