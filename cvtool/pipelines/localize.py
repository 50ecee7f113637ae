"""Classification with localisation: one box, class and Pc per image (`cvtool localize`).

The record's result: `size` [h, w]; the network's answer whatever Pc is (`pc`, `label`, `index`, `class_prob`,
`box` x1 y1 x2 y2 in the input's own pixels); and `detections`, as `cvtool detect` has them: that one box when
Pc >= --conf (its score is Pc), else none. So -f coco / -f yolo, --out's annotated images and the detection
tooling read it as they read a detector's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvtool.io.image import DEFAULT_MAX_PIXELS, read_image, write_image
from cvtool.io.outputs import OutputNamer
from cvtool.io.render import draw_detections
from cvtool.models.loading import LoadedModel
from cvtool.tasks.localize import DEFAULT_CONF


def localization_result(decoded: dict, k: int, size: tuple[int, int], classes: list[str], conf: float) -> dict:
    """Image `k` of `decode`'s output (cvtool.models.localizer) as its record's result, in pixels of an h x w image."""
    h, w = size
    pc, index = float(decoded["pc"][k]), int(decoded["class"][k])
    x1, y1, x2, y2 = (float(v) for v in decoded["box"][k] * np.array([w, h, w, h], dtype=np.float64))
    box = [round(v, 2) for v in (x1, y1, x2, y2)]
    result = {"size": [h, w], "pc": round(pc, 4), "label": classes[index], "index": index,
              "class_prob": round(float(decoded["class_probs"][k][index]), 4), "box": box}
    found = pc >= conf
    result["detections"] = [{"label": classes[index], "index": index, "score": result["pc"], "box": box}] if found else []
    return result


class LocalizePipeline:
    task = "localize"
    no_video_reason = None  # takes videos: the hooks below

    def __init__(self, model: LoadedModel, *, conf: float = DEFAULT_CONF, max_pixels: int = DEFAULT_MAX_PIXELS,
                 out_dir=None):
        self.model, self.model_name, self.weights_sha256 = model, model.name, model.weights_sha256
        self.conf, self.max_pixels = conf, max_pixels
        self.output_name = OutputNamer(out_dir, ".localize.jpg") if out_dir is not None else None
        self.video_name = OutputNamer(out_dir, ".localize.mp4") if out_dir is not None else None

    def prepare(self, path: str):
        return self.prepare_array(read_image(path, max_pixels=self.max_pixels))

    def prepare_array(self, rgb: np.ndarray):
        """(the RGB image, the network's input: the whole image stretched to the model's square)."""
        return rgb, self.model.preprocess(rgb)

    def predict(self, samples: list) -> list[dict]:
        from cvtool.models.localizer import decode

        batch = np.stack([s[1] for s in samples])
        if self.model.runs_on_arrays:  # onnxruntime
            raw = self.model.module.run(batch)[0]
        else:
            import torch

            from cvtool.device import to_device

            with torch.inference_mode():
                raw = self.model.forward(to_device(batch, self.model.device)).float().cpu().numpy()
        decoded = decode(raw)
        return [localization_result(decoded, k, s[0].shape[:2], self.model.classes, self.conf)
                for k, s in enumerate(samples)]

    def render(self, rgb: np.ndarray, sample, result: dict) -> np.ndarray:
        return draw_detections(rgb, result["detections"])

    def save(self, path: str, sample, result: dict, out_dir: Path) -> list[str]:
        target = self.output_name(path)
        write_image(target, self.render(sample[0], sample, result))
        return [str(target)]

    def save_frame(self, path: str, index: int, rgb: np.ndarray, sample, result: dict) -> list[str]:
        return []  # a frame's record is all

    def already_done(self, path: str) -> bool:
        return self.output_name is not None and self.output_name.exists(path)
