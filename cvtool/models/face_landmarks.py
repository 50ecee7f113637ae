"""`cvtool detect --model face`: dlib's CNN face detector with the 68 iBUG 300-W landmarks per face.

The seed's landmark detection (eye corners, brows, nose, lips, jaw), run through the ordinary detect
pipeline: boxes, scores and keypoints in the image's own pixels. Scores are the detector's margins
(above 0 is a face), not probabilities, so the entry's default --conf is 0.
The 68-point model's training data (iBUG 300-W) excludes commercial use; its licence says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cvtool.models.face_detectors import AutoScaledMmod, FaceDetectorOptions
from cvtool.models.face_mmod import MMOD_FILE, NUM_PARAMS, MmodFaceDetector, MmodNet, mmod_state_dict_from_dlib
from cvtool.models import contract
from cvtool.models.registry import ModelEntry, register
from cvtool.ops.preprocess import Preprocess

LANDMARKS = "68"


class FaceLandmarkDetector(nn.Module):
    """Holds the MMOD network's weights (the state_dict); the landmark forests load from their own cache."""

    def __init__(self, num_classes: int | None = None, upsample: int | None = None):
        super().__init__()
        self.mmod = MmodNet()
        self.upsample = upsample
        self._landmarks = None

    def detect_images(self, images: list[torch.Tensor]) -> list[dict]:
        """3 x H x W tensors in [0, 1] -> torchvision-style dicts with boxes, scores, labels and keypoints."""
        from cvtool.models.dlib.shape_predictor import load_shape_predictor

        if self._landmarks is None:
            self._landmarks = load_shape_predictor(LANDMARKS)
        # verify-face's search (upsample None: the scale that makes 40 px faces the CNN's 80 px, within its
        # pixel budget; N: every image doubled N times, as dlib does)
        detector = AutoScaledMmod(MmodFaceDetector(self.mmod), FaceDetectorOptions(upsample=self.upsample))
        rgbs = [(img.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy() for img in images]
        outputs = []
        for rgb in rgbs:
            found = detector.detect([rgb])[0]
            rects = np.array([f[:4] for f in found], dtype=np.float64).reshape(-1, 4)
            points = self._landmarks.predict(rgb, rects) if len(found) else np.zeros((0, 68, 2))
            # dlib's rectangles are inclusive; x2/y2 here are exclusive edges, as torchvision's
            boxes = torch.tensor(rects + np.array([0, 0, 1, 1]), dtype=torch.float32).reshape(-1, 4)
            keypoints = torch.cat([torch.as_tensor(np.asarray(points), dtype=torch.float32).reshape(-1, 68, 2),
                                   torch.ones(len(found), 68, 1)], dim=2)
            outputs.append({"boxes": boxes, "scores": torch.tensor([f[4] for f in found], dtype=torch.float32),
                            "labels": torch.zeros(len(found), dtype=torch.int64), "keypoints": keypoints})
        return outputs


def _state_dict_from_dlib(path: str | Path) -> dict:
    return {f"mmod.{k}": v for k, v in mmod_state_dict_from_dlib(path).items()}


def _register() -> None:
    from cvtool.models.dlib.convert import PackageModelWeights

    register(
        ModelEntry(
            name="face",
            task="detect",
            family="dlib",
            builder=FaceLandmarkDetector,
            preprocess=lambda: Preprocess(crop_size=None, resize_size=None, resize_mode="none"),
            classes=lambda: ["face"],
            weights=PackageModelWeights(MMOD_FILE, "dlib_mmod_face_detect", _state_dict_from_dlib),
            licence="CC0 (face_recognition_models); the 68-point landmarks' training data (iBUG 300-W) "
                    "excludes commercial use",
            description="faces (dlib's CNN detector) with 68 landmarks each: jaw, brows, nose, eyes, lips",
            num_params=NUM_PARAMS,
            head_is_classes=False,
            input_kind="raw_images",
            default_conf=0.0,  # MMOD margins: > 0 means face
            forward=contract.detect_images,
            export_refusal="its image pyramid and landmark forests are Python, not a graph; "
                           "`cvtool export dlib_mmod_face` exports its CNN",
        )
    )


_register()
