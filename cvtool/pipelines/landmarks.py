"""Landmarks: N (x, y) points per face (or per image) from a `cvtool train landmarks` network.

Per image: the faces' boxes (dlib's CNN face detector, mapped to the boxes the network was trained on by the fit
its checkpoint carries), or the whole image (`no_detect`, or a model trained on whole images); each box's
square crop (cvtool.ops.landmarks) through the network in one batch; the points mapped back to the image's
pixels. The record: `{"size": [h, w], "names": [...], "faces": [{"box", "score", "points": [[x, y], ...]}]}`.
Importing this module imports no torch (the thin client draws and writes `--out` files with its functions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.errors import UsageError
from cvtool.io.atomic import atomic_write_text
from cvtool.io.image import DEFAULT_MAX_PIXELS, read_image, write_image
from cvtool.io.outputs import OutputNamer, refuse_overwriting_input
from cvtool.io.render import draw_detections
from cvtool.models.loading import LoadedModel
from cvtool.ops import landmarks as geo
from cvtool.tasks.landmarks import SPEC

_D = SPEC.defaults()


@dataclass
class Sample:
    rgb: np.ndarray


def whole_image_matrix(height: int, width: int, size: int, region: str) -> np.ndarray:
    """The crop of an image taken whole: a whole-image model's stretch (as it was trained), or for a face model
    the image as one face's crop (its larger side, centred)."""
    if region == "image":
        return np.array([[(size - 1) / max(1, width - 1), 0, 0], [0, (size - 1) / max(1, height - 1), 0]])
    return geo.crop_matrix((width - 1) / 2, (height - 1) / 2, max(height, width), size)


