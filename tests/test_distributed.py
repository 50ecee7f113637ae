"""Data-parallel training under a real torchrun (2 processes, gloo on the CPU) against the single process.

With --batch-size the global batch, the engine gives rank r groups r, r+2, ... of every global batch
and each sample its own augmentation seed, so 2 processes of 4 take the very step 1 process of 8
takes: the parameters must agree to float rounding. The same run directory then resumes on 1 process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import cvtool.errors
import cvtool.train
from cvtool.train import distributed
from synthetic_shapes import write_shapes_folder


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m cvtool ARGS` (torchrun picks a free
    port itself), one thread per rank."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
         "-m", "cvtool", *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CVTOOL_NO_PROGRESS": "1"},
    )


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _assert_close(a: dict, b: dict, init: dict | None = None, rel: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key].double(), b[key].double()
        assert torch.linalg.norm(x - y) <= rel * max(torch.linalg.norm(x), 1e-12), key
        if init is not None and key in init:  # the step itself agrees, not just the (much larger) weights
            step = torch.linalg.norm(x - init[key].double())
            assert step > 0, key
            assert torch.linalg.norm(x - y) <= 1e-3 * step, key


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    # 8 training images: one global batch of 8 is one optimiser step
    return (write_shapes_folder(root / "train", {"circle": 3, "bar": 3, "cross": 2}, 0),
            write_shapes_folder(root / "val", {"circle": 1, "bar": 1, "cross": 1}, 1))


ARGS = dict(arch="lenet5", batch_size=8, lr=0.5, optimizer="sgd", weight_decay=0.0, device="cpu", seed=0)


@pytest.fixture(scope="module")
def two_process_run(shapes, tmp_path_factory):
    train, val = shapes
    out = tmp_path_factory.mktemp("runs") / "ddp"
    result = torchrun("train", "classify", str(train), "--val", str(val), "--arch", "lenet5", "--epochs", "1",
                      "--batch-size", "8", "--lr", "0.5", "--optimizer", "sgd", "--weight-decay", "0",
                      "--device", "cpu", "--out", str(out), "-f", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_two_processes_take_the_single_process_step(shapes, two_process_run, tmp_path):
    train, val = shapes
    out, result = two_process_run
    single = cvtool.train.classify(train, val=val, epochs=1, out=tmp_path / "single", **ARGS)
    from cvtool.models.registry import get_entry
    from cvtool.train.engine import seed_everything

    seed_everything(0)
    init = get_entry("lenet5", "classify").build(num_classes=3).state_dict()
    _assert_close(_params(out / "last.pt"), _params(tmp_path / "single" / "last.pt"), init)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_parallel"] == {"processes": 2, "backend": "gloo", "global_batch_size": 8,
                                        "per_process_batch_size": 4, "lr": 0.5, "sync_bn": False}
    assert single["data_parallel"]["processes"] == 1
    assert json.loads(result.stdout)["images"] == 3  # rank 0 alone printed the report, over the whole val set
    assert result.stdout.count('"accuracy"') == 1


def test_a_two_process_checkpoint_resumes_on_one_process(shapes, two_process_run, tmp_path):
    """Epoch 1 on 2 processes, then epoch 2 on 1 process = both epochs on 1 process (stopped and resumed
    the same way, so the learning-rate schedule, which --epochs changes, is the same)."""
    import shutil

    train, val = shapes
    out, _ = two_process_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    summary = cvtool.train.classify(resume=resumed, epochs=2, device="cpu")
    assert summary["epochs"] == 2 and summary["data_parallel"]["processes"] == 1
    cvtool.train.classify(train, val=val, epochs=1, out=tmp_path / "single", **ARGS)
    cvtool.train.classify(resume=tmp_path / "single", epochs=2, device="cpu")
    _assert_close(_params(resumed / "last.pt"), _params(tmp_path / "single" / "last.pt"))


@pytest.mark.slow
def test_devices_launches_torchrun_and_an_uneven_batch_is_refused(shapes, tmp_path):
    from conftest import run_cli

    train, val = shapes
    result = run_cli("train", "classify", str(train), "--val", str(val), "--arch", "lenet5", "--epochs", "1",
                     "--batch-size", "7", "--device", "cpu", "--out", str(tmp_path / "odd"), "--devices", "2",
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        "cvtool: --batch-size 7 is split over 2 processes: give a multiple of 2"
    assert not (tmp_path / "odd").exists()


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The worker of `launcher` (a cvtool --devices process) whose RANK is `rank`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == launcher and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_with_one_line_and_last_pt_intact(tmp_path):
    import signal
    import time

    train = write_shapes_folder(tmp_path / "train", {"circle": 40, "bar": 40, "cross": 40}, 0)
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "cvtool", "train", "classify", str(train), "--arch", "lenet5", "--epochs", "200",
         "--batch-size", "8", "--device", "cpu", "--out", str(out), "--devices", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CVTOOL_NO_PROGRESS": "1"})
    deadline = time.time() + 240
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.5)
    pid = _rank_pid(launcher.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"cvtool: data-parallel training stopped: rank 1 (pid {pid}) was killed by SIGKILL"), last
    assert "last.pt in the run directory holds the last completed epoch (continue with --resume)" in last
    state = torch.load(out / "last.pt", weights_only=True)  # whole, loadable, and resumable
    assert state["epoch"] >= 1 and "optimizer" in state


def test_sampler_splits_every_global_batch_by_rank():
    from cvtool.train.engine import EpochBatches

    def epoch(rank, world, batch=4):
        g, s = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
        return list(EpochBatches(10, batch, shuffle=True, generator=g, seed_generator=s, rank=rank, world=world))

    single = epoch(0, 1)
    ranks = [epoch(r, 2, 4) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 3
    for step, whole in enumerate(single[:2]):  # full batches: the two halves make the single process's batch
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(whole)
        assert ranks[0][step] == whole[0::2] and ranks[1][step] == whole[1::2]
    assert ranks[0][2] + ranks[1][2] == single[2]  # the last batch of 2: one each, same seeds
    faces = [list(EpochBatches(0, 0, shuffle=True, generator=torch.Generator(), seed_generator=torch.Generator()
                               .manual_seed(0), rank=r, world=2, batches=[[0, 1, 2, 3, 4, 5]], group=2))
             for r in range(2)]
    assert [i for i, _ in faces[0][0]] == [0, 1, 4, 5] and [i for i, _ in faces[1][0]] == [2, 3]


def test_devices_option_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert distributed.under_torchrun()
    assert distributed.without_devices(["train", "classify", "d", "--devices", "2", "--devices=3", "-e", "1"]) == \
        ["train", "classify", "d", "-e", "1"]


def _boxes_folder(root: Path, n: int, seed: int) -> Path:
    """YOLO-txt layout: n 64 x 64 images with one filled rectangle each."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        image = np.full((64, 64, 3), 200, np.uint8)
        x, y = (int(v) for v in rng.integers(8, 40, size=2))
        w, h = (int(v) for v in rng.integers(10, 20, size=2))
        cv2.rectangle(image, (x, y), (x + w, y + h), (20, 20, 200), -1)
        cv2.imwrite(str(root / "images" / f"{i}.png"), image)
        (root / "labels" / f"{i}.txt").write_text(f"0 {(x + w / 2) / 64} {(y + h / 2) / 64} {w / 64} {h / 64}\n")
    (root / "classes.txt").write_text("box\n")
    return root


