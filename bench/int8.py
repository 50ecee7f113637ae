"""INT8 (onnxruntime static quantisation, as `cvtool export --int8` makes it) against fp32 onnxruntime on the
CPU, one thread, same process, passes alternating: speed ratio and the change in accuracy / agreement.

    python bench/int8.py [--iters N]

- lenet5_digits (the packaged, trained model): accuracy on scikit-learn's digits, fp32 vs INT8, calibrated
  on 64 digits of its training split and scored on its fixed 20% test split (scripts/digits.py; random
  weights would make accuracy meaningless).
- resnet18 (random weights, 224x224): speed only (its top-1 agreement with fp32 on the calibration photos is
  reported too, for what random weights are worth).
- our YOLO-style detector (random weights, 320) and the U-Net (default: width 64, depth 4, grey, 256x256):
  speed and agreement with fp32 (box IoU of the 100 best boxes; pixel agreement), calibrated on
  ../shared/datasets photos (raccoon / membrane) where present, else sample_images/.

Agreement bars are not applied here (the figures are what they are); `cvtool export --int8` applies them.
Written to bench/results/int8.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from _results import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"


def _checkpoint(tmp: Path, arch: str, classes: list[str], **arch_kwargs) -> Path:
    import torch

    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.registry import get_entry

    entry = get_entry(arch)
    torch.manual_seed(0)
    net = entry.build(num_classes=len(classes), **arch_kwargs)
    path = tmp / f"{arch}.pt"
    save_checkpoint(path, arch=arch, task=entry.task, state_dict=net.state_dict(), classes=classes,
                    preprocess=entry.preprocess().to_dict(), extra={"arch_kwargs": arch_kwargs})
    return path


def _timed(session, x, iters: int) -> list[float]:
    name = session.get_inputs()[0].name
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(target: str, calibration: Path, *, iters: int, digits=None) -> dict:
    from cvtool.export import calibration_inputs, load_target
    from cvtool.models import onnx_export
    from cvtool.models.onnx_session import make_session

    loaded = load_target(target)
    fp32 = onnx_export.export_checked(loaded, threads=1)
    inputs = calibration_inputs(fp32.graph, loaded.task, calibration)
    checks = dict(onnx_export.AGREEMENTS)
    onnx_export.AGREEMENTS.update({k: replace(c, bar=float("inf") if c.lower_is_better else 0.0)
                                   for k, c in checks.items()})
    try:
        int8 = onnx_export.reduce_precision(fp32, loaded.task, precision="int8", inputs=inputs, threads=1)
    finally:
        onnx_export.AGREEMENTS.update(checks)
    a, b = make_session(fp32.data, threads=1, spin=False), make_session(int8.data, threads=1, spin=False)
    x = inputs[0]
    _timed(a, x, 3), _timed(b, x, 3)
    ta, tb = [], []
    for _ in range(iters):  # alternating, so that other load on the machine falls on both alike
        ta += _timed(a, x, 1)
        tb += _timed(b, x, 1)
    fp32_ms, int8_ms = statistics.median(ta), statistics.median(tb)
    row = {"input": list(x.shape), "fp32_ms": round(fp32_ms, 3), "int8_ms": round(int8_ms, 3),
           "speedup": round(fp32_ms / int8_ms, 3), "fp32_mb": round(len(fp32.data) / 1e6, 2),
           "int8_mb": round(len(int8.data) / 1e6, 2), "calibration_images": len(inputs),
           "agreement_with_pytorch_fp32": {k: v for k, v in int8.report["agreement"].items() if k != "bar"}}
    if digits is not None:
        images, labels = digits
        name_a, name_b = a.get_inputs()[0].name, b.get_inputs()[0].name
        pa = np.array([a.run(None, {name_a: im})[0].argmax() for im in images])
        pb = np.array([b.run(None, {name_b: im})[0].argmax() for im in images])
        row.update(scored_images=len(labels), fp32_accuracy=round(float(np.mean(pa == labels)), 4),
                   int8_accuracy=round(float(np.mean(pb == labels)), 4),
                   accuracy_change=round(float(np.mean(pb == labels) - np.mean(pa == labels)), 4),
                   top1_agreement_fp32_onnx=round(float(np.mean(pa == pb)), 4))
    return row


def main() -> None:
    import cv2
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from digits import load_split  # the packaged model's own pixels and test split

        x_train, _, x_test, y_test = load_split()
        (tmp / "calib_digits").mkdir()
        (tmp / "scored_digits").mkdir()
        for i, values in enumerate(x_train[:64]):
            cv2.imwrite(str(tmp / "calib_digits" / f"{i:04d}.png"), values)
        for i, values in enumerate(x_test):
            cv2.imwrite(str(tmp / "scored_digits" / f"{i:04d}.png"), values)
        from cvtool.export import calibration_inputs, load_target
        from cvtool.models.onnx_export import graph_for

        graph = graph_for(load_target("lenet5_digits"))
        scored = calibration_inputs(graph, "classify", tmp / "scored_digits", limit=10_000)
        figures["lenet5_digits"] = measure("lenet5_digits", tmp / "calib_digits", iters=args.iters,
                                           digits=(scored, np.asarray(y_test)))
        photos = SHARED / "raccoon" / "images" if (SHARED / "raccoon").is_dir() else ROOT / "sample_images" / "photos"
        membrane = SHARED / "membrane" / "image" if (SHARED / "membrane").is_dir() else ROOT / "sample_images" / "photos"
        figures["resnet18"] = measure(str(_checkpoint(tmp, "resnet18", [f"c{i}" for i in range(1000)])), photos,
                                      iters=args.iters)
        figures["yolo"] = measure(str(_checkpoint(tmp, "yolo", ["raccoon"], img_size=320)), photos, iters=args.iters)
        figures["unet"] = measure(str(_checkpoint(tmp, "unet", ["membrane", "cell"])), membrane, iters=args.iters)
    figures["note"] = ("CPU, 1 thread, fp32 and INT8 onnxruntime sessions in the same process, alternating passes, "
                       "median ms per image (batch 1); resnet18/yolo/unet have random weights (speed and agreement "
                       "only); lenet5_digits is the trained packaged model (accuracy)")
    write_results("int8", figures)


if __name__ == "__main__":
    main()
