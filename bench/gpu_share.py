"""The pipeline's share of the bare forward pass (issue 30), for bench/gpu_check.py: the `share.*` checks.

For each network at batch 32 (the stand-in run: batch 4), `--images` JPEGs (default 1,000) go through the batch
runner as `cvtool classify|detect|segment DIR --device cuda` runs them (the API's Task.run: reading, decoding,
preprocessing, the forward pass, postprocessing, one record per image), timed once after a warm-up of two
batches; the bare forward pass of the same loaded network on a batch already on the device is timed in the same
process (cvtool's forward adapter and precision, repeated for at least half a second), and the share is
pipeline / forward. Target: >= 0.8 for resnet50, efficientnet_b0, our YOLO at 640 and U-Net at 512 (deeplabv3
is stated). Networks with random weights (torchvision's saved as cvtool checkpoints; speed does not depend on
the values). Images: 640 x 480 crops of the sample photos (the U-Net: 512 x 512, its input size).

Beside ours: Ultralytics' YOLO11n built from its yaml (random weights), `YOLO("yolo11n.yaml").predict(...)` (what
`yolo predict` runs) on the same 640 x 480 JPEGs at imgsz 640, batch 32, speed only, in a child process; stated
as skipped where ultralytics cannot be imported (the GPU machine has no network: carry its wheels, see
bench/gpu_check.py's docstring).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.8
TARGETED = ("resnet50", "efficientnet_b0", "yolo640", "unet512")


def share_checks(tmp: Path, gpu: str, quick: bool, images: int):
    """The `share.*` check functions (each returns its rows)."""
    import cvtool
    from _photos import photo_jpegs
    from gpu_check import MIN_SECONDS, photo_list, random_batch, random_checkpoint, rate, timed, torchvision_random

    batch = 32 if not quick else 4
    own = tmp / "share"  # its own checkpoints' folder (the infer.* checks write theirs, of other sizes, in tmp)
    own.mkdir(exist_ok=True)
    cache: dict[str, list[Path]] = {}

    def jpegs(kind: str) -> list[Path]:
        if kind not in cache:
            size = (512, 512) if kind == "square" else (640, 480)
            cache[kind] = photo_jpegs(tmp / f"share-{kind}", images, size)
        return cache[kind]

    def measure(label: str, task, paths: list[Path], forward) -> list[dict]:
        import torch

        def pipeline(subset):
            count = 0
            for result in task.run([str(p) for p in subset], batch_size=batch):
                if result.record.get("error"):
                    raise RuntimeError(f"{result.record['path']}: {result.record['error']}")
                count += 1
            return count

        pipeline(paths[: 2 * batch])  # warm-up: cuDNN's autotuning at these shapes, the allocator, the threads
        count, seconds = timed(lambda: pipeline(paths))
        pipeline_rate = count / seconds
        inputs, n = forward(task.loaded.device.torch)
        with torch.inference_mode():
            task.loaded.forward(inputs)
            _, forward_rate = rate(lambda: task.loaded.forward(inputs), n, MIN_SECONDS / 2)
        share = pipeline_rate / forward_rate
        row = {"check": f"share {label} batch {batch}", "passed": True, "gated": False, "batch": batch,
               "images": count, "agreement": f"{count} images in {seconds:.1f} s", "device": gpu,
               "gpu_images_per_s": round(pipeline_rate, 1), "forward_images_per_s": round(forward_rate, 1),
               "pipeline_over_forward": round(share, 3)}
        if label in TARGETED:
            row.update(target=TARGET, meets_target=bool(share >= TARGET))
        return [row]

    def resnet50():
        weights = torchvision_random(tmp, "resnet50", "classify")
        return measure("resnet50", cvtool.Classifier(weights=str(weights), device=gpu), jpegs("photo"),
                       random_batch(batch, 224))

    def efficientnet_b0():
        weights = torchvision_random(tmp, "efficientnet_b0", "classify")
        return measure("efficientnet_b0", cvtool.Classifier(weights=str(weights), device=gpu), jpegs("photo"),
                       random_batch(batch, 224))

    def yolo640():
        import torch

        from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector

        torch.manual_seed(0)
        side = 640 if not quick else 160
        weights = random_checkpoint(own, "yolo", "detect", YoloDetector(num_classes=3, width=16, img_size=side),
                                    ["a", "b", "c"], YOLO_PREPROCESS, width=16, img_size=side)
        task = cvtool.Detector(weights=str(weights), device=gpu, conf=0.25, max_det=100)
        return measure("yolo640", task, jpegs("photo"), photo_list(batch))

    def unet512():
        import torch

        from cvtool.models.unet import UNET_PREPROCESS, UNet

        torch.manual_seed(0)
        weights = random_checkpoint(own, "unet", "segment", UNet(num_classes=3, width=16, depth=4),
                                    ["a", "b", "c"], UNET_PREPROCESS, width=16, depth=4)
        return measure("unet512", cvtool.Segmenter(weights=str(weights), device=gpu), jpegs("square"),
                       random_batch(batch, 512, channels=1))

    def deeplabv3():
        weights = torchvision_random(tmp, "deeplabv3_resnet50", "segment")
        return measure("deeplabv3", cvtool.Segmenter(weights=str(weights), device=gpu), jpegs("photo"),
                       random_batch(batch, 520, 693))

    def yolo11n():
        return [yolo11n_row(jpegs("photo"), gpu, batch, 640 if not quick else 160)]

    def device_decode():
        """nvJPEG (decode_on_device on the GPU) against read_image on the CPU, the photos and the share JPEGs, one
        of them EXIF-turned: the same shapes; pixels within the decoders' rounding (gated: mean <= 1.5 levels)."""
        import numpy as np
        from PIL import Image

        from cvtool.io.device_decode import decode_on_device, read_for_device
        from cvtool.io.image import read_image

        photos = sorted((ROOT / "sample_images" / "photos").glob("*.jpg"))
        turned = tmp / "share-turned.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(read_image(photos[1])).save(turned, "JPEG", quality=90, exif=exif)
        paths = [*photos, turned, *jpegs("photo")[:29]]
        reads = [read_for_device(p) for p in paths]
        images = decode_on_device(reads, gpu)
        diffs = [np.abs(image.cpu().numpy().astype(int) - read_image(p).astype(int)) for p, image in zip(paths, images)]
        same_shapes = all(d.shape == read_image(p).shape for p, d in zip(paths, diffs))
        mean, worst = float(np.mean([d.mean() for d in diffs])), int(max(d.max() for d in diffs))
        on_device = sum(r.data is not None for r in reads)
        return [{"check": "share device decode vs read_image", "passed": bool(same_shapes and mean <= 1.5),
                 "gated": True, "images": len(paths), "device": gpu,
                 "agreement": f"{on_device}/{len(paths)} on the device decoder; mean |diff| {mean:.2f}, max {worst}"
                              f" levels{'' if same_shapes else '; SHAPES DIFFER'}"}]

    checks = [device_decode, resnet50, efficientnet_b0, yolo640, unet512, yolo11n]
    if not quick:
        checks.append(deeplabv3)
    return checks


