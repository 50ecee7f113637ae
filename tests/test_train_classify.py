"""`cvtool train classify`: the engine on a small generated ImageFolder (real files, real training)."""

import csv
import gzip
import json
import struct

import cv2
import numpy as np
import pytest
import torch
from conftest import jsonl, run_cli
from synthetic_shapes import SHAPES, write_shapes_folder

from cvtool.errors import CvtoolError
from cvtool.train.classification import ClassifyTrainArgs, run_training
from cvtool.train.datasets import DataError, open_classification_data, read_idx_array
from cvtool.train.engine import Callbacks, TrainConfig


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    return write_shapes_folder(tmp_path_factory.mktemp("shapes"), {shape: 40 for shape in SHAPES})


def _train(data, run_dir, epochs, resume=False, callbacks=None, **args):
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, seed=0, workers=0)
    return run_training(ClassifyTrainArgs(str(data), arch="lenet5", val_split=0.25, **args), cfg, run_dir,
                        torch.device("cpu"), resume=resume, callbacks=callbacks, progress=False)


def test_training_learns_and_writes_a_complete_run_directory(shapes_folder, tmp_path):
    summary = _train(shapes_folder, tmp_path / "run", epochs=20)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["best.pt", "confusion.png", "curves.png", "last.pt", "metrics.csv", "summary.json"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 21))
    assert float(rows[-1]["train_loss"]) < 0.5 * float(rows[0]["train_loss"])
    assert summary["best_val_accuracy"] >= 0.9  # 30 held-out shapes, chance is 1/3
    assert summary["classes"] == sorted(SHAPES)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["val_images"] == 30


def test_checkpoint_loads_straight_into_classify(shapes_folder, tmp_path):
    _train(shapes_folder, tmp_path / "run", epochs=12)
    result = run_cli("classify", str(shapes_folder / "cross" / "00.png"), str(shapes_folder / "circle" / "03.png"),
                     "--weights", str(tmp_path / "run" / "best.pt"), "-f", "jsonl", "-k", "1")
    assert result.returncode == 0, result.stderr
    records = jsonl(result.stdout)
    assert records[0]["model"] == "lenet5"
    assert [r["result"]["top_k"][0]["label"] for r in records] == ["cross", "circle"]


