"""The Python API as a type checker sees it. cvtool ships `py.typed` (PEP 561), so mypy or pyright read its
annotations in a user's code; every call of a task object is typed with the task's own result class
(`Detector(...)("a.jpg").boxes` type-checks, and so does `for r in det.run(...): r.boxes`), and mypy finds no
error in the public modules themselves (PUBLIC_MODULES)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the dev extra")

ROOT = Path(__file__).resolve().parents[1]
# what a user imports: the task objects, training and validation entries, image loading, errors, scaling
PUBLIC_MODULES = ("__init__.py", "api.py", "train/__init__.py", "val.py", "io/image.py", "errors.py",
                  "scale/__init__.py", "scale/ray_data.py")

USER_SCRIPT = '''
from pathlib import Path

import numpy as np

import cvtool

det = cvtool.Detector("yolo")
reveal_type(det("a.jpg"))
reveal_type(det(["a.jpg", Path("b.png"), np.zeros((2, 2, 3), np.uint8)]))
paths: list[Path] = sorted(Path("photos").glob("*.jpg"))
reveal_type(det(paths))
reveal_type(det(("a.jpg", b"...")))
reveal_type(next(det.run(["photos/"], out="boxes/")))
reveal_type(next(det.stream("clip.mp4")))
boxes: np.ndarray = det("a.jpg").boxes
labels: list[str] = [r.labels[0] for r in det.run("photos/") if r.ok]
top: str = cvtool.Classifier("resnet18")(b"...").label
reveal_type(cvtool.Segmenter("unet")("a.png"))
mask = cvtool.Segmenter("unet")("a.png").mask
reveal_type(cvtool.Stylizer("fast_style")("a.jpg"))
reveal_type(cvtool.FaceVerifier().verify("a.jpg", "b.jpg"))
same: bool = cvtool.FaceVerifier().verify("a.jpg", "b.jpg").same
'''

EXPECTED = ["cvtool.api.DetectResult", "list[cvtool.api.DetectResult]", "list[cvtool.api.DetectResult]",
            "list[cvtool.api.DetectResult]", "cvtool.api.DetectResult",
            "cvtool.api.DetectResult", "cvtool.api.SegmentResult", "cvtool.api.StylizeResult",
            "cvtool.api.VerifyResult"]


def test_the_package_declares_itself_typed():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's TOML reader")
    assert (ROOT / "cvtool" / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["cvtool"]  # so wheels carry it


def test_a_users_script_sees_each_tasks_result_type_and_the_api_checks_clean(tmp_path, monkeypatch):
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    monkeypatch.setenv("MYPYPATH", str(ROOT))
    stdout, stderr, status = mypy_api.run([
        str(script), *(str(ROOT / "cvtool" / module) for module in PUBLIC_MODULES),
        "--follow-imports=silent", "--ignore-missing-imports", "--cache-dir", str(tmp_path / "cache"),
        "--python-version", "3.11"])
    lines = stdout.splitlines()
    errors = [line for line in lines if ": error:" in line]
    assert errors == [], stdout + stderr
    revealed = [re.search(r'Revealed type is "(.*)"', line).group(1).replace("builtins.", "")
                for line in lines if "Revealed type" in line]
    assert revealed == EXPECTED, stdout
    assert status == 0, stdout + stderr
