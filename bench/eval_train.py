"""Evaluate `cvtool train` on real data, through the CLI (not part of the default tests).

    python bench/eval_train.py digits [--package cvtool/models/packaged/lenet5_digits.pt]
    python bench/eval_train.py orl            # needs ../shared/datasets/orl_faces
    python bench/eval_train.py overhead       # engine vs a plain PyTorch loop, same model and data

digits:   scikit-learn's load_digits (1,797 real 8x8 handwriting scans) exported as an ImageFolder;
          LeNet-5 trained from scratch with `cvtool train classify` on the fixed 80% split (model
          selection on 10% of it), then `--eval-only` on the untouched 20% test split.
orl:      ORL faces, 32 subjects x 10 images; ResNet-18 from scratch, 2 images per subject held out.
overhead: images/s of the engine's training epochs against a bare loop over the same DataLoader.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "scripts"))
from _results import write_results  # noqa: E402

from cvtool.bench import timed  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"


def cvtool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cvtool", "-q", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"cvtool {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def export_folder(images, labels, root: Path) -> None:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))


def epoch_speeds(run: Path) -> list[float]:
    return [float(r["train_images_per_s"]) for r in csv.DictReader(open(run / "metrics.csv"))]


def strip_for_packaging(best: Path, target: Path, recipe: str, metrics: dict) -> None:
    """Keep what inference needs (weights, classes, preprocessing) plus provenance; drop optimiser state."""
    from cvtool.models.checkpoint import load_weights_file, save_checkpoint

    loaded = load_weights_file(best)
    save_checkpoint(target, arch=loaded.arch, task=loaded.task, state_dict=loaded.state_dict, classes=loaded.classes,
                    preprocess=loaded.preprocess, extra={"metrics": metrics, "recipe": recipe})


def eval_digits(args) -> None:
    from digits import load_split

    epochs = 60
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x_train, y_train, x_test, y_test = load_split()
        export_folder(x_train, y_train, tmp / "train")
        export_folder(x_test, y_test, tmp / "test")
        train_args = ["train", "classify", str(tmp / "train"), "--arch", "lenet5", "--epochs", str(epochs),
                      "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.05", "--weight-decay", "5e-4",
                      "--val-split", "0.1", "--seed", "0"]
        with timed() as clock:
            cvtool(*train_args, "--out", str(tmp / "run"), "-f", "json")
        wall = clock.seconds
        report = json.loads(cvtool("train", "classify", str(tmp / "test"), "--eval-only",
                                   "--weights", str(tmp / "run" / "best.pt"), "-f", "json").stdout)
        speeds = epoch_speeds(tmp / "run")
        figures = {
            "data": "sklearn load_digits, fixed stratified 20% test split (scripts/digits.py, seed 0)",
            "train_images": len(y_train), "test_images": report["images"],
            "arch": "lenet5", "epochs": epochs, "device": "cpu",
            "test_accuracy": round(report["accuracy"], 4),
            "target_test_accuracy": 0.985,
            "train_wall_s": round(wall, 1),
            "train_images_per_s_median_epoch": round(statistics.median(speeds), 1),
            "per_class_recall": {k: v["recall"] for k, v in report["per_class"].items()},
            "train_command": "cvtool " + " ".join(train_args),
        }
        if args.package:
            strip_for_packaging(tmp / "run" / "best.pt", Path(args.package),
                                "python bench/eval_train.py digits --package <this file>",
                                {"test_accuracy": figures["test_accuracy"], "test_images": report["images"]})
    write_results("eval_train_digits", figures)


def eval_orl(args) -> None:
    data = SHARED / "orl_faces"
    if not data.is_dir():
        sys.exit(f"skipped: {data} is not here (the shared data sets sit beside the project)")
    epochs = args.epochs or 40
    with tempfile.TemporaryDirectory() as tmp:
        train_args = ["train", "classify", str(data), "--arch", "resnet18", "--epochs", str(epochs), "--img-size", "112",
                      "--batch-size", "32", "--lr", "2e-3", "--val-split", "0.2", "--seed", "0"]
        with timed() as clock:
            summary = json.loads(cvtool(*train_args, "--out", f"{tmp}/run", "-f", "json").stdout)
        wall = clock.seconds
        speeds = epoch_speeds(Path(tmp) / "run")
        last_epoch = list(csv.DictReader(open(Path(tmp) / "run" / "metrics.csv")))[-1]
    figures = {
        "data": "ORL faces s1..s32, 10 images each; 2 per subject held out (stratified 20%)",
        "arch": "resnet18 from scratch, 112 px", "epochs": epochs, "device": "cpu",
        "held_out_images": summary["images"],
        "held_out_accuracy_best_pt": round(summary["accuracy"], 4),  # best.pt is chosen on these same images
        "held_out_accuracy_last_epoch": round(float(last_epoch["val_accuracy"]), 4),  # free of that selection
        "train_wall_s": round(wall, 1), "train_images_per_s_median_epoch": round(statistics.median(speeds), 1),
        "train_command": "cvtool " + " ".join(train_args),
    }
    write_results("eval_train_orl", figures)


def eval_overhead(args) -> None:
    """Same model, data, batch size and optimiser: the engine's epoch throughput over a bare loop's."""
    import torch

    from cvtool.models.registry import get_entry
    from cvtool.train.classification import ClassificationTask, classification_loss
    from cvtool.train.datasets import Augment, ClassificationDataset, decode_all, open_classification_data
    from cvtool.train.engine import Trainer, TrainConfig

    data_dir = SHARED / "orl_faces"
    if not data_dir.is_dir():
        sys.exit(f"skipped: {data_dir} is not here")
    torch.manual_seed(0)
    entry = get_entry("resnet18")
    from cvtool.train.classification import training_preprocess

    preprocess = training_preprocess(entry, 112)
    data = decode_all(open_classification_data(data_dir), preprocess.resize_size)
    dataset = ClassificationDataset(data, preprocess, Augment())
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-3, seed=0)
    device = torch.device("cpu")

    def bare_loop() -> list[float]:
        model = entry.build(num_classes=len(data.classes))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True)
        speeds = []
        for _ in range(cfg.epochs):
            model.train()
            seen = 0
            with timed() as clock:
                for inputs, targets in loader:
                    loss = classification_loss(model(inputs), targets)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    seen += len(targets)
            speeds.append(seen / clock.seconds)
        return speeds

    def engine() -> list[float]:
        task = ClassificationTask(entry, data.classes, preprocess, lambda: entry.build(num_classes=len(data.classes)))
        with tempfile.TemporaryDirectory() as tmp:
            state = Trainer(task, dataset, None, cfg, Path(tmp), device).fit()
        return [row["train_images_per_s"] for row in state.history]

    rounds = []
    for _ in range(2):  # alternate, so drift in machine speed hits both alike
        rounds.append((statistics.median(bare_loop()), statistics.median(engine())))
    bare = statistics.median(r[0] for r in rounds)
    ours = statistics.median(r[1] for r in rounds)
    write_results("eval_train_overhead", {
        "model": "resnet18, 112 px, batch 32, AdamW, ORL faces (320 images), CPU",
        "bare_loop_images_per_s": round(bare, 2), "engine_images_per_s": round(ours, 2),
        "engine_over_bare": round(ours / bare, 3), "target_engine_over_bare": 0.9, "rounds": rounds,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["digits", "orl", "overhead"])
    parser.add_argument("--package", help="digits: also write the stripped best checkpoint here")
    parser.add_argument("--epochs", type=int, help="orl: epochs (default 40)")
    args = parser.parse_args()
    {"digits": eval_digits, "orl": eval_orl, "overhead": eval_overhead}[args.what](args)


if __name__ == "__main__":
    main()
