"""Image classification: top-k labels and probabilities per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cvtool.io.atomic import atomic_write_text
from cvtool.io.image import DEFAULT_MAX_PIXELS, read_image
from cvtool.io.outputs import OutputNamer
from cvtool.io.render import draw_caption
from cvtool.models.loading import LoadedModel


class ClassifyPipeline:
    task = "classify"

    def __init__(self, model: LoadedModel, *, top_k: int = 5, max_pixels: int = DEFAULT_MAX_PIXELS, out_dir=None):
        self.model = model
        self.model_name = model.name
        self.weights_sha256 = model.weights_sha256
        self.top_k = max(1, min(top_k, len(model.classes)))
        self.max_pixels = max_pixels
        self.output_name = OutputNamer(out_dir, ".json") if out_dir is not None else None
        self.video_name = OutputNamer(out_dir, ".classify.mp4") if out_dir is not None else None

    def prepare(self, path: str) -> np.ndarray:
        return self.prepare_array(read_image(path, max_pixels=self.max_pixels))

    def prepare_array(self, rgb: np.ndarray) -> np.ndarray:
        return self.model.preprocess(rgb)

    def predict(self, samples: list[np.ndarray]) -> list[dict]:
        import torch

        batch = torch.from_numpy(np.stack(samples)).to(self.model.device, non_blocking=True)
        with torch.inference_mode():
            logits = self.model.module(batch)
            probs, indices = torch.softmax(logits.float(), dim=1).topk(self.top_k, dim=1)
        probs, indices = probs.cpu().tolist(), indices.cpu().tolist()
        return [
            {"top_k": [{"label": self.model.classes[i], "index": i, "prob": round(p, 6)} for p, i in zip(ps, ids)]}
            for ps, ids in zip(probs, indices)
        ]

    def save(self, path: str, sample, result: dict, out_dir: Path) -> list[str]:
        target = self.output_name(path)
        record = {"path": path, "task": self.task, "model": self.model_name, "result": result}
        atomic_write_text(target, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
        return [str(target)]

    def render(self, rgb: np.ndarray, sample, result: dict) -> np.ndarray:
        """A video frame with its top-1 label and probability written in the corner."""
        best = result["top_k"][0]
        return draw_caption(rgb, f"{best['label']} {best['prob']:.2f}")

    def already_done(self, path: str) -> bool:
        return self.output_name is not None and self.output_name.exists(path)


COLUMNS = ["rank", "label", "prob"]


def rows(result: dict) -> list[list]:
    return [[rank, entry["label"], entry["prob"]] for rank, entry in enumerate(result["top_k"], start=1)]
