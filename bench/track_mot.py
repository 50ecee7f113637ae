"""Tracking quality on a real annotated sequence: cvtool's ByteTrack against the plain IoU tracker on the same
public detections, scored by TrackEval (the MOTChallenge's official kit: HOTA, MOTA, IDF1) and cross-checked with
py-motmetrics (MOTA, IDF1); and the tracker's time per frame.

Data: MOTChallenge 2D MOT 2015, KITTI-17 (145 frames, ground truth and the public ACF detections), kept outside
the project in ../shared/datasets/mot15_kitti17 (PROVENANCE.md there). ACF scores are not probabilities (about -1
to 86): they are divided by 100 and clipped to [0, 1] for both trackers alike. The thresholds are a small grid
(`--track-high`, the score a box needs to be matched first / to start a track), the same grid for both trackers,
with the low stage at a tenth of it (ByteTrack's 0.1 against its 0.5-0.6); every cell is reported, and each
tracker's best cell. Ground truth rows marked 0 (column 7) are left out, as TrackEval does for MOT15.

    make eval-track        # pip installs motmetrics and trackeval (bench-only, --no-deps for trackeval: it
                           # would pull non-headless OpenCV), then this script

Writes bench/results/track_mot.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import machine, write_results  # noqa: E402
from cvtool.ops.tracking import TRACKERS, TrackerSettings, box_iou  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mot15_kitti17"
SEQUENCE, FRAMES = "KITTI-17", 145
SCORE_SCALE = 100.0
GRID = (0.2, 0.3, 0.4, 0.5)


def load_mot(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", ndmin=2)


def detections_by_frame(det: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    frames = []
    for f in range(1, FRAMES + 1):
        rows = det[det[:, 0] == f]
        boxes = np.column_stack([rows[:, 2], rows[:, 3], rows[:, 2] + rows[:, 4], rows[:, 3] + rows[:, 5]])
        frames.append((boxes.reshape(-1, 4), np.clip(rows[:, 6] / SCORE_SCALE, 0, 1)))
    return frames


def track(name: str, settings: TrackerSettings, frames) -> tuple[np.ndarray, float]:
    """MOT rows (frame, id, x, y, w, h, score) of one tracker over the sequence, and its ms per frame (median of
    5 passes)."""
    times = []
    for _ in range(5):
        tracker = TRACKERS[name](settings)
        rows = []
        start = time.perf_counter()
        for f, (boxes, scores) in enumerate(frames, 1):
            ids = tracker.update(boxes, scores)
            for b, s, i in zip(boxes, scores, ids):
                if i >= 0:
                    rows.append([f, i, b[0], b[1], b[2] - b[0], b[3] - b[1], s])
        times.append((time.perf_counter() - start) * 1000 / len(frames))
    return np.array(rows).reshape(-1, 7), float(np.median(times))


class _Detections:
    """The Results-like object Ultralytics' BYTETracker.update reads: conf, xywh (centre, size), cls, masks."""

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray):
        self.xyxy, self.conf, self.cls = xyxy, conf, np.zeros(len(conf))

    @property
    def xywh(self) -> np.ndarray:
        return np.column_stack([(self.xyxy[:, 0] + self.xyxy[:, 2]) / 2, (self.xyxy[:, 1] + self.xyxy[:, 3]) / 2,
                                self.xyxy[:, 2] - self.xyxy[:, 0], self.xyxy[:, 3] - self.xyxy[:, 1]])

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, mask) -> "_Detections":
        return _Detections(self.xyxy[mask], self.conf[mask])


