"""`cvtool bench`, and `--backend onnxruntime` giving the same records as PyTorch in every pipeline it serves."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import SAMPLES, jsonl
from test_export import make_checkpoint
from typer.testing import CliRunner

from cvtool.cli import app

runner = CliRunner()
DIGITS = [str(SAMPLES / "digits" / f"digit_{d}.png") for d in (0, 3, 8)]
PHOTOS = [str(SAMPLES / "photos" / name) for name in ("chelsea.jpg", "coffee.jpg")]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CVTOOL_CACHE", str(tmp_path / "cache"))


def records(*args) -> list[dict]:
    result = runner.invoke(app, [*args, "-f", "jsonl"])
    assert result.exit_code == 0, result.output
    return jsonl(result.stdout)


def both_backends(*args) -> tuple[list[dict], list[dict]]:
    return records(*args, "--backend", "torch"), records(*args, "--backend", "onnxruntime")


def test_bench_json_has_the_figures_for_both_backends():
    result = runner.invoke(app, ["bench", "lenet5", "--batch-size", "1,2", "--iters", "5", "--warmup", "1",
                                 "--threads", "1", "-f", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "random weights" in report["weights"] and report["device"] == "cpu"
    assert report["threads"] == {"torch": 1, "onnxruntime": 1} and report["iters"] == 5
    rows = {(r["batch_size"], r["backend"]): r for r in report["results"]}
    assert set(rows) == {(1, "torch"), (1, "onnxruntime"), (2, "torch"), (2, "onnxruntime")}
    for (batch, _), row in rows.items():
        assert row["model"] == "lenet5" and row["input"] == [batch, 1, 32, 32]
        ms = row["ms_per_image"]
        assert 0 < ms["q1"] <= ms["median"] <= ms["q3"] and ms["iqr"] == pytest.approx(ms["q3"] - ms["q1"], abs=2e-4)
        assert row["images_per_s"] == pytest.approx(1000 / ms["median"], rel=0.02)
        assert row["peak_memory_mb"] > 50  # a Python process with torch loaded
    assert rows[(1, "onnxruntime")]["relative_diff_vs_torch"] <= 1e-4
    ratios = {s["batch_size"]: s["onnxruntime_vs_torch"] for s in report["speedups"]}
    for batch in (1, 2):
        expected = rows[(batch, "torch")]["ms_per_image"]["median"] / rows[(batch, "onnxruntime")]["ms_per_image"]["median"]
        assert ratios[batch] == pytest.approx(expected, rel=0.01)


def test_bench_table_and_bad_options():
    table = runner.invoke(app, ["bench", "classify", "--img-size", "32", "--iters", "2", "--warmup", "0",
                                "--backend", "torch", "-f", "table"])
    assert table.exit_code == 0, table.output
    assert "resnet18" in table.stdout and "random weights" in table.stdout and "onnxruntime" not in table.stdout
    bad = runner.invoke(app, ["bench", "lenet5", "--backend", "tensorrt"])
    assert bad.exit_code == 2 and "unknown backend tensorrt" in bad.stderr
    unknown = runner.invoke(app, ["bench", "lenet6"])
    assert unknown.exit_code == 2 and "unknown model 'lenet6'" in unknown.stderr


def test_classify_same_records_on_both_backends_and_from_an_exported_file(tmp_path):
    ckpt = make_checkpoint(tmp_path / "lenet.pt", "lenet5", classes=[str(d) for d in range(10)])
    torch_recs, ort_recs = both_backends("classify", *DIGITS, "--weights", str(ckpt), "-k", "3", "-b", "2")
    assert len(torch_recs) == len(ort_recs) == 3
    for a, b in zip(torch_recs, ort_recs):
        assert a["weights_sha256"] == b["weights_sha256"]
        assert [e["label"] for e in a["result"]["top_k"]] == [e["label"] for e in b["result"]["top_k"]]
        assert np.allclose([e["prob"] for e in a["result"]["top_k"]], [e["prob"] for e in b["result"]["top_k"]],
                           atol=2e-6)
    # the on-the-fly export is cached: one file, reused by the second run
    cached = list((tmp_path / "cache" / "onnx").glob("lenet5-*.onnx"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    records("classify", DIGITS[0], "--weights", str(ckpt), "--backend", "onnxruntime")
    assert cached[0].stat().st_mtime_ns == mtime
    # a file from `cvtool export` (fixed batch 1) serves any --batch-size
    onnx_file = tmp_path / "lenet.onnx"
    assert runner.invoke(app, ["export", str(ckpt), "--out", str(onnx_file)]).exit_code == 0
    from_file = records("classify", *DIGITS, "--weights", str(onnx_file), "-k", "3", "-b", "3")
    assert [r["result"]["top_k"][0]["label"] for r in from_file] == [r["result"]["top_k"][0]["label"] for r in torch_recs]
    wrong_task = runner.invoke(app, ["segment", DIGITS[0], "--weights", str(onnx_file)])
    assert wrong_task.exit_code == 2 and "an ONNX classify model, not a segment model" in wrong_task.stderr


def test_detect_yolo_same_boxes_on_both_backends(tmp_path):
    def spread_scores(net):  # an untrained head scores every box alike; near-ties would make NMS's choice arbitrary
        generator = torch.Generator().manual_seed(0)
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, generator=generator)
        net.head.bias.zero_()
        net.head.weight.view(net.num_anchors, -1, net.head.weight.shape[1])[:, 2:4] = 0  # anchor-sized boxes

    ckpt = make_checkpoint(tmp_path / "yolo.pt", "yolo", classes=["cat", "dog"], width=4, img_size=64,
                           edit=spread_scores)
    torch_recs, ort_recs = both_backends("detect", *PHOTOS, "--weights", str(ckpt), "--conf", "0.05", "--max-det", "20")
    assert sum(len(r["result"]["detections"]) for r in torch_recs) > 0  # something to compare
    for a, b in zip(torch_recs, ort_recs):  # random weights give near-equal scores: compare in a fixed order
        da, db = (sorted(r["result"]["detections"], key=lambda d: (d["label"], d["box"])) for r in (a, b))
        assert [d["label"] for d in da] == [d["label"] for d in db]
        assert np.allclose([d["box"] for d in da], [d["box"] for d in db], atol=0.02)
        assert np.allclose([d["score"] for d in da], [d["score"] for d in db], atol=2e-4)


def test_segment_unet_same_masks_on_both_backends(tmp_path):
    ckpt = make_checkpoint(tmp_path / "unet.pt", "unet", classes=["bg", "fg"], width=4, depth=2)
    torch_recs, ort_recs = both_backends("segment", *PHOTOS, "--weights", str(ckpt))
    for a, b in zip(torch_recs, ort_recs):
        assert a["result"]["size"] == b["result"]["size"]
        pa = {c["label"]: c["pixels"] for c in a["result"]["classes"]}
        pb = {c["label"]: c["pixels"] for c in b["result"]["classes"]}
        total = a["result"]["size"][0] * a["result"]["size"][1]
        assert set(pa) == set(pb) and all(abs(pa[k] - pb[k]) <= total * 1e-4 for k in pa)  # argmax ties only


def test_fast_style_same_image_on_both_backends(tmp_path):
    ckpt = make_checkpoint(tmp_path / "style.pt", "fast_style", width=4, blocks=1)
    images = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.png"
        result = runner.invoke(app, ["stylize", PHOTOS[1], "--model", str(ckpt), "--size", "96", "--out", str(out),
                                     "--backend", backend, "-f", "jsonl"])
        assert result.exit_code == 0, result.output
        images[backend] = cv2.imread(str(out)).astype(int)
    assert images["torch"].shape == images["onnxruntime"].shape
    assert np.abs(images["torch"] - images["onnxruntime"]).max() <= 1  # uint8 rounding


def test_gatys_and_unknown_backends_are_refused(tmp_path):
    gatys = runner.invoke(app, ["stylize", PHOTOS[0], PHOTOS[1], "--backend", "onnxruntime"])
    assert gatys.exit_code == 2 and "--backend onnxruntime needs --model" in gatys.stderr
    unknown = runner.invoke(app, ["classify", DIGITS[0], "--model", "lenet5_digits", "--backend", "tvm"])
    assert unknown.exit_code == 2 and "unknown backend 'tvm'" in unknown.stderr


def test_bench_times_a_torchvision_detector_and_says_why_onnxruntime_cannot():
    result = runner.invoke(app, ["bench", "ssdlite320_mobilenet_v3_large", "--iters", "1", "--warmup", "0",
                                 "--threads", "1", "-f", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    torch_row, ort_row = report["results"]
    assert torch_row["backend"] == "torch" and torch_row["model"] == "ssdlite320_mobilenet_v3_large"
    assert torch_row["input"] == [1, 3, 320, 320] and torch_row["input_kind"] == "raw_images"  # its own size
    assert torch_row["ms_per_image"]["median"] > 0 and "error" not in torch_row and "NMS" in torch_row["note"]
    assert ort_row["backend"] == "onnxruntime" and "ms_per_image" not in ort_row
    assert ort_row["error"] == ("ssdlite320_mobilenet_v3_large: only cvtool's YOLO detector exports to ONNX; "
                                "torchvision's detectors do not (their resizing and NMS are data-dependent Python)")
    assert report["speedups"] == []
    table = runner.invoke(app, ["bench", "ssdlite320_mobilenet_v3_large", "--iters", "1", "--warmup", "0",
                                "--batch-size", "2", "--img-size", "64", "--backend", "torch", "-f", "table"],
                          env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "2x3x64x64 list" in table.stdout and "error" not in table.stdout


def test_time_calls_takes_turns_after_the_warm_up():
    from cvtool.bench import time_calls, time_commands, timed

    order = []
    times = time_calls({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, iters=2, warmup=1)
    assert order == ["a", "b"] * 3 and {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
    with timed() as clock:
        slept = time_calls({"sleep": lambda: __import__("time").sleep(0.02)}, iters=2)["sleep"]
    assert all(0.02 <= s < 1 for s in slept) and clock.seconds >= sum(slept) and clock.seconds == clock.elapsed
    import sys

    ran = time_commands({"pass": [sys.executable, "-c", "pass"]}, repeats=1)
    assert len(ran["pass"]) == 1 and ran["pass"][0] > 0
    with pytest.raises(RuntimeError, match=r"exited with 3: boom$"):
        time_commands({"fail": [sys.executable, "-c", "import sys; sys.exit('boom') if 0 else (print('boom', "
                                                      "file=sys.stderr), sys.exit(3))"]}, repeats=1)
