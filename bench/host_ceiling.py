"""The host ceiling (issue 30): a pipeline's images/s with its network replaced by a no-op, against bare decoding.

    python bench/host_ceiling.py [--small 1000] [--large 200] [--rounds 3] [--cli 200]

Real photos (../shared/datasets: Oxford-IIIT Pet, HELEN, raccoon, photos) are cut to the aspect and resized to
640x480 (`--small` files) and 1920x1080 (`--large`), written as JPEG quality 90 in a temporary folder. For each
task at its network size (classify at 224: resize 256, crop 224, as torchvision's classifiers; detect at 640: our
YOLO's letterbox; segment at 512: a segmenter resizing the shorter side to 512) the task object's `run` goes over
the files, with `full_decode` on (every JPEG decoded in full: the pipeline before issue 30) and off (reduced
decoding where the rule allows it), its network's forward replaced by a no-op that returns outputs of the right
shape (monkeypatched here, on the loaded model: no user option does this). Against: a bare `cv2.imread` loop
over the same files, and a bare `cv2.imread(..., IMREAD_REDUCED_COLOR_N)` loop at the factor the rule picks.
1 and 2 threads (decode workers; a bare loop's threads), OpenCV and torch at 1 thread each; all in turns.

Then (`--cli N`, 0 to skip) the whole `cvtool classify DIR` and `cvtool detect DIR` with their real networks
(random weights: the cost of a forward pass does not depend on them) on N of the 1920x1080 files and on N of the
640x480 ones, `--full-decode` (the default; before) against `--no-full-decode` (after), in turns, in one run. The load average is
recorded before and after each part.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _results import write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets"
SOURCES = ("pets_localization/images", "helen_landmarks/images", "raccoon/images", "photos")
SIZES = {"640x480": (640, 480), "1920x1080": (1920, 1080)}


def sources() -> list[Path]:
    return sorted(p for folder in SOURCES for p in (DATA / folder).glob("*")
                  if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def fit(cv2, image, width: int, height: int):
    """The centre crop of the photo at the aspect `width:height`, resized to exactly that size."""
    h, w = image.shape[:2]
    scale = min(w / width, h / height)
    cw, ch = int(width * scale), int(height * scale)
    x, y = (w - cw) // 2, (h - ch) // 2
    flag = cv2.INTER_AREA if scale >= 1 else cv2.INTER_CUBIC
    return cv2.resize(image[y:y + ch, x:x + cw], (width, height), interpolation=flag)


def make_files(cv2, photos: list[Path], count: int, size: tuple[int, int], folder: Path) -> list[str]:
    """`count` JPEGs (q90) of `size` from the photos in turn; a photo used again is mirrored (other pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        image = cv2.imread(str(photos[i % len(photos)]))
        if (i // len(photos)) % 2:
            image = image[:, ::-1]
        target = folder / f"{i:04d}.jpg"
        cv2.imwrite(str(target), fit(cv2, image, *size), [cv2.IMWRITE_JPEG_QUALITY, 90])
        files.append(str(target))
    return files


# -- the three networks, as checkpoints (random weights), and their no-op forwards ----------------------------------

def checkpoints(folder: Path) -> dict[str, Path]:
    import torch

    from cvtool.bench import random_model
    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.unet import UNet
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector
    from cvtool.ops.preprocess import Preprocess

    paths = {t: folder / f"{t}.pt" for t in ("classify", "detect", "segment")}
    resnet = random_model("resnet18")  # the registry's preprocessing: shorter side 256, crop 224
    save_checkpoint(paths["classify"], arch="resnet18", task="classify", state_dict=resnet.module.state_dict(),
                    classes=list(resnet.classes) or [str(i) for i in range(1000)], preprocess=resnet.preprocess.to_dict())
    torch.manual_seed(0)
    yolo = YoloDetector(num_classes=1, width=16, img_size=640)
    save_checkpoint(paths["detect"], arch="yolo", task="detect", state_dict=yolo.state_dict(), classes=["thing"],
                    preprocess=YOLO_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"anchors": yolo.anchors.tolist(), "width": 16, "img_size": 640}})
    unet = UNet(num_classes=2, in_channels=3, width=16, depth=4)
    resize_512 = Preprocess(crop_size=None, resize_size=512, mean=(0.5,) * 3, std=(0.5,) * 3)
    save_checkpoint(paths["segment"], arch="unet", task="segment", state_dict=unet.state_dict(),
                    classes=["background", "thing"], preprocess=resize_512.to_dict(),
                    extra={"arch_kwargs": {"width": 16, "depth": 4, "in_channels": 3}})
    return paths


