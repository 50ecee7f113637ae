"""Counting and overhead on a generated clip with known trajectories, through the whole `cvtool track` pipeline
with a real detector (the face detector, on four real face photos from ../shared/datasets/faces moving across a
480 x 270 frame).

Counts: the line x = 240 drawn top to bottom and the zone x >= 300, y >= 135 (bottom right). Hand count of the
trajectories: face A goes left to right through the line (1 `out`), B right to left (1 `in`) starting inside the
zone and leaving it (1 exit, no entry: born inside), C stops short of the line, D comes down into the zone (1 entry)
and is the one inside at the end. The expected counts are also computed from the generator's own centres (the
frames where each face's centre changes side), and both are compared with cvtool's records.

Overhead: each frame of the clip through `Detector("face")` and `Tracker("face")` in turns (alternating which goes
first), ms per frame and the median of the per-frame ratios; and the tracker's and counters' own step
(TrackPipeline._step) timed on the detector's boxes: its share of detection time is the work tracking adds
(target < 5 %).

    make eval-track        # writes bench/results/track_count.json (and track_mot.json)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import machine, write_results  # noqa: E402

FACES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "faces"
PHOTOS = ("obama/obama1.jpg", "biden/biden1.jpg", "deepface_id01", "deepface_id02")
W, H, FRAMES, SIDE = 480, 270, 20, 80
LINE = (240, 0, 240, 270)
ZONE = (300, 135, 480, 135, 480, 270, 300, 270)
HAND_COUNT = {"line": {"in": 1, "out": 1}, "zone": {"inside": 1, "entered": 1, "exited": 1}}


def photo(entry: str) -> Path:
    path = FACES / entry
    return path if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".png"))[0]


def face_crops(detector) -> list[np.ndarray]:
    """Each photo's face (the detector's own box, 40 % margin), SIDE x SIDE."""
    import cv2

    from cvtool.io.image import read_image

    crops = []
    for entry in PHOTOS:
        image = read_image(str(photo(entry)))
        scale = 800 / max(image.shape[:2])
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
        x1, y1, x2, y2 = (int(v) for v in max(detector(small).detections, key=lambda d: d["score"])["box"])
        m = int((x2 - x1) * 0.4)
        crop = small[max(0, y1 - m):y2 + m, max(0, x1 - m):x2 + m]
        crops.append(cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_AREA))
    return crops


def top_left(face: int, f: int) -> tuple[int, int]:
    t = f / (FRAMES - 1)
    return {0: (int(10 + 290 * t), 5),      # A: left to right across the line, top row
            1: (int(300 - 280 * t), 185),   # B: right to left across the line, bottom row, out of the zone
            2: (int(10 + 100 * t), 95),     # C: short of the line, middle row
            3: (400, int(5 + 180 * t))}[face]  # D: down the right edge into the zone


def frames(crops) -> list[np.ndarray]:
    out = []
    for f in range(FRAMES):
        canvas = np.full((H, W, 3), 128, np.uint8)
        for i, crop in enumerate(crops):
            x, y = top_left(i, f)
            canvas[y:y + SIDE, x:x + SIDE] = crop
        out.append(canvas)
    return out


def counts_from_trajectories() -> dict:
    """The counts the definitions give on the generator's own centres (per object, each direction once)."""
    line, entered, exited = {"in": 0, "out": 0}, 0, 0
    for i in range(4):
        centres = [(x + SIDE / 2, y + SIDE / 2) for x, y in (top_left(i, f) for f in range(FRAMES))]
        sides = [cx > LINE[0] for cx, _ in centres]
        if any(not a and b for a, b in zip(sides, sides[1:])):
            line["out"] += 1  # left to right of a line drawn downwards
        if any(a and not b for a, b in zip(sides, sides[1:])):
            line["in"] += 1
        inside = [cx >= 300 and cy >= 135 for cx, cy in centres]
        entered += any(not a and b for a, b in zip(inside, inside[1:]))
        exited += any(a and not b for a, b in zip(inside, inside[1:]))
    last = [(x + SIDE / 2, y + SIDE / 2) for x, y in (top_left(i, FRAMES - 1) for i in range(4))]
    return {"line": line, "zone": {"inside": sum(cx >= 300 and cy >= 135 for cx, cy in last), "entered": entered,
                                   "exited": exited}}