def track_ultralytics(settings: TrackerSettings, frames) -> tuple[np.ndarray, float]:
    """Ultralytics' BYTETracker (run only, in a throw-away venv: AGPL, never imported by cvtool) on the same
    detections and thresholds; its own output boxes (its Kalman states)."""
    from types import SimpleNamespace

    from ultralytics.trackers.byte_tracker import BYTETracker

    args = SimpleNamespace(track_high_thresh=settings.track_high, track_low_thresh=settings.track_low,
                           new_track_thresh=settings.new_track, track_buffer=settings.track_buffer,
                           match_thresh=1 - settings.match_iou, fuse_score=settings.fuse_score)
    times = []
    for _ in range(5):
        tracker = BYTETracker(args)
        rows = []
        start = time.perf_counter()
        for f, (boxes, scores) in enumerate(frames, 1):
            for t in tracker.update(_Detections(boxes, scores)):
                rows.append([f, t[4], t[0], t[1], t[2] - t[0], t[3] - t[1], t[5]])
        times.append((time.perf_counter() - start) * 1000 / len(frames))
    return np.array(rows).reshape(-1, 7), float(np.median(times))


def run_ultralytics(args) -> None:
    """`--ultralytics-out FILE`: this script under the throw-away venv's Python: the grid's rows into FILE."""
    frames = detections_by_frame(load_mot(args.data / "det" / "det.txt"))
    out = {}
    for high in GRID:
        rows, ms = track_ultralytics(TrackerSettings(track_high=high, track_low=round(high / 10, 3), new_track=high),
                                     frames)
        out[f"rows_{high}"], out[f"ms_{high}"] = rows, np.array(ms)
    import ultralytics

    np.savez(args.ultralytics_out, version=np.array(ultralytics.__version__), **out)


def ultralytics_runs(data: Path) -> dict | None:
    """The grid run by Ultralytics' tracker when CVTOOL_ULTRALYTICS_PYTHON names a Python that has it."""
    import subprocess

    python = os.environ.get("CVTOOL_ULTRALYTICS_PYTHON")
    if not python:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "ultralytics.npz"
        subprocess.run([python, __file__, "--data", str(data), "--ultralytics-out", str(target)], check=True,
                       env={**os.environ, "YOLO_OFFLINE": "1"})
        loaded = np.load(target)
        return {key: loaded[key] for key in loaded.files}


def trackeval_scores(gt_dir: Path, results: dict[str, np.ndarray]) -> dict[str, dict]:
    """HOTA, MOTA, IDF1 (and their parts) of each tracker's rows, by TrackEval's MOTChallenge evaluation."""
    import trackeval

    with tempfile.TemporaryDirectory() as tmp:
        for name, rows in results.items():
            folder = Path(tmp) / name / "data"
            folder.mkdir(parents=True)
            with open(folder / f"{SEQUENCE}.txt", "w") as f:
                for r in rows:
                    f.write(f"{int(r[0])},{int(r[1])},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},{r[6]:.4f},"
                            "-1,-1,-1\n")
        evaluator = trackeval.Evaluator({"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                                         "TIME_PROGRESS": False, "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False,
                                         "PLOT_CURVES": False, "DISPLAY_LESS_PROGRESS": True})
        dataset = trackeval.datasets.MotChallenge2DBox({
            "GT_FOLDER": str(gt_dir), "GT_LOC_FORMAT": "{gt_folder}/gt/gt.txt", "TRACKERS_FOLDER": tmp,
            "BENCHMARK": "MOT15", "SEQ_INFO": {SEQUENCE: FRAMES}, "SKIP_SPLIT_FOL": True,
            "TRACKERS_TO_EVAL": list(results), "PRINT_CONFIG": False})
        metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
                   trackeval.metrics.Identity({"PRINT_CONFIG": False})]
        out, _ = evaluator.evaluate([dataset], metrics)
    scores = {}
    for name in results:
        res = out["MotChallenge2DBox"][name][SEQUENCE]["pedestrian"]
        scores[name] = {"HOTA": round(float(np.mean(res["HOTA"]["HOTA"])) * 100, 2),
                        "DetA": round(float(np.mean(res["HOTA"]["DetA"])) * 100, 2),
                        "AssA": round(float(np.mean(res["HOTA"]["AssA"])) * 100, 2),
                        "MOTA": round(float(res["CLEAR"]["MOTA"]) * 100, 2),
                        "IDF1": round(float(res["Identity"]["IDF1"]) * 100, 2),
                        "IDSW": int(res["CLEAR"]["IDSW"]), "FP": int(res["CLEAR"]["CLR_FP"]),
                        "FN": int(res["CLEAR"]["CLR_FN"]), "tracks": int(len(np.unique(results[name][:, 1])))}
    return scores


