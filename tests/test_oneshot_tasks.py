"""classify, detect and segment on an exported model without torch (issue 18): `--weights x.onnx` (and
`--backend auto` once `--backend onnxruntime` cached an export) runs on NumPy and onnxruntime from end to end,
in a process that never imports torch or torchvision, and gives the torch backend's records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import IMPORT_REPORTER, SAMPLES

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
DIGITS = sorted((SAMPLES / "digits").glob("digit_*.png"))[:4]
PHOTOS = [SAMPLES / "photos" / "astronaut.jpg", SAMPLES / "photos" / "chelsea.jpg"]

WRAPPER = IMPORT_REPORTER


def run_wrapped(*args: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    marker = [line for line in done.stderr.splitlines() if line.startswith("IMPORTED:")]
    assert marker, done.stderr
    return done, [m for m in marker[-1][len("IMPORTED:"):].split(",") if m]


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def torch_records(task, images, **options) -> list[dict]:
    """The same inputs through the PyTorch backend (the API the CLI wraps, in this process)."""
    return [r.to_dict() for r in task(device="cpu", backend="torch", **options).run([str(p) for p in images])]


def test_classify_with_an_onnx_file_imports_no_torch_and_gives_the_torch_records(tmp_path):
    import cvtool

    onnx_file = tmp_path / "lenet5_digits.onnx"
    cvtool.export_onnx("lenet5_digits", onnx_file, dynamic_batch=True)
    done, imported = run_wrapped("classify", *DIGITS, "--weights", onnx_file, "--backend", "auto", "-f", "jsonl",
                                 "--threads", "1", "-k", "3", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert imported == []
    assert "lenet5_digits on onnxruntime, weights lenet5_digits.onnx" in done.stderr
    fast = records(done.stdout)
    slow = torch_records(cvtool.Classifier, DIGITS, model="lenet5_digits", top_k=3)
    assert len(fast) == len(slow) == len(DIGITS)
    for a, b in zip(fast, slow):
        assert a["path"] == b["path"] and a["model"] == b["model"] == "lenet5_digits"
        assert [t["label"] for t in a["result"]["top_k"]] == [t["label"] for t in b["result"]["top_k"]]
        np.testing.assert_allclose([t["prob"] for t in a["result"]["top_k"]],
                                   [t["prob"] for t in b["result"]["top_k"]], atol=1e-4)


def test_backend_auto_runs_a_cached_export_by_model_name_without_torch(tmp_path, monkeypatch):
    import cvtool

    monkeypatch.setenv("CVTOOL_CACHE", str(tmp_path / "cache"))  # nothing cached by other tests
    digit = DIGITS[0]
    before = cvtool.Classifier("lenet5_digits", device="cpu", backend="auto")  # nothing cached yet: PyTorch
    assert before.loaded.backend == "torch"
    cvtool.Classifier("lenet5_digits", device="cpu", backend="onnxruntime")  # exports into the cache
    done, imported = run_wrapped("classify", digit, "-m", "lenet5_digits", "--backend", "auto", "--device", "cpu",
                                 "-f", "jsonl")
    assert done.returncode == 0, done.stderr
    assert imported == []
    assert "lenet5_digits on onnxruntime (cached export)" in done.stderr
    (fast,) = records(done.stdout)
    asked, imported = run_wrapped("classify", digit, "-m", "lenet5_digits", "--backend", "onnxruntime", "--device",
                                  "cpu", "-f", "jsonl")  # asked for by name, the cached export is torch-free too
    assert asked.returncode == 0, asked.stderr
    assert imported == []
    assert records(asked.stdout)[0]["result"] == fast["result"]
    (slow,) = torch_records(cvtool.Classifier, [digit], model="lenet5_digits")
    assert fast["weights_sha256"] == slow["weights_sha256"]
    assert [t["label"] for t in fast["result"]["top_k"]] == [t["label"] for t in slow["result"]["top_k"]]


def measured_norms(model, example):
    """`model` with its batch norms' statistics measured on `example` (random images): with the default ones, a
    random network's features fade to ~1e-8, every detector score is 0.25 and every pixel one class; measured,
    scores and classes spread, so that thresholds, NMS, the score order and the argmax have something to decide."""
    import torch

    for norm in model.modules():
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
            norm.momentum = None  # a plain average of the batches seen
    with torch.no_grad():
        model.train()(example)
    return model.eval()


def save_spread_yolo(path: Path, classes: list[str]) -> Path:
    """conftest's random YOLO (width 4, 64 px, seed 0), its norms measured (see measured_norms)."""
    import torch

    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector

    torch.manual_seed(0)
    model = YoloDetector(num_classes=len(classes), width=4, img_size=64)
    with torch.no_grad():
        model.head.bias.zero_()
    measured_norms(model, torch.rand(8, 3, 64, 64))
    save_checkpoint(path, arch="yolo", task="detect", state_dict=model.state_dict(), classes=classes,
                    preprocess=YOLO_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"anchors": model.anchors.tolist(), "width": 4, "img_size": 64}})
    return path


