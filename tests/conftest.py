"""Shared fixtures: the project's own sample images, small real checkpoints, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
SHARED = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def _converted_models_cache(tmp_path_factory) -> Path:
    """One cvtool cache per test session: dlib's models are converted once, never into the user's ~/.cache."""
    return tmp_path_factory.mktemp("cvtool_cache")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, _converted_models_cache):
    """Every test gets its own empty weights cache and never reaches a real download host."""
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("CVTOOL_CACHE", str(_converted_models_cache))
    monkeypatch.setenv("CVTOOL_NO_PROGRESS", "1")
    monkeypatch.delenv("CVTOOL_OFFLINE", raising=False)
    monkeypatch.delenv("CVTOOL_WEIGHTS_MIRROR", raising=False)


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None, cwd: Path | None = None):
    """Run the real `cvtool` in a subprocess, as a shell script would."""
    return subprocess.run(
        [sys.executable, "-m", "cvtool", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )


def invoke_cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The same command in this process (typer's CliRunner): returns what run_cli returns, without the
    ~3 s of importing torch per call. For tests where the separate process adds nothing; an exception
    that escapes the command is raised here rather than read as exit status 1."""
    from typer.testing import CliRunner

    from cvtool.cli import app

    result = CliRunner().invoke(app, list(args), input=stdin, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["cvtool", *args], result.exit_code, result.stdout, result.stderr)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def lenet_state_dict_file(tmp_path_factory) -> Path:
    """A plain state_dict of an untrained LeNet-5 (fixed seed)."""
    import torch

    from cvtool.models.lenet import LeNet5

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "lenet5_plain.pt"
    torch.save(LeNet5(num_classes=10).state_dict(), path)
    return path


def save_random_yolo(path: Path, classes: list[str]) -> Path:
    """Our YOLO-style detector (width 4, 64 px) with random weights (seed 0) as a cvtool checkpoint, the
    rare-object prior of its head undone so that random weights give boxes."""
    import torch

    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector

    torch.manual_seed(0)
    model = YoloDetector(num_classes=len(classes), width=4, img_size=64)
    with torch.no_grad():
        model.head.bias.zero_()
    save_checkpoint(path, arch="yolo", task="detect", state_dict=model.state_dict(), classes=classes,
                    preprocess=YOLO_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"anchors": model.anchors.tolist(), "width": 4, "img_size": 64}})
    return path


def save_random_unet(path: Path, classes: list[str], *, foreground_everywhere: bool = False) -> Path:
    """A small grey U-Net (width 4, depth 2, seed 0) as a cvtool checkpoint; `foreground_everywhere`: zero head
    weights and a bias favouring class 1, so every pixel has that known answer."""
    import torch

    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.unet import UNET_PREPROCESS, UNet

    torch.manual_seed(0)
    model = UNet(num_classes=len(classes), in_channels=1, width=4, depth=2)
    if foreground_everywhere:
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.copy_(torch.tensor([0.0, 1.0]))
    save_checkpoint(path, arch="unet", task="segment", state_dict=model.state_dict(), classes=classes,
                    preprocess=UNET_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"width": 4, "depth": 2, "in_channels": 1}})
    return path


@pytest.fixture(scope="session")
def yolo_checkpoint(tmp_path_factory) -> Path:
    """A random-weight YOLO detector of two classes, square and disk (the video and input-safety tests')."""
    return save_random_yolo(tmp_path_factory.mktemp("yolo") / "yolo.pt", ["square", "disk"])


@pytest.fixture(scope="session")
def unet_checkpoint(tmp_path_factory) -> Path:
    """A U-Net whose answer is "shape" everywhere, so overlays and class masks have a known answer."""
    return save_random_unet(tmp_path_factory.mktemp("unet") / "unet.pt", ["background", "shape"],
                            foreground_everywhere=True)


# Runs the real CLI in a fresh process (`python -c IMPORT_REPORTER ARGS`), then says on stderr whether torch or
# torchvision was imported along the way (test_oneshot*.py).
IMPORT_REPORTER = """
import sys
from cvtool.cli import main
sys.argv = ["cvtool"] + sys.argv[1:]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("IMPORTED:" + ",".join(m for m in ("torch", "torchvision") if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: on a loaded 2-core machine a second one mostly spins (CPU time,
    no speed). Modules ask for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
