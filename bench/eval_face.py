"""Verification accuracy of the pretrained face chain (dlib's models, ported) on real photos.

    python bench/eval_face.py [--detector mmod|haar]

Needs ../shared/datasets/faces (15 people, 2-8 photos each) and faces_multi. Every photo is embedded
once (the clearly largest face; an ambiguous or missing face is reported, not guessed); then every
same-person and different-person pair is judged at dlib's threshold 0.6. Also: what the chain does
with the odd inputs in faces_multi (several faces, a face cut by the border, an RGBA PNG), and the
time per photo (detect + landmarks + chip + embed) on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _results import write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default="mmod", choices=["mmod", "haar"])
    args = parser.parse_args()
    if not (DATA / "faces").is_dir():
        sys.exit(f"{DATA / 'faces'} is not here: the shared face photos sit beside the project root")

    from cvtool.bench import timed
    from cvtool.errors import InputError
    from cvtool.models.loading import load_model
    from cvtool.pipelines import face

    engine = face.FaceEngine(load_model("dlib_face_resnet", task="face-embed"), detector=args.detector)
    photos = sorted(p for p in (DATA / "faces").glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    embedded, problems, seconds = {}, {}, []
    for path in photos:
        with timed() as clock:
            try:
                image = engine.read(path)
                chosen = face.choose_face(engine.find([image])[0], None, str(path))
                engine.describe([image], [[chosen]])
                embedded[path] = chosen.descriptor
            except InputError as exc:
                problems[str(path.relative_to(DATA))] = exc.reason
        seconds.append(clock.seconds)
        print(f"{path.relative_to(DATA)}: {'ok' if path in embedded else problems[str(path.relative_to(DATA))]}",
              file=sys.stderr)

    same, different, wrong = [], [], []
    for a, b in itertools.combinations(sorted(embedded), 2):
        d = face.distance(embedded[a], embedded[b])
        is_same = a.parent == b.parent
        (same if is_same else different).append(d)
        if (d < engine.threshold) != is_same:
            wrong.append({"a": str(a.relative_to(DATA)), "b": str(b.relative_to(DATA)), "distance": round(d, 4),
                          "same_person": is_same})
    distances = np.array(same + different)
    labels = np.array([True] * len(same) + [False] * len(different))
    fitted = face.fit_threshold(distances, labels)

    multi = {}
    for path in sorted((DATA / "faces_multi").glob("*.*")):
        if path.suffix.lower() not in (".jpg", ".png"):
            continue
        try:
            found = engine.find([engine.read(path)])[0]
            multi[path.name] = {"faces": len(found), "boxes": [[round(v) for v in f.box] for f in found]}
        except InputError as exc:
            multi[path.name] = {"error": exc.reason}

    figures = {
        "detector": args.detector, "model": engine.model_name, "threshold": engine.threshold,
        "photos": len(photos), "embedded": len(embedded), "not_embedded": problems,
        "same_pairs": len(same), "different_pairs": len(different),
        "accuracy_at_threshold": round(float(np.mean((distances < engine.threshold) == labels)), 4),
        "wrong_pairs": wrong,
        "same_distance_max": round(max(same), 4), "different_distance_min": round(min(different), 4),
        "best_threshold_on_these_pairs": fitted,
        "seconds_per_photo_median": round(float(np.median(seconds)), 3),
        "faces_multi": multi,
    }
    write_results(f"eval_face_{args.detector}", figures)


if __name__ == "__main__":
    main()