class _StopAt(Callbacks):
    """Presses Ctrl-C in the middle of an epoch."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_batch(self, epoch, batch, loss, images_per_s):
        if epoch == self.epoch and batch == 2:
            raise KeyboardInterrupt


def test_interrupt_then_resume_gives_exactly_the_uninterrupted_run(shapes_folder, tmp_path):
    straight = _train(shapes_folder, tmp_path / "straight", epochs=4)
    with pytest.raises(KeyboardInterrupt):
        _train(shapes_folder, tmp_path / "broken", epochs=4, callbacks=_StopAt(epoch=3))
    rows = list(csv.DictReader(open(tmp_path / "broken" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # the interrupted epoch is not recorded
    resumed = _train(shapes_folder, tmp_path / "broken", epochs=4, resume=True)

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    straight_rows = list(csv.DictReader(open(tmp_path / "straight" / "metrics.csv")))
    resumed_rows = list(csv.DictReader(open(tmp_path / "broken" / "metrics.csv")))
    assert [r["train_loss"] for r in straight_rows] == [r["train_loss"] for r in resumed_rows]
    assert straight["best_val_accuracy"] == resumed["best_val_accuracy"]


def test_cli_train_eval_only_and_resume(shapes_folder, tmp_path):
    run = tmp_path / "cli-run"
    first = run_cli("train", "classify", str(shapes_folder), "--arch", "lenet5", "--epochs", "2", "--out", str(run),
                    "--batch-size", "16", "-f", "json")
    assert first.returncode == 0, first.stderr
    assert "epoch 2" in first.stderr and json.loads(first.stdout)["images"] == 12  # 10% of 120 held out, stratified
    again = run_cli("train", "classify", str(shapes_folder), "--arch", "lenet5", "--out", str(run))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    more = run_cli("train", "classify", "--resume", str(run), "--epochs", "3", "-f", "json")
    assert more.returncode == 0, more.stderr
    assert [r["epoch"] for r in csv.DictReader(open(run / "metrics.csv"))] == ["1", "2", "3"]
    report = run_cli("train", "classify", str(shapes_folder), "--eval-only", "--weights", str(run / "best.pt"), "-f", "json")
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["images"] == 120 and set(doc["per_class"]) == set(SHAPES)
    assert np.array(doc["confusion_matrix"]).sum() == 120


def test_an_out_folder_inside_the_data_is_refused_before_anything_is_written(shapes_folder, tmp_path):
    # --out data/circle would put best.pt, curves.png, ... among the circles (the next run reads the plots as
    # circles; a photo named curves.png is replaced); a run folder anywhere under an image folder becomes a class
    import shutil

    import cvtool.train
    import cvtool.val
    from cvtool.errors import UsageError

    data = tmp_path / "data"
    shutil.copytree(shapes_folder, data)
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    circle = data / "circle"
    for out in (circle, data, data / "runs" / "x"):
        refused = run_cli("train", "classify", str(data), "--arch", "lenet5", "--epochs", "1", "--out", str(out))
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.splitlines() == [
            f"cvtool: --out {out} is inside the data folder {data}: its files would mix with the data's (and could "
            "replace some); choose a folder outside it"]
    (data / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a link in the tree is in it
    (tmp_path / "elsewhere").mkdir()
    linked = run_cli("train", "classify", str(data), "--arch", "lenet5", "--epochs", "1", "--out", str(data / "link"))
    assert linked.returncode == 2 and "is inside the data folder" in linked.stderr, linked.stderr
    (data / "link").unlink()
    default = run_cli("train", "classify", ".", "--arch", "lenet5", "--epochs", "1", cwd=data)  # runs/... under it
    assert default.returncode == 2 and "is inside the data folder .:" in default.stderr, default.stderr
    scored = run_cli("val", "classify", str(data), "--model", "lenet5_digits", "--out", str(circle))
    assert scored.returncode == 2 and f"--out {circle} is inside the data folder {data}" in scored.stderr
    with pytest.raises(UsageError, match="inside the data folder"):  # the validation folder counts too
        cvtool.train.classify(tmp_path / "unused", arch="lenet5", epochs=1, val=data, out=circle / "run")
    with pytest.raises(UsageError, match="inside the data folder"):
        cvtool.val.classify(data, model="lenet5_digits", out=data / "plots")
    with pytest.raises(UsageError, match="inside the data folder"):  # before torchrun starts
        cvtool.train.classify(data, arch="lenet5", epochs=1, out=circle, devices=2)
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before  # nothing made, nothing replaced
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_detection_and_segmentation_protect_the_folders_they_read_not_the_whole_tree(tmp_path):
    # their readers list images/ with masks/ (or annotations/, labels/) only: raccoon/runs/exp is a fine run
    # folder, raccoon/images/run is not
    from cvtool.errors import UsageError
    from cvtool.io.outputs import check_outside_data
    from cvtool.train.datasets import data_folders

    for task, names in (("segment", ("images", "masks")), ("detect", ("images", "annotations"))):
        root = tmp_path / task
        for name in names:
            (root / name).mkdir(parents=True)
        (root / "notes").mkdir()
        folders = data_folders(task, root)
        assert folders == [root / name for name in names]
        check_outside_data(root / "runs" / "exp", folders, "--out x")
        check_outside_data(root / "notes", folders, "--out x")
        for name in names:
            with pytest.raises(UsageError, match=f"inside the data folder {root / name}:"):
                check_outside_data(root / name / "run", folders, "--out x")
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    (coco / "train.json").write_text("{}")
    assert data_folders("detect", coco / "train.json") == [coco / "images"]  # its images/ beside the JSON
    assert data_folders("classify", tmp_path / "list.csv") == []  # a CSV names its images itself
    assert data_folders("classify", coco) == [coco]  # an image folder: the whole tree


def test_bad_data_is_refused_before_training(tmp_path, shapes_folder):
    single = tmp_path / "single"
    (single / "only").mkdir(parents=True)
    cv2.imwrite(str(single / "only" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="only one class"):
        open_classification_data(single)
    (single / "empty").mkdir()
    with pytest.raises(DataError, match="class folder\\(s\\) with no images: empty"):
        open_classification_data(single)
    result = run_cli("train", "classify", str(single), "--arch", "lenet5", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_unreadable_images_are_skipped_with_a_warning(tmp_path, shapes_folder):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_folder, data)
    (data / "circle" / "zz_broken.png").write_bytes(b"not a png")
    result = run_cli("train", "classify", str(data), "--arch", "lenet5", "--epochs", "1", "--out", str(tmp_path / "r"),
                     "-f", "json")
    assert result.returncode == 0, result.stderr
    assert "skipping" in result.stderr and "zz_broken.png: not an image" in result.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["skipped_files"] == 1


def _write_idx(path, array: np.ndarray, type_code: int = 0x08):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(">u1").tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_mnist_idx_files_are_read_and_mismatches_refused(tmp_path):
    images = (np.arange(6 * 4 * 4) % 256).astype(np.uint8).reshape(6, 4, 4)
    labels = np.array([0, 1, 2, 0, 1, 2], np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    assert np.array_equal(read_idx_array(tmp_path / "train-images-idx3-ubyte.gz"), images)
    data = open_classification_data(tmp_path)
    assert data.classes == ["0", "1", "2"] and data.labels == labels.tolist()
    assert data.sources[1].shape == (4, 4, 3) and np.array_equal(data.sources[1][..., 0], images[1])

    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:5])
    with pytest.raises(DataError, match="6 images but 5 labels"):
        open_classification_data(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 9, 4, 4)))
    with pytest.raises(CvtoolError, match="truncated"):
        open_classification_data(tmp_path / "train-images-idx3-ubyte.gz")


def test_csv_list_with_relative_paths(tmp_path, shapes_folder):
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(
        f"{shapes_folder / shape / f'{i:02d}.png'},{shape}\n" for shape in SHAPES for i in range(3)))
    data = open_classification_data(listing)
    assert data.classes == sorted(SHAPES) and len(data) == 9


def test_worker_processes_load_the_data(shapes_folder, tmp_path):
    result = run_cli("train", "classify", str(shapes_folder), "--arch", "lenet5", "--epochs", "1", "--workers", "2",
                     "--out", str(tmp_path / "r"), "-f", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 12


class _LocalWeights:
    """A weights source that is a file on disk (the registry's WeightsSource protocol)."""

    kind = "local"

    def __init__(self, path):
        self.path, self.filename = path, path.name

    def is_available(self):
        return True

    def local_file(self):
        return self.path

    def local_path(self, *, offline=None, progress=True, alternative=None):
        return self.path


def test_pretrained_fine_tuning_starts_from_the_weights_and_replaces_the_head(shapes_folder, tmp_path):
    from cvtool.models.lenet import LENET_PREPROCESS, LeNet5
    from cvtool.models.registry import ModelEntry, register, unregister

    torch.manual_seed(3)
    donor = LeNet5(num_classes=10)
    torch.save(donor.state_dict(), tmp_path / "donor.pt")
    register(ModelEntry(name="test_lenet_pre", task="classify", family="lenet", builder=LeNet5,
                        preprocess=lambda: LENET_PREPROCESS, classes=lambda: [str(d) for d in range(10)],
                        weights=_LocalWeights(tmp_path / "donor.pt")))
    try:
        cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-9, seed=0)  # a tiny step: weights stay ~the donor's
        run_training(ClassifyTrainArgs(str(shapes_folder), arch="test_lenet_pre", pretrained=True), cfg,
                     tmp_path / "run", torch.device("cpu"), progress=False)
    finally:
        unregister("test_lenet_pre")
    tuned = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state_dict"]
    assert tuned["classifier.3.weight"].shape == (3, 84)  # new head for the 3 shapes
    torch.testing.assert_close(tuned["features.0.weight"], donor.state_dict()["features.0.weight"], atol=1e-6, rtol=0)


