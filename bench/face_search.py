"""verify-face's coarse-to-fine face search against the exhaustive one (issue 31), on real photos.

    python bench/face_search.py [--faces ../shared/datasets/faces] [--threads 2]

Every photo of --faces (folders of one person each) through one engine as `verify-face` runs by default
(dlib's networks exported to ONNX), twice in turns: the exhaustive search (every pyramid level, what
`--face-index` and every verdict before issue 31 used) and `FaceEngine.find_main`. Per photo: the face chosen
(or the refusal), its box and landmarks, the detector's seconds, and where the search stopped; then every pair
at the default threshold, both ways: verdicts, distances. The load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _results import write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "datasets" / "faces")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.faces.is_dir():
        sys.exit(f"{args.faces} is not here: the shared face photos sit beside the project root")

    import cvtool
    from cvtool.device import set_threads
    from cvtool.errors import InputError
    from cvtool.pipelines import face

    set_threads(args.threads)
    engine = cvtool.FaceVerifier(backend="onnxruntime", device="cpu").engine
    photos = sorted(p for p in args.faces.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    load_before = os.getloadavg()
    rows, chosen = [], {"exhaustive": {}, "coarse_to_fine": {}}
    for path in photos:
        rgb = engine.read(path)
        row = {"photo": str(path.relative_to(args.faces))}
        for way in ("exhaustive", "coarse_to_fine"):
            start = time.perf_counter()
            faces, side = (engine.find([rgb])[0], None) if way == "exhaustive" else engine.find_main(rgb, str(path))
            seconds = time.perf_counter() - start
            try:
                pick = face.choose_face(faces, None, str(path))
                engine.describe([rgb], [[pick]])
                chosen[way][path] = pick
                answer = [round(v, 2) for v in pick.box]
            except InputError as exc:
                answer = exc.reason
            row[way] = {"seconds": round(seconds, 3), "faces": len(faces), "chosen": answer,
                        "searched_from_px": None if side is None else round(side)}
        same = (row["exhaustive"]["chosen"] == row["coarse_to_fine"]["chosen"]
                and (path not in chosen["exhaustive"]
                     or np.array_equal(chosen["exhaustive"][path].landmarks, chosen["coarse_to_fine"][path].landmarks)))
        row["same_choice"] = same
        rows.append(row)
        print(f"{row['photo']}: {row['exhaustive']['seconds']:.2f} s -> {row['coarse_to_fine']['seconds']:.2f} s "
              f"{'same' if same else 'DIFFERENT'}", file=sys.stderr)
    load_after = os.getloadavg()

    pairs = verdict_changes = 0
    largest = 0.0
    for a, b in itertools.combinations(sorted(chosen["exhaustive"]), 2):
        if a not in chosen["coarse_to_fine"] or b not in chosen["coarse_to_fine"]:
            continue
        d_full = face.distance(chosen["exhaustive"][a].descriptor, chosen["exhaustive"][b].descriptor)
        d_main = face.distance(chosen["coarse_to_fine"][a].descriptor, chosen["coarse_to_fine"][b].descriptor)
        pairs += 1
        largest = max(largest, abs(d_full - d_main))
        verdict_changes += (d_full < engine.threshold) != (d_main < engine.threshold)
    full_s = [r["exhaustive"]["seconds"] for r in rows]
    main_s = [r["coarse_to_fine"]["seconds"] for r in rows]
    figures = {
        "threads": args.threads, "load_average": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "photos": len(photos), "same_choice": sum(r["same_choice"] for r in rows),
        "pairs": pairs, "verdicts_changed": int(verdict_changes), "largest_distance_change": largest,
        "detector_s_total": {"exhaustive": round(sum(full_s), 2), "coarse_to_fine": round(sum(main_s), 2)},
        "detector_s_median": {"exhaustive": round(statistics.median(full_s), 3),
                              "coarse_to_fine": round(statistics.median(main_s), 3)},
        "speedup_total": round(sum(full_s) / sum(main_s), 2),
        "per_photo": rows,
    }
    print(f"{figures['same_choice']}/{len(photos)} photos: the same face chosen; {pairs} pairs: "
          f"{verdict_changes} verdicts changed, largest distance change {largest:.2e}; detector "
          f"{sum(full_s):.1f} s -> {sum(main_s):.1f} s ({figures['speedup_total']}x)")
    print(write_results("face_search", figures))


if __name__ == "__main__":
    main()
