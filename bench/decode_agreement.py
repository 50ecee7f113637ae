"""What reduced-size JPEG decoding changes in the records (issue 30): the same networks on the same real photos,
`full_decode=True` (the default) against `full_decode=False` (libjpeg's DCT scaling wherever the rule allows it).

    python bench/decode_agreement.py --classify-weights CLS.pt --detect-weights YOLO.pt [--large 200]

Photos: ../shared/datasets (Oxford-IIIT Pet, raccoon, HELEN faces, photos) as they are (their own sizes), and the
same photos cut and resized to 1920x1080 JPEG q90 (`--large` of them), where the rule reduces more. Networks that
run offline: a classifier and our YOLO detector trained by `cvtool train` (the Makefile target bench-decode-
agreement trains both, a few CPU minutes; their training commands are recorded below). For each: the images the
rule decoded smaller, and on those
- classify: top-1 agreement, and the mean / largest change of the top-1 probability;
- detect: boxes of the full decode (at the model's confidence) matched one-to-one to the reduced decode's of the
  same class by IoU (greedy, best first): the fraction matched at IoU >= 0.5, their mean IoU, and the boxes each
  found.
The face detector (`--model face`) pyramids the full image itself and is never reduced; no offline segmenter
resizes its input (our U-Net runs at the image's own size and is never reduced): both are recorded as such.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _results import write_results  # noqa: E402
from host_ceiling import fit  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets"
SOURCES = ("pets_localization/images", "raccoon/images", "helen_landmarks/images", "photos")


def photos() -> list[Path]:
    return sorted(p for folder in SOURCES for p in (DATA / folder).glob("*") if p.suffix.lower() in (".jpg", ".jpeg"))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(full: list[dict], reduced: list[dict]) -> list[float]:
    """Greedy one-to-one matching of the same label, best IoU first: the IoU of each full-decode box's partner
    (0 for a box left without one)."""
    pairs = sorted(((iou(f["box"], r["box"]), i, j) for i, f in enumerate(full) for j, r in enumerate(reduced)
                    if f["label"] == r["label"]), reverse=True)
    taken_f, taken_r, best = set(), set(), [0.0] * len(full)
    for value, i, j in pairs:
        if value > 0 and i not in taken_f and j not in taken_r:
            taken_f.add(i), taken_r.add(j)
            best[i] = value
    return best


def records(obj, files: list[str]) -> list[dict]:
    out = [r.record for r in obj.run(files, batch_size=8, workers=2)]
    bad = [r for r in out if "error" in r]
    if bad:
        raise RuntimeError(f"{bad[0]['path']}: {bad[0]['error']}")
    return out


def factors_of(obj, files: list[str]) -> list[int]:
    from cvtool.io.image import read_reduced

    reduction = obj._make_pipeline(None).reduction
    return [read_reduced(f, reduction=reduction).factor if reduction else 1 for f in files]


def classify_agreement(weights: str, sets: dict[str, list[str]]) -> dict:
    import cvtool

    full_clf = cvtool.Classifier(weights=weights, device="cpu", full_decode=True)
    reduced_clf = full_clf.with_options(full_decode=False)
    out = {"weights": Path(weights).name, "preprocess": full_clf.loaded.preprocess.to_dict(),
           "classes": full_clf.classes}
    for name, files in sets.items():
        factors = factors_of(reduced_clf, files)
        chosen = [f for f, k in zip(files, factors) if k > 1]
        if not chosen:
            out[name] = {"images": len(files), "reduced": 0}
            continue
        full, reduced = records(full_clf, chosen), records(reduced_clf, chosen)
        same = [a["result"]["top_k"][0]["index"] == b["result"]["top_k"][0]["index"] for a, b in zip(full, reduced)]
        dprob = [abs(a["result"]["top_k"][0]["prob"] - next(e["prob"] for e in b["result"]["top_k"]
                                                           if e["index"] == a["result"]["top_k"][0]["index"]))
                 for a, b in zip(full, reduced)]
        out[name] = {"images": len(files), "reduced": len(chosen),
                     "factors": {str(k): factors.count(k) for k in sorted(set(factors))},
                     "top1_agreement": round(sum(same) / len(same), 4), "top1_disagreements": len(same) - sum(same),
                     "top1_prob_change": {"mean": round(statistics.mean(dprob), 4), "max": round(max(dprob), 4)}}
        print(f"classify {name}: {out[name]}", file=sys.stderr)
    return out


def detect_agreement(weights: str, sets: dict[str, list[str]]) -> dict:
    import cvtool

    full_det = cvtool.Detector(weights=weights, device="cpu", full_decode=True)
    reduced_det = full_det.with_options(full_decode=False)
    out = {"weights": Path(weights).name, "conf": full_det.conf, "img_size": int(full_det.loaded.module.img_size)}
    for name, files in sets.items():
        factors = factors_of(reduced_det, files)
        chosen = [f for f, k in zip(files, factors) if k > 1]
        if not chosen:
            out[name] = {"images": len(files), "reduced": 0}
            continue
        full, reduced = records(full_det, chosen), records(reduced_det, chosen)
        ious: list[float] = []
        sizes_equal = all(a["result"]["size"] == b["result"]["size"] for a, b in zip(full, reduced))
        for a, b in zip(full, reduced):
            ious += match(a["result"]["detections"], b["result"]["detections"])
        matched = [v for v in ious if v >= 0.5]
        n_full = sum(len(a["result"]["detections"]) for a in full)
        n_reduced = sum(len(b["result"]["detections"]) for b in reduced)
        out[name] = {"images": len(files), "reduced": len(chosen),
                     "factors": {str(k): factors.count(k) for k in sorted(set(factors))},
                     "boxes_full": n_full, "boxes_reduced": n_reduced,
                     "matched_at_iou_0.5": round(len(matched) / n_full, 4) if n_full else None,
                     "mean_iou_of_matched": round(statistics.mean(matched), 4) if matched else None,
                     "median_iou_all_full_boxes": round(statistics.median(ious), 4) if ious else None,
                     "record_sizes_equal": sizes_equal}
        print(f"detect {name}: {out[name]}", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classify-weights", help="a `cvtool train classify` checkpoint")
    parser.add_argument("--classify-train-command", default="", help="how it was trained (recorded)")
    parser.add_argument("--detect-weights", help="a `cvtool train detect` checkpoint (our YOLO)")
    parser.add_argument("--detect-train-command", default="", help="how it was trained (recorded)")
    parser.add_argument("--large", type=int, default=200, help="photos also cut and resized to 1920x1080")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import cv2
    import torch

    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    found = photos()
    if not found:
        sys.exit(f"skipped: no photos under {DATA} (the shared data sets sit beside the project)")
    figures: dict = {"sources": list(SOURCES), "load_average_start": [round(x, 2) for x in os.getloadavg()],
                     "threads": args.threads,
                     "face_detector": "never reduced: --model face pyramids the full image itself (the pipeline "
                                      "cannot know its input size); its records are those of the full decode",
                     "segment": "not measured: no segmenter that runs offline here resizes its input (our U-Net runs "
                                "at the image's own size, so it is never reduced); the reduced path's masks are "
                                "checked to be at the photo's size by tests/test_decode_reduced.py"}
    with tempfile.TemporaryDirectory(prefix="cvtool-agree-") as tmp:
        large = []
        for i, path in enumerate(found[:: max(1, len(found) // args.large)][: args.large]):
            target = Path(tmp) / f"{i:04d}.jpg"
            cv2.imwrite(str(target), fit(cv2, cv2.imread(str(path)), 1920, 1080), [cv2.IMWRITE_JPEG_QUALITY, 90])
            large.append(str(target))
        by_folder = {folder.split("/")[0]: [str(p) for p in found if str(p).startswith(str(DATA / folder))]
                     for folder in SOURCES}
        sets = {**{f"{k}_own_size": v for k, v in by_folder.items()}, "all_at_1920x1080": large}
        if args.classify_weights:
            figures["classify"] = classify_agreement(args.classify_weights, sets)
            figures["classify"]["train_command"] = args.classify_train_command
        if args.detect_weights:
            figures["detect"] = detect_agreement(args.detect_weights, sets)
            figures["detect"]["train_command"] = args.detect_train_command
    figures["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(write_results("decode_agreement", figures))


if __name__ == "__main__":
    main()
