"""What every task's pipeline is (the Pipeline protocol) and the records it makes; shared by the image
runner (runner.py) and the video driver (video.py), which import this and not each other's internals."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol


class Pipeline(Protocol):
    # read-only members: an implementation may hold narrower values (max_pixels an int, no_video_reason None)
    @property
    def task(self) -> str: ...

    @property
    def model_name(self) -> str: ...

    @property
    def weights_sha256(self) -> str | None: ...

    @property
    def max_pixels(self) -> int | None:
        """The largest image, or video frame, it takes (--max-pixels)."""

    @property
    def no_video_reason(self) -> str | None:
        """None: it takes videos and cameras (a VideoPipeline); else the error a video gets."""

    def prepare(self, path: str) -> Any:
        """Decode and preprocess one input (runs in a worker thread); raise InputError when it is bad."""

    def predict(self, samples: list[Any]) -> list[dict]:
        """Run the model on a batch of prepared samples; one result dict per sample."""

    def save(self, path: str, sample: Any, result: dict, out_dir: Path) -> list[str]:
        """Write this input's outputs into `out_dir` atomically; return the files written."""

    def already_done(self, path: str) -> bool:
        """--skip-existing: this input's output is there (written by cvtool)."""


class VideoPipeline(Pipeline, Protocol):
    """The hooks video.py drives, declared by every pipeline whose `no_video_reason` is None."""

    @property
    def video_name(self) -> Callable[[str], Path] | None:
        """Where an input's annotated video goes; None without --out."""

    def prepare_array(self, rgb: Any) -> Any:
        """A decoded frame (RGB uint8), prepared as `prepare` prepares a file."""

    def render(self, rgb: Any, sample: Any, result: dict) -> Any:
        """The annotated frame (RGB uint8) that goes into the video."""

    def save_frame(self, path: str, index: int, rgb: Any, sample: Any, result: dict) -> list[str]:
        """Files of one frame beside the video (crops, masks, labels), written atomically; [] for none."""


def error_record(path: str, reason: str) -> dict:
    return {"path": path, "error": reason}


def result_record(pipeline: Pipeline, path: str | None, ms: float, result: dict, **fields) -> dict:
    """The record of one input (or one video frame: `fields` are then `frame` and `time_s`)."""
    return {"path": path, "task": pipeline.task, "model": pipeline.model_name,
            "weights_sha256": pipeline.weights_sha256, **fields, "ms": round(ms, 3), "result": result}