def save_spread_unet(path: Path, classes: list[str]) -> Path:
    """conftest's small grey U-Net (width 4, depth 2, seed 0), its norms measured (see measured_norms)."""
    import torch

    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.unet import UNET_PREPROCESS, UNet

    torch.manual_seed(0)
    model = measured_norms(UNet(num_classes=len(classes), in_channels=1, width=4, depth=2), torch.randn(4, 1, 64, 64))
    save_checkpoint(path, arch="unet", task="segment", state_dict=model.state_dict(), classes=classes,
                    preprocess=UNET_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"width": 4, "depth": 2, "in_channels": 1}})
    return path


def test_detect_with_an_onnx_file_imports_no_torch_and_gives_the_torch_boxes(tmp_path):
    import cvtool

    checkpoint = save_spread_yolo(tmp_path / "yolo.pt", ["cat", "dog"])
    onnx_file = tmp_path / "yolo.onnx"
    cvtool.export_onnx(checkpoint, onnx_file, dynamic_batch=True)
    done, imported = run_wrapped("detect", *PHOTOS, "--weights", onnx_file, "--backend", "auto", "-f", "jsonl",
                                 "--conf", "0.1", "--classes", "cat,dog", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert imported == []
    assert "yolo on onnxruntime, weights yolo.onnx" in done.stderr
    fast = records(done.stdout)
    slow = torch_records(cvtool.Detector, PHOTOS, weights=checkpoint, conf=0.1, classes=["cat", "dog"])
    assert len(fast) == len(slow) == 2
    assert sum(len(r["result"]["detections"]) for r in slow) >= 20  # NMS had boxes to choose between
    for a, b in zip(fast, slow):
        assert a["result"]["size"] == b["result"]["size"]
        got, want = a["result"]["detections"], b["result"]["detections"]
        assert [d["label"] for d in got] == [d["label"] for d in want]
        # records round scores to 4 decimals and boxes to 2 (ops.boxes.detection_record): two backends whose
        # floats differ by less than the rounding can print values one step apart (99.40 vs 99.39 on an AVX2 CPU)
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in want], rtol=0, atol=1e-4 + 1e-9)
        np.testing.assert_allclose([d["box"] for d in got], [d["box"] for d in want], rtol=0, atol=1e-2 + 1e-9)
    from cvtool.device import CPU
    from cvtool.models.onnx_backend import open_onnx_array

    # the file says the threshold the detector's scores are made for; no registry entry is needed to know it
    assert open_onnx_array(onnx_file, task="detect", device=CPU).default_conf == 0.25


@pytest.mark.parametrize("tile", [None, "32"])
def test_segment_with_an_onnx_file_imports_no_torch_and_gives_the_torch_masks(tmp_path, tile):
    from PIL import Image

    import cvtool

    checkpoint = save_spread_unet(tmp_path / "unet.pt", ["background", "a", "b"])
    onnx_file = tmp_path / "unet.onnx"
    cvtool.export_onnx(checkpoint, onnx_file, dynamic_batch=True)
    images = [PHOTOS[1], DIGITS[0]]
    tiling = ["--tile", tile, "--overlap", "8"] if tile else []
    out = tmp_path / "masks"
    done, imported = run_wrapped("segment", *images, "--weights", onnx_file, "--backend", "auto", "-f", "jsonl",
                                 "--out", out, "--device", "cpu", *tiling)
    assert done.returncode == 0, done.stderr
    assert imported == []
    fast = records(done.stdout)
    options = {"tile": int(tile), "overlap": 8} if tile else {}
    segmenter = cvtool.Segmenter(weights=checkpoint, device="cpu", backend="torch", **options)
    for record, image in zip(fast, images):
        want = segmenter(str(image))
        mask = np.asarray(Image.open(record["outputs"][0]))  # the indexed mask PNG: class indices
        assert np.array_equal(mask, want.mask)
        assert len(np.unique(mask)) > 1
        assert record["result"] == want.to_dict()["result"]
