"""Evaluate `cvtool train landmarks` on real faces: HELEN photos with the iBUG 68-point markup, against dlib's
68-point predictor (ported in cvtool) on the same held-out faces and the same face boxes.

    python bench/eval_landmarks.py [--epochs 60] [--arch resnet18] [--img-size 128] [--test 100] [--threads 2]
    # needs ../shared/datasets/helen_landmarks

A fixed random split (seed 0) holds `--test` photos out; the network trains on the others (`train landmarks`
holds 10% of those out for best.pt) and never sees the test faces. On each test photo dlib's CNN face detector
(min_face 80 px, `cvtool landmarks`' default) is run once; the detection overlapping the annotated face (IoU
>= 0.3 with the square around its points) is *the* box, and both predictors get it:
- dlib's 68-point shape predictor, on the detector's rectangle (as face_recognition and dlib's examples use it),
- ours, on the same rectangle mapped by the box fit its checkpoint carries (what `cvtool landmarks` does),
- ours on the points' own box too (the training convention: an upper bound with a perfect box, said as such).
Scores: NME normalised by the inter-ocular distance (outer eye corners, points 36 and 45, 300-W's convention)
and the failure rates at 0.08 and 0.10; faces the detector missed are counted and left out of both.
Caveat written into the figures: dlib's predictor was trained on iBUG 300-W, whose training set includes HELEN's
training photos; this folder mixes HELEN's train and test photos, so some test faces may be in dlib's training
data (its figures are optimistic), none are in ours.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "helen_landmarks"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--name", default="eval_landmarks_helen")
    opts = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA}: not found (../shared/datasets/helen_landmarks)")

    import torch

    torch.set_num_threads(opts.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(opts.threads))
    import cv2

    cv2.setNumThreads(opts.threads)

    import cvtool
    from cvtool.io.image import read_image
    from cvtool.models.dlib.shape_predictor import load_shape_predictor
    from cvtool.models.face_detectors import FaceDetectorOptions, make_face_detector
    from cvtool.models.registry import get_entry
    from cvtool.ops import landmarks as geo
    from cvtool.tasks.landmarks import DEFAULT_MIN_FACE
    from cvtool.train.landmark_regression import matched_face, open_landmark_data

    data = open_landmark_data(DATA)
    order = np.random.default_rng(0).permutation(len(data))
    test_idx, train_idx = sorted(order[: opts.test].tolist()), sorted(order[opts.test:].tolist())
    work = Path(tempfile.mkdtemp(prefix="cvtool-landmarks-"))
    train_json = work / "train.json"
    train_json.write_text(json.dumps([{"path": data.sources[i], "points": data.points[i].tolist()} for i in train_idx]))

    run_dir = opts.out or work / "run"
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    summary = cvtool.train.landmarks(train_json, arch=opts.arch, img_size=opts.img_size, epochs=opts.epochs,
                                     batch_size=opts.batch_size, lr=opts.lr, val_split=0.1, out=run_dir,
                                     device="cpu", on_warning=lambda m: print(f"warning: {m}", file=sys.stderr))
    train_cpu, train_wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    print(f"trained: val NME {summary['val']['nme']:.4f} in {train_wall:.0f} s wall, {train_cpu:.0f} CPU-s",
          file=sys.stderr)

    ours = cvtool.LandmarkDetector(weights=run_dir / "best.pt", device="cpu", backend="torch", no_detect=True)
    dlib68 = load_shape_predictor("68")
    detector = make_face_detector(get_entry("mmod", "face-detect"), FaceDetectorOptions(min_face=DEFAULT_MIN_FACE))
    truth, ours_det, dlib_det, ours_ref, missed = [], [], [], [], []
    timings = {"ours_ms": [], "dlib_ms": []}
    for i in test_idx:
        rgb = read_image(data.sources[i])
        pts = data.points[i]
        box = matched_face(detector.detect([rgb])[0], pts)
        ours_ref.append(ours.points_for(rgb, [geo.points_box(pts)], reference=True)[0])
        if box is None:
            missed.append(Path(data.sources[i]).name)
            continue
        truth.append(pts)
        start = time.perf_counter()
        ours_det.append(ours.points_for(rgb, [box])[0])
        timings["ours_ms"].append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        # dlib's rectangles are inclusive: right/bottom = the exclusive edge - 1
        dlib_det.append(dlib68.predict(rgb, [[box[0], box[1], box[2] - 1, box[3] - 1]])[0].astype(np.float64))
        timings["dlib_ms"].append((time.perf_counter() - start) * 1000)
    layout = geo.IBUG_68
    all_truth = np.stack([data.points[i] for i in test_idx])
    figures = {
        "data": str(DATA), "test_faces": len(test_idx), "train_faces": len(train_idx),
        "detected_test_faces": len(truth), "missed_by_detector": missed,
        "normaliser": "inter-ocular: outer eye corners (iBUG points 36 and 45, 300-W's convention)",
        "detector": f"dlib's CNN (mmod), min_face {DEFAULT_MIN_FACE} px; the box is the detection with IoU >= 0.3 "
                    "with the square around the annotated points",
        "ours_detector_boxes": geo.nme_summary(geo.nme(np.stack(ours_det), np.stack(truth), layout), layout),
        "dlib68_detector_boxes": geo.nme_summary(geo.nme(np.stack(dlib_det), np.stack(truth), layout), layout),
        "ours_points_boxes_all_test_faces": geo.nme_summary(geo.nme(np.stack(ours_ref), all_truth, layout), layout),
        "ms_per_face": {k: round(float(np.median(v)), 2) for k, v in timings.items()},
        "training": {"arch": opts.arch, "img_size": opts.img_size, "epochs": summary["epochs"],
                     "best_epoch": summary["best_epoch"], "batch_size": opts.batch_size, "lr": opts.lr,
                     "val_nme": summary["val"]["nme"], "box_fit": summary["box_fit"],
                     "train_seconds_engine": summary["train_seconds"], "wall_seconds": round(train_wall, 1),
                     "cpu_seconds": round(train_cpu, 1), "threads": opts.threads},
        "caveat": "dlib's 68-point predictor was trained on iBUG 300-W, whose training set includes HELEN's training "
                  "photos; this folder mixes HELEN's train and test photos, so some test faces may be in dlib's "
                  "training data (its figures are optimistic); none are in ours",
    }
    write_results(opts.name, figures)


if __name__ == "__main__":
    main()