def noop_forward(task: str, loaded):
    """The network's forward replaced by outputs of the right shape and no computation."""
    import torch

    classes = len(loaded.classes)
    if task == "classify":
        return lambda batch: torch.zeros(batch.shape[0], classes)
    if task == "detect":  # our YOLO: per image its boxes in the image's pixels, scores and labels (here: none)
        return lambda images: [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                "labels": torch.zeros(0, dtype=torch.int64)} for _ in images]
    return lambda batch: torch.zeros(batch.shape[0], classes, *batch.shape[-2:])  # segment: logits at its input


def task_object(task: str, weights: Path, full_decode: bool):
    import cvtool

    cls = {"classify": cvtool.Classifier, "detect": cvtool.Detector, "segment": cvtool.Segmenter}[task]
    obj = cls(weights=str(weights), device="cpu", threads=1, full_decode=full_decode)
    obj.loaded.forward = noop_forward(task, obj.loaded)  # this bench only: instance attribute over the method
    return obj


def consume(results) -> None:
    for result in results:
        if not result.ok:
            raise RuntimeError(f"{result.path}: {result.error}")


# -- timing -----------------------------------------------------------------------------------------------------

def bare_loop(cv2, files: list[str], flag: int, threads: int) -> None:
    if threads == 1:
        for f in files:
            cv2.imread(f, flag)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(lambda f: cv2.imread(f, flag), files, chunksize=8):
                pass