def test_detection_two_processes_with_sync_bn_take_the_single_process_step(tmp_path):
    """The YOLO detector has batch norm and a loss normalised by its batch's matches: with --sync-bn (all-reduced
    batch statistics on the CPU) and the loss normalised by the global batch's counts, 2 x 4 images take the
    optimiser step of 1 x 8, augmentations (mosaics, flips, scale, colour) included."""
    train, val = _boxes_folder(tmp_path / "train", 8, 0), _boxes_folder(tmp_path / "val", 2, 1)
    common = ("train", "detect", str(train), "--val", str(val), "--epochs", "1", "--batch-size", "8",
              "--img-size", "64", "--width", "4", "--anchors", "1", "--mosaic", "0.5", "--optimizer", "sgd",
              "--lr", "0.05", "--weight-decay", "0", "--device", "cpu", "--sync-bn")
    result = torchrun(*common, "--out", str(tmp_path / "ddp"))
    assert result.returncode == 0, result.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "cvtool", *common, "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "CVTOOL_NO_PROGRESS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]

    two, one = _params(tmp_path / "ddp" / "last.pt"), _params(tmp_path / "single" / "last.pt")
    assert two.keys() == one.keys()
    floats = [k for k in one if one[k].is_floating_point()]  # weights, biases and running statistics
    a, b = (torch.cat([d[k].double().flatten() for k in floats]) for d in (two, one))
    assert torch.linalg.norm(a - b) <= 1e-5 * torch.linalg.norm(b)  # the model, as the issue measures it
    for k in floats:  # and each tensor, to float32 rounding of its own size (biases that start at 0 are tiny)
        assert torch.linalg.norm(two[k].double() - one[k].double()) <= 1e-4 * torch.linalg.norm(one[k].double()) + 1e-6, k
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["data_parallel"]["processes"] == 2 and summary["data_parallel"]["sync_bn"] is True