def test_an_img_size_lenet5_cannot_take_is_refused_before_any_file_is_written(shapes_folder, tmp_path):
    result = run_cli("train", "classify", str(shapes_folder), "--arch", "lenet5", "--img-size", "64",
                     "--out", str(tmp_path / "run"), "--epochs", "1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "cvtool: --img-size 64: lenet5 cannot take 64x64 images (mat1 and mat2 shapes cannot be multiplied")
    assert result.stderr.splitlines()[-1].endswith("; leave --img-size out to train at its own 32x32")
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


class _FailingTask:
    """A task whose loss fails on the first batch, as an impossible setting would."""

    def build_model(self):
        return torch.nn.Linear(2, 2)

    def loss(self, outputs, targets):
        raise RuntimeError("boom")

    def checkpoint_fields(self):
        return {"arch": "x", "task": "classify"}


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_failing_before_its_first_checkpoint_removes_only_the_directory_it_made(tmp_path, existed):
    from cvtool.train.engine import Trainer

    run_dir = tmp_path / "runs" / "new"
    if existed:
        run_dir.mkdir(parents=True)
    data = torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    trainer = Trainer(_FailingTask(), data, None, TrainConfig(epochs=1, batch_size=2), run_dir, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert run_dir.exists() == existed and (tmp_path / "runs").exists()


def test_ema_through_the_cli_saves_the_average_that_classify_then_uses(shapes_folder, tmp_path):
    """train classify --ema (the engine's moving average): best.pt holds the average, its accuracy is the one
    the summary reports, and it classifies as any checkpoint does; a decay of 1 is refused in one line."""
    from cvtool.models.checkpoint import load_weights_file

    run = tmp_path / "run"  # validated on the whole folder, so that --eval-only on it scores what training did
    result = run_cli("train", "classify", str(shapes_folder), "--arch", "lenet5", "--epochs", "3", "--lr", "3e-3",
                     "--batch-size", "16", "--val", str(shapes_folder), "--ema", "0.9", "--device", "cpu",
                     "--out", str(run), "-f", "json")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ema"] == 0.9
    last = load_weights_file(run / "last.pt")
    assert last.meta["ema"]["updates"] == 3 * 8  # 3 epochs x 8 batches (120 training images, 16 a batch)
    raw = last.meta["ema"]["train_state_dict"]
    assert any(not torch.equal(last.state_dict[k], raw[k]) for k in raw if raw[k].is_floating_point())
    scored = run_cli("train", "classify", str(shapes_folder), "--eval-only", "--weights", str(run / "best.pt"),
                     "-f", "json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["accuracy"] == pytest.approx(summary["best_val_accuracy"], abs=1e-9)
    refused = run_cli("train", "classify", str(shapes_folder), "--ema", "1", "--out", str(tmp_path / "no"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == ("cvtool: --ema 1.0: the decay of the weights' moving average "
                                                      "must be in [0, 1) (0: off)")
    assert not (tmp_path / "no").exists()