def host_ceiling(cv2, files_by_size: dict, weights: dict[str, Path], rounds: int, tasks: list[str]) -> dict:
    reduced_flags = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    objects = {(t, full): task_object(t, weights[t], full) for t in tasks for full in (True, False)}
    out: dict = {}
    for size_name, files in files_by_size.items():
        width, height = SIZES[size_name]
        factors = {t: (objects[(t, False)]._pipeline.reduction or (lambda w, h: 1))(width, height) for t in tasks}
        for threads in (1, 2):
            calls = {"bare_imread": (lambda fl=files, th=threads: bare_loop(cv2, fl, cv2.IMREAD_COLOR, th))}
            for f in sorted({f for f in factors.values() if f > 1}):
                calls[f"bare_imread_reduced_{f}"] = (lambda fl=files, th=threads, flag=reduced_flags[f]:
                                                     bare_loop(cv2, fl, flag, th))
            for t in tasks:
                for full in (True, False):
                    if not full and factors[t] == 1:
                        continue  # the rule keeps full decoding: the same run as full_decode
                    name = f"{t}_{'full' if full else 'reduced'}"
                    calls[name] = (lambda o=objects[(t, full)], fl=files, th=threads:
                                   consume(o.run(fl, workers=th, batch_size=8)))
            load = os.getloadavg()[0]
            seconds: dict[str, list[float]] = {name: [] for name in calls}
            for name, call in calls.items():  # warm-up: every call once
                call()
            for _ in range(rounds):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    seconds[name].append(time.perf_counter() - start)
            ms = {name: round(statistics.median(s) * 1000 / len(files), 3) for name, s in seconds.items()}
            bare = ms["bare_imread"]
            fastest = {name: round(min(s) * 1000 / len(files), 3) for name, s in seconds.items()}
            entry = {"images": len(files), "threads": threads, "ms_per_image": ms, "ms_per_image_fastest_round": fastest,
                     "images_per_s": {n: round(1000 / v, 1) for n, v in ms.items()},
                     "host_cost_over_bare_imread": {n: round(v / bare, 3) for n, v in ms.items() if n != "bare_imread"},
                     "reduction_factor": factors,
                     "reduced_over_full_speedup": {
                         t: round(ms[f"{t}_full"] / ms[f"{t}_reduced"], 3) for t in tasks if f"{t}_reduced" in ms},
                     "bare_reduced_over_full_speedup": {
                         n: round(bare / v, 3) for n, v in ms.items() if n.startswith("bare_imread_reduced")},
                     "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
            out[f"{size_name}_threads{threads}"] = entry
            print(f"{size_name} threads={threads}: {ms}", file=sys.stderr)
    return out


def whole_cli(files_by_size: dict, weights: dict[str, Path], count: int, rounds: int, folder: Path) -> dict:
    """`cvtool classify DIR` / `cvtool detect DIR` with real forwards: --full-decode (before) vs --no-full-decode."""
    from cvtool.bench import time_commands

    out: dict = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for size_name, files in files_by_size.items():
        directory = folder / f"cli-{size_name}"
        directory.mkdir(exist_ok=True)
        for f in files[:count]:
            link = directory / Path(f).name
            if not link.exists():
                link.symlink_to(f)
        n = len(list(directory.iterdir()))
        for task, model in (("classify", ["--weights", str(weights["classify"])]),
                            ("classify", ["--model", "lenet5_digits"]),
                            ("detect", ["--weights", str(weights["detect"])])):
            base = [sys.executable, "-m", "cvtool", "-q", task, str(directory), *model, "--device", "cpu",
                    "--threads", "1", "--format", "jsonl"]
            label = f"{task}_{'lenet5_digits' if 'lenet5_digits' in model else Path(model[1]).stem}"
            load = os.getloadavg()[0]
            times = time_commands({"before_full_decode": [*base, "--full-decode"],
                                   "after_no_full_decode": [*base, "--no-full-decode"]},
                                  repeats=rounds, warmup=0, env=env)
            s = {k: statistics.median(v) for k, v in times.items()}
            out[f"{size_name}_{label}"] = {
                "images": n, "command": " ".join(["cvtool", task, "DIR", *model[:1], Path(model[1]).name,
                                                  "--device cpu --threads 1 --format jsonl"]),
                "wall_s": {k: round(v, 2) for k, v in s.items()},
                "images_per_s": {k: round(n / v, 2) for k, v in s.items()},
                "speedup": round(s["before_full_decode"] / s["after_no_full_decode"], 3),
                "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
            print(f"cli {size_name} {label}: {out[f'{size_name}_{label}']['images_per_s']}", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1000, help="640x480 files")
    parser.add_argument("--large", type=int, default=200, help="1920x1080 files")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", default="classify,detect,segment")
    parser.add_argument("--cli", type=int, default=200, help="files per size for the whole-CLI runs (0: none)")
    parser.add_argument("--cli-rounds", type=int, default=2)
    args = parser.parse_args()
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    photos = sources()
    if not photos:
        sys.exit(f"skipped: no photos under {DATA} (the shared data sets sit beside the project)")
    figures: dict = {"sources": list(SOURCES), "source_photos": len(photos), "jpeg_quality": 90,
                     "opencv_threads": 1, "torch_threads": 1, "rounds": args.rounds,
                     "networks": {"classify": "resnet18 preprocessing (shorter side 256, crop 224)",
                                  "detect": "our YOLO, letterbox 640", "segment": "a U-Net fed the shorter side "
                                  "resized to 512 (labels back at the photo's size)"},
                     "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="cvtool-host-") as tmp:
        tmp = Path(tmp)
        files = {"640x480": make_files(cv2, photos, args.small, SIZES["640x480"], tmp / "640x480"),
                 "1920x1080": make_files(cv2, photos, args.large, SIZES["1920x1080"], tmp / "1920x1080")}
        weights = checkpoints(tmp)
        figures["host_ceiling"] = host_ceiling(cv2, files, weights, args.rounds, args.tasks.split(","))
        if args.cli:
            figures["whole_cli"] = whole_cli(files, weights, args.cli, args.cli_rounds, tmp)
    figures["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(write_results("host_ceiling", figures))


if __name__ == "__main__":
    main()