@pytest.mark.slow
def test_two_process_lenet5_on_the_digits_matches_the_single_process_accuracy(tmp_path):
    """scikit-learn's 1,797 8 x 8 digits (as MNIST IDX files), LeNet-5 for 5 epochs: 2 processes reach
    the single process's held-out accuracy within 0.5 points."""
    import struct

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([cv2.resize((d * 255 / 16).astype(np.uint8), (28, 28), interpolation=cv2.INTER_LINEAR)
                       for d in digits.images])
    folder = tmp_path / "digits"
    folder.mkdir()
    (folder / "digits-images-idx3-ubyte").write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, len(images), 28, 28)
                                                      + images.tobytes())
    (folder / "digits-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, len(images))
                                                      + digits.target.astype(np.uint8).tobytes())
    options = ["--arch", "lenet5", "--epochs", "5", "--batch-size", "32", "--val-split", "0.2", "--device", "cpu"]
    result = torchrun("train", "classify", str(folder), *options, "--out", str(tmp_path / "ddp"), "-f", "json",
                      timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    one = cvtool.train.classify(folder, arch="lenet5", epochs=5, batch_size=32, val_split=0.2, device="cpu",
                                out=tmp_path / "single")
    assert two["data_parallel"]["processes"] == 2 and two["val_images"] == one["val_images"] == 360
    assert one["best_val_accuracy"] > 0.9
    assert abs(two["best_val_accuracy"] - one["best_val_accuracy"]) <= 0.005, (two["best_val_accuracy"],
                                                                              one["best_val_accuracy"])


def test_every_train_entry_takes_sync_bn_and_the_cli_offers_devices():
    import inspect

    from conftest import run_cli

    for name in ("classify", "detect", "segment", "style", "face"):
        assert "sync_bn" in inspect.signature(getattr(cvtool.train, name)).parameters, name
    assert "--devices" in run_cli("train", "style", "--help", env={"COLUMNS": "200"}).stdout


@pytest.mark.slow
def test_the_python_api_launches_devices_itself(shapes, tmp_path):
    train, val = shapes
    summary = cvtool.train.classify(train, val=val, epochs=1, out=tmp_path / "api", devices=2, **ARGS)
    assert summary["data_parallel"]["processes"] == 2 and summary["run_dir"] == str(tmp_path / "api")
    single = cvtool.train.classify(train, val=val, epochs=1, out=tmp_path / "single", **ARGS)
    _assert_close(_params(tmp_path / "api" / "last.pt"), _params(tmp_path / "single" / "last.pt"))
    with pytest.raises(cvtool.errors.UsageError, match="callbacks, on_skip and on_warning cannot reach"):
        cvtool.train.classify(train, val=val, epochs=1, out=tmp_path / "cb", devices=2, on_skip=print, **ARGS)
    assert single["data_parallel"]["processes"] == 1