def motmetrics_scores(gt: np.ndarray, rows: np.ndarray) -> dict:
    """MOTA and IDF1 by py-motmetrics (IoU >= 0.5), the same ground truth: a second opinion on TrackEval's."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for f in range(1, FRAMES + 1):
        g, t = gt[gt[:, 0] == f], rows[rows[:, 0] == f]
        # motmetrics' own iou_matrix calls np.asfarray, gone in NumPy 2: the same distances (1 - IoU, NaN: no match)
        xyxy = lambda r: np.column_stack([r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5]])  # noqa: E731
        iou = box_iou(xyxy(g), xyxy(t))
        dist = np.where(iou >= 0.5, 1 - iou, np.nan)
        acc.update(g[:, 1].astype(int).tolist(), t[:, 1].astype(int).tolist(), dist)
    summary = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches"], name="s")
    return {"MOTA": round(float(summary["mota"]["s"]) * 100, 2), "IDF1": round(float(summary["idf1"]["s"]) * 100, 2),
            "IDSW": int(summary["num_switches"]["s"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--ultralytics-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ultralytics_out is not None:
        return run_ultralytics(args)
    if not (args.data / "gt" / "gt.txt").is_file():
        sys.exit(f"track_mot: {args.data}: no gt/gt.txt (see bench/track_mot.py's docstring for the data)")
    gt_all = load_mot(args.data / "gt" / "gt.txt")
    gt = gt_all[gt_all[:, 6] != 0]
    det = load_mot(args.data / "det" / "det.txt")
    frames = detections_by_frame(det)

    ultralytics = ultralytics_runs(args.data)
    grid = []
    for high in GRID:
        settings = TrackerSettings(track_high=high, track_low=round(high / 10, 3), new_track=high)
        runs = {name: track(name, settings, frames) for name in TRACKERS}
        if ultralytics is not None:
            runs["ultralytics_bytetrack"] = (ultralytics[f"rows_{high}"], float(ultralytics[f"ms_{high}"]))
        scores = trackeval_scores(args.data, {name: rows for name, (rows, _) in runs.items()})
        for name, (rows, ms) in runs.items():
            grid.append({"tracker": name, "track_high": high, "track_low": settings.track_low, **scores[name],
                         "motmetrics": motmetrics_scores(gt, rows), "ms_per_frame": round(ms, 3)})
            print(grid[-1], flush=True)
    best = {name: max((g for g in grid if g["tracker"] == name), key=lambda g: g["HOTA"])
            for name in dict.fromkeys(g["tracker"] for g in grid)}
    write_results("track_mot", {
        "data": {"sequence": f"MOT15 {SEQUENCE} (train)", "frames": FRAMES, "gt_boxes_scored": int(len(gt)),
                 "gt_ids": int(len(np.unique(gt[:, 1]))), "detections": int(len(det)), "detector": "ACF (public)",
                 "score_mapping": f"score / {SCORE_SCALE:g}, clipped to [0, 1]", "source": str(args.data)},
        "settings": {"match_iou": TrackerSettings().match_iou, "track_buffer": TrackerSettings().track_buffer,
                     "new_track": "= track_high", "fuse_score": True},
        "ultralytics": (f"ultralytics {ultralytics['version']} BYTETracker, run in a throw-away venv "
                        "(CVTOOL_ULTRALYTICS_PYTHON), same detections and thresholds, its own (Kalman) output boxes"
                        if ultralytics is not None else "not run (set CVTOOL_ULTRALYTICS_PYTHON)"),
        "best_by_hota": best, "grid": grid, "machine": machine(),
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    })


if __name__ == "__main__":
    main()
