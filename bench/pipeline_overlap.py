"""The runner's overlap (a device thread for the forward passes, a writer pool for the outputs) against the serial
runner, on the CPU: `cvtool classify|detect|segment DIR --out OUT` images/s, both ways in one process, taking turns.

    python bench/pipeline_overlap.py [--images 48] [--batch-size 8] [--threads 2] [--workers 2] [--repeats 3]

- serial: each batch's forward pass, then its inputs' outputs (classify: NAME.json; detect: NAME.detect.jpg, the
  annotated image; segment: NAME.mask.png and NAME.overlay.jpg) rendered, encoded and written, all in the calling
  thread, as cvtool/pipelines/runner.py did before (its private `_SERIAL` switch, not a user option);
- overlapped: the forward passes in the runner's device thread while the calling thread gathers the next batch,
  and the outputs in its writer threads (as many as --workers) while the next batch runs.
Each command runs in this process as the CLI runs it after parsing its options (the API's Task.run: load the
model, the batch, one JSON line per record, to memory; the outputs into a fresh folder each run), on --images
640 x 480 JPEGs made from the sample photos. Networks with random weights saved as cvtool checkpoints (speed
does not depend on the values): torchvision's resnet18 (classify), our YOLO at 320 px width 16 (detect), our
U-Net width 8 depth 3 (segment; at width 16 depth 4 its forward pass takes about 1 s per 640 x 480 image on
this 2-core machine, which hides everything else).
Figures: the best of --repeats runs per mode, and overlapped over serial; and per run the seconds spent inside the
pipelines' `predict` (the forward pass and postprocessing; instrumented here), which tell a faster forward pass
from overlap. Writes bench/results/pipeline_overlap.json.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _photos import photo_jpegs  # noqa: E402


def checkpoints(tmp: Path) -> dict[str, Path]:
    import torch

    from gpu_check import random_checkpoint, torchvision_random

    from cvtool.models.unet import UNET_PREPROCESS, UNet
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector

    torch.manual_seed(0)
    return {
        "classify": torchvision_random(tmp, "resnet18", "classify"),
        "detect": random_checkpoint(tmp, "yolo", "detect", YoloDetector(num_classes=3, width=16, img_size=320),
                                    ["a", "b", "c"], YOLO_PREPROCESS, width=16, img_size=320),
        "segment": random_checkpoint(tmp, "unet", "segment", UNet(num_classes=3, width=8, depth=3),
                                     ["a", "b", "c"], UNET_PREPROCESS, width=8, depth=3),
    }


EXTRA = {"classify": [], "detect": ["--conf", "0.05", "--max-det", "20"], "segment": []}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default="classify,detect,segment")
    args = parser.parse_args()

    import torch

    from _results import write_results

    import cvtool
    from cvtool.device import set_threads
    from cvtool.io.records import JsonLinesWriter
    from cvtool.pipelines import runner

    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    from cvtool.tasks import classify, detect, segment

    SPECS = {"classify": classify.SPEC, "detect": detect.SPEC, "segment": segment.SPEC}
    figures: dict = {"images": args.images, "image_size": "640x480 JPEG", "batch_size": args.batch_size,
                     "threads": args.threads, "workers": args.workers, "repeats": args.repeats,
                     "load_avg_1min_before": round(os.getloadavg()[0], 2), "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="cvtool-overlap-") as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        photo_jpegs(images, args.images)
        weights = checkpoints(tmp)

        makers = {"classify": lambda: cvtool.Classifier(weights=str(weights["classify"]), device="cpu"),
                  "detect": lambda: cvtool.Detector(weights=str(weights["detect"]), device="cpu", conf=0.05,
                                                    max_det=20),
                  "segment": lambda: cvtool.Segmenter(weights=str(weights["segment"]), device="cpu")}

        from cvtool.pipelines.classify import ClassifyPipeline
        from cvtool.pipelines.detect import DetectPipeline
        from cvtool.pipelines.segment import SegmentPipeline

        predict_seconds: list[float] = []  # the forward passes (+ postprocessing) alone, of the run under way

        def timing(cls):  # instrumentation of this bench only: the seconds each `predict` call takes
            original = cls.predict

            def predict(self, samples):
                start = time.perf_counter()
                try:
                    return original(self, samples)
                finally:
                    predict_seconds.append(time.perf_counter() - start)
            cls.predict = predict

        for cls in (ClassifyPipeline, DetectPipeline, SegmentPipeline):
            timing(cls)
        predict_totals: dict[tuple[str, str], list[float]] = {}

        def command(task: str, serial: bool) -> float:
            """What `cvtool TASK DIR --out OUT -f jsonl` runs after parsing its options: load the model, the
            batch through Task.run, one JSON line per record (to memory)."""
            out = tmp / f"out-{task}"
            shutil.rmtree(out, ignore_errors=True)
            runner._SERIAL = serial
            predict_seconds.clear()
            try:
                start = time.perf_counter()
                stream = io.StringIO()
                writer = JsonLinesWriter(stream, SPECS[task].columns, SPECS[task].rows)
                for result in makers[task]().run(str(images), out=out, batch_size=args.batch_size,
                                                 workers=args.workers):
                    if result.record.get("error"):
                        raise RuntimeError(f"{task}: {result.record}")
                    writer.write(result.record)
                seconds = time.perf_counter() - start
                predict_totals.setdefault((task, "serial" if serial else "overlapped"), []).append(sum(predict_seconds))
            finally:
                runner._SERIAL = False
            if stream.getvalue().count("\n") != args.images:
                raise RuntimeError(f"{task}: {stream.getvalue().count(chr(10))} records for {args.images} images")
            return seconds

        for task in args.tasks.split(","):
            command(task, True)  # warm-up: first-call allocations, the checkpoint's page cache
            command(task, False)
            times: dict[str, list[float]] = {"serial": [], "overlapped": []}
            for _ in range(args.repeats):  # taking turns, so other processes' load falls on both alike
                for mode in ("serial", "overlapped"):
                    times[mode].append(command(task, mode == "serial"))
            rates = {mode: args.images / min(seconds) for mode, seconds in times.items()}
            figures["tasks"][task] = {
                "command": f"cvtool {task} DIR --out OUT -f jsonl -b {args.batch_size} --threads {args.threads} "
                           f"--workers {args.workers} {' '.join(EXTRA[task])}".strip(),
                "serial_images_per_s": round(rates["serial"], 2),
                "overlapped_images_per_s": round(rates["overlapped"], 2),
                "overlapped_over_serial": round(rates["overlapped"] / rates["serial"], 3),
                "seconds": {mode: [round(s, 3) for s in seconds] for mode, seconds in times.items()},
                # of those, inside `predict` (forward pass and postprocessing), per run, the timed runs only
                "predict_seconds": {mode: [round(s, 3) for s in predict_totals[(task, mode)][-args.repeats:]]
                                    for mode in times}}
            print(task, figures["tasks"][task], file=sys.stderr, flush=True)
    figures["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    write_results("pipeline_overlap", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