def main() -> None:
    import cv2

    import cvtool
    from cvtool.device import set_threads

    threads = int(os.environ.get("CVTOOL_BENCH_THREADS", "1"))
    set_threads(threads)
    if not FACES.is_dir():
        sys.exit(f"track_count: needs the shared face photos in {FACES}")
    detector = cvtool.Detector("face", threads=threads)
    clip = frames(face_crops(detector))
    with tempfile.TemporaryDirectory() as tmp:
        video = str(Path(tmp) / "faces.avi")
        writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
        for frame in clip:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()

        tracker = cvtool.Tracker("face", line=LINE, zone=ZONE, threads=threads)
        records = [r.to_dict() for r in tracker.stream(video)]  # the counts: the whole pipeline, from the file
        detected = [r.to_dict() for r in detector.stream(video)]

    # overhead, frame by frame: the same frame through the detector and through the tracker (detector + tracker
    # step), in turns and in alternating order, so that the machine's load falls on both alike
    paired: dict[str, list[float]] = {"detect": [], "track": []}
    for repeat in range(2):
        tracker.reset()
        for f, frame in enumerate(clip):
            order = ("detect", "track") if (f + repeat) % 2 == 0 else ("track", "detect")
            for name in order:
                start = time.perf_counter()
                (detector if name == "detect" else tracker)(frame)
                paired[name].append((time.perf_counter() - start) * 1000)
    ratios = np.array(paired["track"]) / np.array(paired["detect"])

    # the tracker's own step on the detector's boxes, many times (it is far below the timer's noise per frame)
    pipeline = tracker._make_pipeline(None)
    results = [r["result"] for r in detected]
    step_ms = []
    for _ in range(20):
        pipeline.start("clip")
        start = time.perf_counter()
        for result in results:
            pipeline._step(result)
        step_ms.append((time.perf_counter() - start) * 1000 / FRAMES)
    step = float(np.median(step_ms))
    detect_ms, track_ms = float(np.median(paired["detect"])), float(np.median(paired["track"]))

    final = records[-1]["result"]["counts"]
    expected = counts_from_trajectories()
    ids = sorted({d["track_id"] for r in records for d in r["result"]["detections"]})
    write_results("track_count", {
        "clip": {"frames": FRAMES, "size": [W, H], "faces": len(PHOTOS), "photos": list(PHOTOS), "line": LINE,
                 "zone": ZONE, "detector": "face (dlib MMOD CNN)"},
        "counts": {"cvtool": final, "hand_count": HAND_COUNT, "from_trajectories": expected,
                   "exact": final == HAND_COUNT == expected},
        "track_ids": ids, "boxes_per_frame": [len(r["result"]["detections"]) for r in records],
        "speed": {"detect_ms_per_frame_median": round(detect_ms, 2), "track_ms_per_frame_median": round(track_ms, 2),
                  "paired_overhead_pct_median": round((float(np.median(ratios)) - 1) * 100, 2),
                  "paired_overhead_pct_iqr": [round((float(q) - 1) * 100, 2) for q in np.percentile(ratios, [25, 75])],
                  "frames_timed": int(len(ratios)),
                  "tracker_step_ms_per_frame": round(step, 4),
                  "tracker_step_pct_of_detection": round(step / detect_ms * 100, 4),
                  "note": "paired: each frame through Detector('face') and Tracker('face') (detector + tracker step "
                          "+ counters) in turns; the step alone (TrackPipeline._step on the detector's boxes, "
                          "median of 20 passes) is the work tracking adds"},
        "threads": threads, "machine": machine(),
    })


if __name__ == "__main__":
    main()
