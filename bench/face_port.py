"""How faithful and how fast cvtool's PyTorch port of dlib's face networks is, against dlib itself.

    python bench/face_port.py [--threads 1]   # needs dlib (pip install dlib-bin, the `compare` extra)

Torch runs on --threads CPU threads (default 1: dlib-bin's CPU build uses one core, so this compares like
with like; on a shared, loaded machine more threads can be slower, see load_average_1min in the output).

Same machine, same images, CPU. Images: skimage's astronaut (512 x 512), its mirror, a 2x enlargement,
a side-by-side pair, a half-size copy (upsample 1), and up to 6 photos from ../shared/datasets/faces
(scaled so the longer side is at most 800 px), when that folder is there.
- Detector: boxes and confidences of `MmodFaceDetector` vs `dlib.cnn_face_detection_model_v1`, and the
  time per image of each (ours: median of 3 after a warm-up; dlib: one run, it is slow). Timed with
  cvtool.bench (time_calls, timed).
- ResNet: chips cut by dlib's own 5-point landmarks + `dlib.get_face_chip` from dlib's boxes (plus random
  chips), descriptors of `FaceResNet` vs `compute_face_descriptor`; time per chip at batch 1 and 32.
- pyramid_up: our plain float32 resize vs dlib's `resize_image` to (2h+1) x (2w+2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import time_calls, timed  # noqa: E402
from cvtool.models.dlib.convert import face_models_dir  # noqa: E402
from cvtool.models.face_mmod import MMOD_FILE, MmodFaceDetector, load_mmod_net, pyramid_up  # noqa: E402
from cvtool.models.face_resnet import RESNET_FILE, load_face_resnet  # noqa: E402

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "faces"
SHARED_PICKS = ["obama/obama1.jpg", "obama/obama2.jpg", "biden/biden1.jpg", "deepface_id01/img1.jpg",
                "deepface_id02/img26.jpg", "deepface_id07/img29.jpg"]


def _median_time(fn, repeats: int = 3) -> float:
    return statistics.median(time_calls({"fn": fn}, iters=repeats, warmup=1)["fn"])


def test_images() -> list[tuple[str, np.ndarray, int]]:
    import cv2
    from skimage import data

    astro = data.astronaut()
    images = [
        ("astronaut", astro, 0),
        ("astronaut_mirror", np.ascontiguousarray(astro[:, ::-1]), 0),
        ("astronaut_pair", np.concatenate([astro, astro[:, ::-1]], axis=1), 0),
        ("astronaut_2x", cv2.resize(astro, (1024, 1024), interpolation=cv2.INTER_CUBIC), 0),
        ("astronaut_half_up1", np.ascontiguousarray(astro[::2, ::2]), 1),
    ]
    if SHARED_FACES.is_dir():
        for name in SHARED_PICKS:
            bgr = cv2.imread(str(SHARED_FACES / name))
            if bgr is None:
                continue
            scale = min(1.0, 800 / max(bgr.shape[:2]))
            if scale < 1:
                bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            images.append((name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 0))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, like dlib)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import dlib
    except ImportError:
        sys.exit("bench/face_port.py compares against dlib: pip install dlib-bin")
    models = face_models_dir()
    torch.set_grad_enabled(False)
    resnet = load_face_resnet()
    detector = MmodFaceDetector(load_mmod_net())
    dlib_detector = dlib.cnn_face_detection_model_v1(str(models / MMOD_FILE))
    dlib_shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    dlib_recogniser = dlib.face_recognition_model_v1(str(models / RESNET_FILE))

    per_image, chips = [], []
    box_total = box_same = 0
    conf_deltas: list[float] = []
    for name, image, upsample in test_images():
        ours = detector.detect([image], upsample=upsample)[0]
        ours_s = _median_time(lambda: detector.detect([image], upsample=upsample))
        with timed() as clock:
            theirs = dlib_detector(image, upsample)
        dlib_s = clock.seconds
        theirs_t = [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence) for d in theirs]
        same = [o for o in ours if any(o[:4] == t[:4] for t in theirs_t)]
        box_total += max(len(ours), len(theirs_t))
        box_same += len(same)
        conf_deltas += [abs(o[4] - t[4]) for o in ours for t in theirs_t if o[:4] == t[:4]]
        per_image.append({"image": name, "size": list(image.shape[:2]), "upsample": upsample,
                          "faces_ours": len(ours), "faces_dlib": len(theirs_t), "identical_boxes": len(same),
                          "ms_ours": round(ours_s * 1000, 1), "ms_dlib": round(dlib_s * 1000, 1)})
        print(per_image[-1], file=sys.stderr)
        for d in theirs:
            chips.append(dlib.get_face_chip(image, dlib_shape(image, d.rect)))
    real_chips = len(chips)
    rng = np.random.default_rng(0)
    while len(chips) < 32:
        chips.append(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))

    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).contiguous()
    ours_desc = resnet(batch).numpy()
    dlib_desc = np.array(dlib_recogniser.compute_face_descriptor(chips))
    delta = np.abs(ours_desc - dlib_desc)
    n_real = real_chips
    dist_ours = np.linalg.norm(ours_desc[:n_real, None] - ours_desc[None, :n_real], axis=2)
    dist_dlib = np.linalg.norm(dlib_desc[:n_real, None] - dlib_desc[None, :n_real], axis=2)

    one = batch[:1]
    ms_b1 = _median_time(lambda: resnet(one), repeats=10) * 1000
    ms_b32 = _median_time(lambda: resnet(batch), repeats=3) * 1000 / len(chips)
    dlib_b1 = _median_time(lambda: dlib_recogniser.compute_face_descriptor(chips[0]), repeats=5) * 1000
    dlib_b32 = _median_time(lambda: dlib_recogniser.compute_face_descriptor(chips), repeats=1) * 1000 / len(chips)

    from skimage import data

    astro = data.astronaut()
    ours_up = pyramid_up(torch.from_numpy(astro).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    dlib_up = dlib.resize_image(astro, 1025, 1026)  # RGB: truncates, as pyramid_up does (grey rounds)
    up_diff = np.abs(ours_up.astype(int) - dlib_up.astype(int))

    detected = [r for r in per_image if r["faces_dlib"]]
    figures = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "dlib_version": dlib.__version__,
        "resnet": {
            "chips": len(chips),
            "real_face_chips": real_chips,
            "max_abs_diff_vs_dlib": float(delta.max()),
            "max_abs_diff_real_chips": float(delta[:real_chips].max()) if real_chips else None,
            "max_pairwise_distance_diff": float(np.abs(dist_ours - dist_dlib).max()) if real_chips else None,
            "ms_per_chip_batch1_ours": round(ms_b1, 2),
            "ms_per_chip_batch32_ours": round(ms_b32, 2),
            "ms_per_chip_batch1_dlib": round(dlib_b1, 2),
            "ms_per_chip_batch32_dlib": round(dlib_b32, 2),
        },
        "detector": {
            "images": len(per_image),
            "boxes": box_total,
            "identical_boxes": box_same,
            "max_confidence_diff": max(conf_deltas) if conf_deltas else None,
            "mean_ms_per_image_ours": round(statistics.mean(r["ms_ours"] for r in per_image), 1),
            "mean_ms_per_image_dlib": round(statistics.mean(r["ms_dlib"] for r in per_image), 1),
            "speedup_vs_dlib": round(sum(r["ms_dlib"] for r in per_image) / sum(r["ms_ours"] for r in per_image), 1),
            "images_with_faces": len(detected),
            "per_image": per_image,
        },
        "pyramid_up_vs_dlib_resize_image": {
            "image": "astronaut 512x512 -> 1025x1026",
            "pixels_differing_pct": round(100 * float((up_diff > 0).mean()), 2),
            "max_grey_level_diff": int(up_diff.max()),
        },
    }
    write_results("face_port", figures)


if __name__ == "__main__":
    main()