_YOLO11_CHILD = r"""
import json, sys, time
spec = json.loads(sys.argv[1])
from ultralytics import YOLO
model = YOLO("yolo11n.yaml")  # built from its yaml: random weights, nothing downloaded
kwargs = dict(imgsz=spec["imgsz"], batch=spec["batch"], device=spec["device"], save=False, verbose=False,
              stream=True, conf=0.25)
for _ in model.predict(source=spec["paths"][: 2 * spec["batch"]], **kwargs):
    pass
start = time.perf_counter()
count = sum(1 for _ in model.predict(source=spec["paths"], **kwargs))
print(json.dumps({"images": count, "seconds": time.perf_counter() - start}))
"""


def yolo11n_row(paths: list[Path], gpu: str, batch: int, imgsz: int) -> dict:
    """Ultralytics' YOLO11n (random weights) predicting the same files, in a child process with this Python."""
    row = {"check": f"share yolo11n (Ultralytics, random) batch {batch}", "passed": True, "gated": False,
           "batch": batch, "device": gpu}
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False",
           "YOLO_CONFIG_DIR": str(Path(paths[0]).parent / "ultralytics-config")}
    if subprocess.run([sys.executable, "-c", "import ultralytics"], capture_output=True, env=env).returncode:
        row["agreement"] = "skipped: ultralytics not importable (carry its wheels: bench/gpu_check.py)"
        return row
    spec = {"paths": [str(p) for p in paths], "imgsz": imgsz, "batch": batch,
            "device": 0 if gpu.startswith("cuda") else "cpu"}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _YOLO11_CHILD, json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=300)
    if done.returncode:
        row.update(passed=False, agreement=f"failed: {(done.stderr.strip().splitlines() or [''])[-1][:200]}")
        return row
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    row.update(images=figures["images"], agreement=f"{figures['images']} images in {figures['seconds']:.1f} s "
                                                    f"(child {time.perf_counter() - began:.0f} s with start-up)",
               gpu_images_per_s=round(figures["images"] / figures["seconds"], 1))
    return row
