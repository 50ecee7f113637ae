"""dlib's landmark predictors and face chips, ported: agreement with dlib and speed against it.

    python bench/face_landmarks.py [--random-boxes 200] [--repeats 30]

Needs dlib (pip install dlib-bin; only here, never in cvtool) and scikit-image. Images: skimage's
astronaut at 1x, 2x and 3x, rotated 90 degrees, and its gray version. Boxes: dlib's HOG detections
on each, jittered copies, and random boxes (many partly outside the image). Writes
bench/results/face_landmarks.json.

1. differing landmark points (5- and 68-point models), ours vs dlib.shape_predictor;
2. differing chip pixels, ours vs dlib.get_face_chip(size=150, padding=0.25) (pyramid path included);
3. time per face: our predictor with 1 face per call and with 16, dlib per face; chips likewise;
4. parse time of the .dat files (fast parser, and the cached load);
5. Haar boxes (if this OpenCV has them): how far the landmarks move against dlib HOG boxes.

Timings are medians over --repeats calls after a warm-up, ours and dlib's taking turns
(cvtool.bench.time_calls), on whatever else the machine is doing: the load average at start and end is
recorded beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import time_calls, timed  # noqa: E402
from cvtool.errors import WeightsError  # noqa: E402
from cvtool.models.dlib import shape_predictor as sp  # noqa: E402
from cvtool.models.dlib.convert import face_model_path  # noqa: E402
from cvtool.ops import face_align  # noqa: E402


def median_ms(calls: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds of each call, the calls taking turns after one warm-up each."""
    return {name: 1000 * float(np.median(times)) for name, times in time_calls(calls, iters=repeats, warmup=1).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-boxes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import dlib
    import skimage.data

    base = skimage.data.astronaut()
    images = {
        "astronaut": base,
        "astronaut_2x": cv2.resize(base, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR),
        "astronaut_3x": cv2.resize(base, None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR),
        "astronaut_rot90": np.ascontiguousarray(np.rot90(base)),
        "astronaut_gray": cv2.cvtColor(base, cv2.COLOR_RGB2GRAY),
    }
    hog = dlib.get_frontal_face_detector()
    rng = np.random.default_rng(0)
    boxes: dict[str, list] = {}
    face_boxes: dict[str, list] = {}
    for name, image in images.items():
        found = [(r.left(), r.top(), r.right(), r.bottom()) for r in hog(image, 1)]
        jitter = [(l + dx, t + dy, r + dx + s, b + dy + s) for (l, t, r, b) in found
                  for dx, dy, s in rng.integers(-12, 13, size=(3, 3))]
        h, w = image.shape[:2]
        xy = rng.integers(-w // 5, w, size=(args.random_boxes, 2))
        side = rng.integers(20, max(h, w) // 2, size=args.random_boxes)
        rand = [(int(x), int(y), int(x + s), int(y + s)) for (x, y), s in zip(xy, side)]
        face_boxes[name] = [tuple(int(v) for v in box) for box in found + jitter]
        boxes[name] = face_boxes[name] + rand

    figures: dict = {"load_average_at_start": os.getloadavg(), "dlib_version": dlib.__version__, "images": {k: list(v.shape) for k, v in images.items()}}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CVTOOL_CACHE"] = cache
        for name in ("5", "68"):
            path = face_model_path(sp.PACKAGED[name])
            with timed() as parse:
                model = sp.parse_shape_predictor(path)
            parse_s = parse.seconds
            sp.load_shape_predictor(name)  # parse + write the cache
            sp._memo.clear()
            with timed() as cached:
                sp.load_shape_predictor(name)
            cached_s = cached.seconds
            reference = dlib.shape_predictor(str(path))

            points = differing = 0
            faces_differing = 0
            chip_pixels = chip_differing = chips = 0
            pyramid_chips = 0
            for key, image in images.items():
                ours = sp.predict(model, image, boxes[key])
                theirs = np.array([[(p.x, p.y) for p in reference(image, dlib.rectangle(*b)).parts()]
                                   for b in boxes[key]])
                diff = (ours != theirs).any(-1)
                points += diff.size
                differing += int(diff.sum())
                faces_differing += int(diff.any(1).sum())
                if image.ndim == 3:
                    for box, pts in zip(face_boxes[key], ours):
                        shape = reference(image, dlib.rectangle(*box))
                        a = face_align.face_chip(image, pts)
                        b = dlib.get_face_chip(image, shape, size=150, padding=0.25)
                        chips += 1
                        chip_pixels += a.shape[0] * a.shape[1]
                        chip_differing += int((a != b).any(-1).sum())
                        details = face_align.chip_details(pts)
                        pyramid_chips += int((details.rect[2] - details.rect[0] + 1) ** 2 / 4 > 150 * 150)

            image = images["astronaut"]
            face = face_boxes["astronaut"][0]
            batch = (face_boxes["astronaut"] * 16)[:16]
            pts = sp.predict(model, image, [face])[0]
            shape = reference(image, dlib.rectangle(*face))
            big = images["astronaut_3x"]
            big_face = face_boxes["astronaut_3x"][0]
            big_pts = sp.predict(model, big, [big_face])[0]
            big_shape = reference(big, dlib.rectangle(*big_face))
            timing = median_ms({
                "ours_ms_per_face_batch1": lambda: sp.predict(model, image, [face]),
                "ours_ms_per_face_batch16": lambda: sp.predict(model, image, batch),
                "dlib_ms_per_face": lambda: reference(image, dlib.rectangle(*face)),
                "ours_chip_ms": lambda: face_align.face_chip(image, pts),
                "dlib_chip_ms": lambda: dlib.get_face_chip(image, shape, size=150, padding=0.25),
                "ours_chip_ms_3x_pyramid": lambda: face_align.face_chip(big, big_pts),
                "dlib_chip_ms_3x_pyramid": lambda: dlib.get_face_chip(big, big_shape, size=150, padding=0.25),
            }, args.repeats)
            timing["ours_ms_per_face_batch16"] /= 16
            figures[f"{name}_point"] = {
                "parse_s": round(parse_s, 3),
                "cached_load_s": round(cached_s, 3),
                "boxes": points // int(name),
                "points": points,
                "differing_points": differing,
                "faces_with_a_differing_point": faces_differing,
                "chips": chips,
                "chips_through_pyramid": pyramid_chips,
                "chip_pixels": chip_pixels,
                "differing_chip_pixels": chip_differing,
                **{k: round(v, 3) for k, v in timing.items()},
            }
        os.environ.pop("CVTOOL_CACHE", None)

    figures["load_average_at_end"] = os.getloadavg()
    figures["haar"] = haar_figures(images, dlib, hog, args.repeats)
    write_results("face_landmarks", figures)


def haar_figures(images, dlib, hog, repeats) -> dict:
    from cvtool.models import face_haar

    try:
        detector = face_haar.HaarFaceDetector()
    except WeightsError as exc:
        return {"available": False, "reason": str(exc), "opencv": cv2.__version__}
    model = sp.load_shape_predictor("5")
    shifts, sizes = [], []
    for key in ("astronaut", "astronaut_2x", "astronaut_3x"):
        image = images[key]
        ours = [b[:4] for b in detector.detect_one(image)]
        theirs = [(r.left(), r.top(), r.right(), r.bottom()) for r in hog(image, 1)]
        for box in theirs:
            centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
            near = [b for b in ours if np.linalg.norm(np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]) - centre)
                    < (box[2] - box[0]) / 2]
            if not near:
                continue
            a = sp.predict(model, image, [box])[0]
            b = sp.predict(model, image, [near[0]])[0]
            eye_dist = np.linalg.norm(a[0:2].mean(0) - a[2:4].mean(0))
            shifts.append(float(np.linalg.norm(a - b, axis=1).max() / eye_dist))
            sizes.append(((near[0][2] - near[0][0]) / (box[2] - box[0]),
                          ((near[0][1] + near[0][3]) - (box[1] + box[3])) / 2 / (box[3] - box[1])))
    image = images["astronaut"]
    return {
        "available": True,
        "opencv": cv2.__version__,
        "ms_512px": round(median_ms({"haar": lambda: detector.detect_one(image)}, repeats)["haar"], 2),
        "hog_faces_matched": len(shifts),
        "max_5pt_shift_over_eye_distance": [round(s, 4) for s in shifts],
        "haar_width_over_hog_width": [round(s[0], 3) for s in sizes],
        "haar_centre_dy_over_hog_height": [round(s[1], 3) for s in sizes],
    }


if __name__ == "__main__":
    main()
