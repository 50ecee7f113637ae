"""Evaluate `cvtool train face` on real faces: triplet training from scratch on ORL, whole people held out.

    python bench/eval_face_train.py [--epochs 20] [--img-size 64] [--margin 0.5] [--weight-decay 0.05]     # needs ../shared/datasets/orl_faces

ORL (AT&T) faces: every subject's 10 photos; `--val-split 0.25` holds out a quarter of the subjects
(8 of 32) entirely. The network never sees them; a verifier meets new people, so that is the test.
Reported on all same/different pairs of the held-out subjects' photos:
- accuracy at the threshold chosen on the *training* subjects' pairs (the honest operating point),
- accuracy at the best threshold for the held-out pairs themselves (an upper bound, stated as such),
- ROC AUC (threshold-free),
for best.pt (chosen by held-out AUC, so optimistic) and for last.pt (free of that selection).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import timed  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "orl_faces"


def cvtool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cvtool", "-q", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"cvtool {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def verification_of(checkpoint: Path) -> dict:
    """Embed every photo with the checkpoint alone; threshold from the training subjects, scored on the held-out ones."""
    import torch

    from cvtool.models.checkpoint import load_weights_file
    from cvtool.models.loading import load_model
    from cvtool.train.datasets import ClassificationDataset, decode_all
    from cvtool.ops.verification import accuracy_at, fit_threshold
    from cvtool.train.face_embedding import (embed_all, open_identity_folders, pair_distances, subset_identities,
                                             verification_report)

    meta = load_weights_file(checkpoint).meta
    loaded = load_model(None, task="face-embed", weights=checkpoint)
    data = open_identity_folders(DATA)
    data = decode_all(data, loaded.preprocess.resize_size)
    figures = {}
    for side in ("train", "val"):
        people = subset_identities(data, [data.classes.index(n) for n in meta[f"{side}_identities"]])
        emb = embed_all(loaded.module, ClassificationDataset(people, loaded.preprocess), torch.device("cpu"))
        figures[side] = pair_distances(emb, people.labels)
    train_threshold = fit_threshold(*figures["train"])["threshold"]
    val_d, val_same = figures["val"]
    report = verification_report(val_d, val_same)
    return {
        "epoch": int(meta["epoch"]),
        "held_out_accuracy_at_train_threshold": round(accuracy_at(val_d, val_same, train_threshold), 4),
        "train_threshold": round(train_threshold, 4),
        "held_out_accuracy_at_best_threshold": round(report["accuracy"], 4),
        "held_out_best_threshold": round(report["threshold"], 4),
        "held_out_roc_auc": round(report["roc_auc"], 4),
        "held_out_same_pairs": report["same_pairs"], "held_out_different_pairs": report["different_pairs"],
        "threshold_stored_in_checkpoint": round(float(meta["threshold"]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--mining", default="semi-hard")
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is not here (the shared data sets sit beside the project)")
    subjects = sorted(d.name for d in DATA.iterdir() if d.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train_args = ["train", "face", str(DATA), "--epochs", str(args.epochs), "--img-size", str(args.img_size),
                      "--mining", args.mining, "--margin", str(args.margin), "--weight-decay", str(args.weight_decay), "--val-split", "0.25", "--seed", "0",
                      "-P", "8", "-K", "4"]
        with timed() as clock:
            summary = json.loads(cvtool(*train_args, "--out", str(run)).stdout)
        wall = clock.seconds
        rows = list(csv.DictReader(open(run / "metrics.csv")))
        figures = {
            "data": f"ORL faces, {len(subjects)} subjects x 10 grey photos; {len(summary['val_identities'])} whole "
                    f"subjects held out ({', '.join(summary['val_identities'])}), all pairs of their photos",
            "arch": f"face_embed_small from scratch, {args.img_size} px, triplet loss ({args.mining}, margin "
                    f"{args.margin}), AdamW weight decay {args.weight_decay}, P x K = 8 x 4",
            "epochs": args.epochs, "device": "cpu",
            "best_pt": verification_of(run / "best.pt"),
            "last_pt": verification_of(run / "last.pt"),
            "target_accuracy": 0.95,
            "train_wall_s": round(wall, 1),
            "train_images_per_s_median_epoch": round(statistics.median(float(r["train_images_per_s"]) for r in rows), 1),
            "val_roc_auc_per_epoch": [round(float(r["val_roc_auc"]), 4) for r in rows],
            "train_command": "cvtool " + " ".join(train_args),
        }
    write_results("eval_face_train", figures)


if __name__ == "__main__":
    main()
