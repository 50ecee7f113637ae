"""Host cost of decoding a JPEG in full vs libjpeg's DCT-scaled reduced decoding (issue 30's CPU groundwork).

    python bench/decode_reduced.py [--count 200] [--threads 1]

Real photos (../shared/datasets: Oxford-IIIT Pet, HELEN faces, raccoon) are cut and resized to 640x480 and
1920x1080 and written as JPEG quality 90 into a temporary folder. Then, in turns, one thread: `cv2.imread` in
full, `cv2.IMREAD_REDUCED_COLOR_2` and `_4` (the DCT scales the image down while decoding), and
`cvtool.io.image.read_image` (cvtool's reader: EXIF, ICC, limits). For a network input of 224 px (shorter side,
INTER_AREA, as classifiers are fed), the reduced decode's resized image against the full decode's: mean and
largest absolute difference in grey levels. Nothing in cvtool uses reduced decoding yet: these are the figures
the design starts from. The load average is recorded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _results import write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets"
SOURCES = ("pets_localization/images", "helen_landmarks/images", "raccoon/images")


def photos(count: int) -> list[Path]:
    found = sorted(p for folder in SOURCES for p in (DATA / folder).glob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return found[:: max(1, len(found) // count)][:count]


def fit(cv2, image, width: int, height: int):
    """The centre crop of the photo's aspect `width:height`, resized to exactly that size."""
    h, w = image.shape[:2]
    scale = min(w / width, h / height)
    cw, ch = int(width * scale), int(height * scale)
    x, y = (w - cw) // 2, (h - ch) // 2
    crop = image[y:y + ch, x:x + cw]
    flag = cv2.INTER_AREA if scale >= 1 else cv2.INTER_CUBIC
    return cv2.resize(crop, (width, height), interpolation=flag)


def to_short_side(cv2, image, side: int):
    h, w = image.shape[:2]
    s = side / min(h, w)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import cv2
    import numpy as np

    from cvtool.io.image import read_image

    cv2.setNumThreads(args.threads)
    sources = photos(args.count)
    if not sources:
        sys.exit(f"no photos under {DATA}: the shared data sets sit beside the project root")
    load_before = os.getloadavg()
    figures: dict = {"threads": args.threads, "photos": len(sources), "sources": list(SOURCES)}
    with tempfile.TemporaryDirectory(prefix="cvtool-decode-") as tmp:
        for width, height in ((640, 480), (1920, 1080)):
            files = []
            for i, path in enumerate(sources):
                image = cv2.imread(str(path))
                if image is None:
                    continue
                target = Path(tmp) / f"{width}x{height}-{i:04d}.jpg"
                cv2.imwrite(str(target), fit(cv2, image, width, height), [cv2.IMWRITE_JPEG_QUALITY, 90])
                files.append(str(target))
            ways = {"imread": lambda f: cv2.imread(f), "reduced_2": lambda f: cv2.imread(f, cv2.IMREAD_REDUCED_COLOR_2),
                    "reduced_4": lambda f: cv2.imread(f, cv2.IMREAD_REDUCED_COLOR_4),
                    "cvtool_read_image": lambda f: read_image(f)}
            times: dict = {name: [] for name in ways}
            for _ in range(3):  # rounds, the ways in turns
                for name, fn in ways.items():
                    start = time.perf_counter()
                    for f in files:
                        fn(f)
                    times[name].append((time.perf_counter() - start) * 1000 / len(files))
            ms = {name: round(statistics.median(t), 3) for name, t in times.items()}
            diffs = {"reduced_2": [], "reduced_4": []}
            for f in files:
                full = to_short_side(cv2, cv2.imread(f), 224).astype(np.int16)
                for name, flag in (("reduced_2", cv2.IMREAD_REDUCED_COLOR_2), ("reduced_4", cv2.IMREAD_REDUCED_COLOR_4)):
                    small = to_short_side(cv2, cv2.imread(f, flag), 224).astype(np.int16)
                    if small.shape != full.shape:
                        small = cv2.resize(small.astype(np.uint8), full.shape[1::-1]).astype(np.int16)
                    d = np.abs(small - full)
                    diffs[name].append((float(d.mean()), int(d.max())))
            figures[f"{width}x{height}"] = {
                "images": len(files), "ms_per_image": ms,
                "speedup_over_imread": {k: round(ms["imread"] / v, 2) for k, v in ms.items() if k != "imread"},
                "at_224_vs_full": {k: {"mean_abs_grey": round(statistics.mean(m for m, _ in v), 3),
                                       "max_abs_grey": max(x for _, x in v)} for k, v in diffs.items()},
            }
            print(f"{width}x{height}: {ms}", file=sys.stderr)
    figures["load_average"] = [round(x, 2) for x in load_before]
    figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(write_results("decode_reduced", figures))


if __name__ == "__main__":
    main()