class LandmarksPipeline:
    task = "landmarks"
    no_video_reason = None  # takes videos: the hooks below

    def __init__(self, model: LoadedModel, *, face_detector=None, no_detect: bool = _D["no_detect"],
                 max_faces: int = _D["max_faces"], save_pts: bool = _D["save_pts"],
                 max_pixels: int = DEFAULT_MAX_PIXELS, out_dir=None):
        from cvtool.models.landmark_net import BOX_FIT_FIELD, LAYOUT_FIELD, REGION_FIELD, landmark_fields  # torch

        self.model, self.model_name, self.weights_sha256 = model, model.name, model.weights_sha256
        fields = landmark_fields(model)
        if fields[LAYOUT_FIELD] is None:
            raise UsageError(f"{model.weights_path}: not a `cvtool train landmarks` model (it names no point layout)")
        self.layout = geo.Layout.from_dict(fields[LAYOUT_FIELD])
        self.region = fields[REGION_FIELD] or "box"
        self.box_fit = geo.BoxFit.from_dict(fields[BOX_FIT_FIELD]) if fields[BOX_FIT_FIELD] else None
        self.detects = self.region == "box" and not no_detect
        if self.detects and (self.box_fit is None or face_detector is None):
            raise UsageError(f"{model.weights_path}: trained without measuring a face detector's boxes (--fit-faces "
                             "0, or no face found): give --no-detect (each image is one face's crop)")
        self.face_detector = face_detector if self.detects else None
        self.size = int(model.preprocess.crop_size)
        self.names = list(model.classes) if len(model.classes) == self.layout.num_points else [
            f"p{i}" for i in range(self.layout.num_points)]
        self.max_faces, self.save_pts, self.max_pixels = max_faces, save_pts, max_pixels
        self.output_name = OutputNamer(out_dir, ".landmarks.jpg") if out_dir is not None else None
        self.video_name = OutputNamer(out_dir, ".landmarks.mp4") if out_dir is not None else None

    def prepare(self, path: str) -> Sample:
        return self.prepare_array(read_image(path, max_pixels=self.max_pixels))

    def prepare_array(self, rgb: np.ndarray) -> Sample:
        return Sample(rgb)

    # -- boxes and crops ---------------------------------------------------------------------------------------
    def faces_of(self, rgb: np.ndarray) -> list[tuple[np.ndarray, float | None, tuple | None]]:
        """(crop matrix, detector score, detector box) per face: the detector's boxes (largest first), or the whole
        image (no score, no box)."""
        h, w = rgb.shape[:2]
        if not self.detects:
            return [(whole_image_matrix(h, w, self.size, self.region), None, None)]
        found = self.face_detector.detect([rgb])[0]
        boxes = [((float(f[0]), float(f[1]), float(f[2]) + 1, float(f[3]) + 1), float(f[4])) for f in found]
        boxes.sort(key=lambda b: -(b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))
        return [(self.crop_for(box), score, box) for box, score in boxes[: self.max_faces]]

    def crop_for(self, detector_box) -> np.ndarray:
        """The crop matrix of a face detector's box (x1, y1, x2, y2), through the checkpoint's box fit."""
        return geo.crop_matrix(*geo.crop_square(self.box_fit.reference_box(detector_box)), self.size)

    def crop_for_reference(self, box) -> np.ndarray:
        """The crop matrix of a reference box (the points' bounding-box convention the network was trained on)."""
        return geo.crop_matrix(*geo.crop_square(box), self.size)

    def points_in(self, rgb: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
        """F x N x 2 image pixels: the network on each crop, mapped back."""
        if not matrices:
            return np.zeros((0, self.layout.num_points, 2))
        crops = np.stack([self.model.preprocess(geo.warp(rgb, m, self.size)) for m in matrices])
        if self.model.runs_on_arrays:  # onnxruntime: NumPy from end to end
            outputs = np.asarray(self.model.module.run(crops.astype(np.float32))[0], np.float64)
        else:
            import torch

            from cvtool.device import to_device

            with torch.inference_mode():
                outputs = self.model.forward(to_device(crops, self.model.device)).float().cpu().numpy()
        return np.stack([geo.from_crop_fractions(out, m, self.size) for out, m in zip(outputs, matrices)])

    # -- the pipeline ----------------------------------------------------------------------------------------
    def predict(self, samples: list[Sample]) -> list[dict]:
        results = []
        for sample in samples:
            h, w = sample.rgb.shape[:2]
            faces = self.faces_of(sample.rgb)
            points = self.points_in(sample.rgb, [m for m, _, _ in faces])
            records = []
            for (matrix, score, box), pts in zip(faces, points):
                records.append({  # the detector's box (x2, y2 exclusive), else the points' bounding box
                    "box": [round(float(v), 2) for v in (box if box is not None else geo.points_box(pts))],
                    "score": None if score is None else round(score, 4),
                    "points": [[round(float(x), 2), round(float(y), 2)] for x, y in pts],
                })
            results.append({"size": [h, w], "names": self.names, "faces": records})
        return results

    def render(self, rgb: np.ndarray, sample, result: dict) -> np.ndarray:
        return draw_detections(rgb, as_detections(result))

    def save(self, path: str, sample: Sample, result: dict, out_dir: Path) -> list[str]:
        target = self.output_name(path)
        write_image(target, self.render(sample.rgb, sample, result))
        written = [str(target)]
        if self.save_pts:
            written += write_pts(str(target)[: -len(".landmarks.jpg")], result, path)
        return written

    def save_frame(self, path: str, index: int, rgb: np.ndarray, sample, result: dict) -> list[str]:
        if not self.save_pts:
            return []
        return write_pts(f"{str(self.video_name(path))[: -len('.landmarks.mp4')]}.f{index:06d}", result, path)

    def already_done(self, path: str) -> bool:
        return self.output_name is not None and self.output_name.exists(path)


def as_detections(result: dict) -> list[dict]:
    """The faces as detect's records (box, score, keypoints [x, y, 1]): what draw_detections draws (the 68 iBUG
    points with their outline)."""
    return [{"box": face["box"], "index": 0, "label": "face",
             "text": "face" if face["score"] is None else f"face {face['score']:.2f}",
             "score": face["score"] or 0.0, "keypoints": [[x, y, 1] for x, y in face["points"]]}
            for face in result["faces"]]


def write_pts(base: str, result: dict, path: str) -> list[str]:
    """--save-pts: BASE.faceNN.pts per face, iBUG's format (with its header)."""
    written = []
    for i, face in enumerate(result["faces"]):
        target = Path(f"{base}.face{i:02d}.pts")
        refuse_overwriting_input(target, path)
        atomic_write_text(target, geo.format_pts(np.asarray(face["points"], np.float64)))
        written.append(str(target))
    return written
