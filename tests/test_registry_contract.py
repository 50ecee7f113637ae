"""Driven by the registry, as timm's tests are: every registered model declares a contract that holds,
builds, runs its forward adapter on an input of its declared kind, and the small ones export to ONNX
and run there as the pipelines run them. Random weights throughout (no downloads); models above
FORWARD_MAX_PARAMS run their forward on the meta device (shapes only), above EXPORT_MAX_PARAMS they
are not exported here (tests/test_export.py covers the command)."""

from __future__ import annotations

import functools

import pytest
import torch

from cvtool.device import CPU
from cvtool.errors import UsageError
from cvtool.models import contract
from cvtool.models.loading import LoadedModel
from cvtool.models.registry import list_entries

FORWARD_MAX_PARAMS = 6_000_000  # a real CPU forward pass on a small input
EXPORT_MAX_PARAMS = 2_000_000  # an ONNX export + onnxruntime check too

ENTRIES = {e.name: e for e in list_entries()}
NETWORKS = sorted(n for n, e in ENTRIES.items() if e.builder is not None)
CLASSICAL = sorted(n for n, e in ENTRIES.items() if e.builder is None)


def built(entry, device="cpu"):
    torch.manual_seed(0)
    with torch.device(device):
        return entry.build().eval()


@functools.cache
def _n_params(name: str) -> int:
    return sum(p.numel() for p in built(ENTRIES[name], "meta").parameters())


def n_params(entry) -> int:
    return _n_params(entry.name)


def loaded_model(entry, module) -> LoadedModel:
    return LoadedModel(name=entry.name, task=entry.task, module=module, preprocess=entry.preprocess(),
                       classes=list(entry.classes() or []), weights_path="(random)", weights_sha256="random",
                       device=CPU, entry=entry)


def sample_input(entry, module, device="cpu"):
    """An input of the entry's declared kind, small."""
    pre = entry.preprocess()
    channels = contract.input_channels(module, pre)
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=gen).to(device)

    if entry.input_kind in ("image", "face_chip"):
        side = pre.crop_size or pre.resize_size
        return rand(2, channels, side, side)
    if entry.input_kind == "any_size":
        m = entry.size_multiple_of(module)
        h, w = m * -(-40 // m), m * -(-56 // m)
        return rand(1, channels, h, w)
    if entry.input_kind == "raw_images":
        return [rand(3, 48, 64), rand(3, 40, 40)]
    if entry.input_kind == "canvas":
        return rand(1, channels, 60, 80)
    raise AssertionError(f"{entry.name}: no sample for input kind {entry.input_kind!r}")


def check_output(entry, module, x, out):
    """The pipeline's outputs, as the input kind promises them."""
    if entry.input_kind in ("image", "face_chip"):
        assert out.ndim == 2 and out.shape[0] == x.shape[0]
        if entry.input_kind == "image" and entry.classes():
            assert out.shape[1] == len(entry.classes())
    elif entry.input_kind == "any_size":
        assert out.ndim == 4 and out.shape[0] == 1 and tuple(out.shape[-2:]) == tuple(x.shape[-2:])
    elif entry.input_kind == "raw_images":
        assert isinstance(out, list) and len(out) == len(x)
        for image, found in zip(x, out):
            n = len(found["boxes"])
            assert found["boxes"].shape == (n, 4) and found["scores"].shape == (n,) and found["labels"].shape == (n,)
    elif entry.input_kind == "canvas":
        assert out.ndim == 4 and out.shape[:2] == (1, 1)


@pytest.mark.parametrize("name", NETWORKS)
def test_the_declared_contract_is_complete(name):
    entry = ENTRIES[name]
    assert entry.input_kind in contract.INPUT_KINDS
    module = built(entry, "meta")
    assert entry.size_multiple_of(module) >= 1
    assert (entry.export is None) == bool(entry.export_refusal)  # not exportable: says why
    if entry.input_kind == "raw_images":
        assert entry.task == "detect" and 0.0 <= entry.default_conf <= 1.0  # every detector names its threshold
    else:
        assert entry.default_conf is None


@pytest.mark.parametrize("name", NETWORKS)
def test_every_model_builds_and_runs_its_forward_adapter(name):
    entry = ENTRIES[name]
    big = n_params(entry) > FORWARD_MAX_PARAMS
    if big and entry.input_kind == "raw_images":  # torchvision's detectors resize and run NMS: real tensors only
        pytest.skip(f"{name}: {n_params(entry) / 1e6:.0f}M parameters and a data-dependent forward")
    device = "meta" if big else "cpu"
    module = built(entry, device)
    x = sample_input(entry, module, device)
    with torch.inference_mode():
        out = entry.forward(module, x)
    check_output(entry, module, x, out)


@pytest.mark.parametrize("name", [n for n in NETWORKS if ENTRIES[n].export is None])
def test_a_model_that_cannot_export_says_why_in_one_line(name):
    from cvtool.models.onnx_export import graph_for

    entry = ENTRIES[name]
    with pytest.raises(UsageError) as raised:
        graph_for(loaded_model(entry, built(entry, "meta")))
    assert str(raised.value) == f"{name}: {entry.export_refusal}" and "\n" not in str(raised.value)


@pytest.mark.parametrize("name", [n for n in NETWORKS if ENTRIES[n].export is not None
                                  and n_params(ENTRIES[n]) <= EXPORT_MAX_PARAMS])
def test_small_models_export_and_run_on_onnxruntime_as_the_pipelines_call_them(name, monkeypatch):
    from cvtool.models import onnx_export
    from cvtool.models.onnx_backend import open_onnx
    from cvtool.models.onnx_export import export_checked

    monkeypatch.setattr(onnx_export, "CHECK_SIZE", 64)  # any-size networks: checked at ~64 px, not 256
    entry = ENTRIES[name]
    module = built(entry)
    if entry.input_kind == "raw_images":  # a small letterbox keeps the export quick
        module.img_size = 2 * entry.size_multiple_of(module)
    loaded = loaded_model(entry, module)
    exported = export_checked(loaded, dynamic_batch=True)  # raises beyond the tolerance
    assert exported.report["relative"] <= 1e-4
    onnx_model = open_onnx(f"{name}.onnx", task=entry.task, data=exported.data)
    assert onnx_model.backend == "onnxruntime" and onnx_model.size_multiple == exported.graph.multiple
    x = sample_input(entry, module)
    with torch.inference_mode():
        want = loaded.forward(x)
    got = onnx_model.forward(x)
    if entry.input_kind == "raw_images":
        for a, b in zip(want, got):
            for key in ("boxes", "scores"):
                assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-3)
            assert torch.equal(a["labels"], b["labels"])
    else:
        assert torch.allclose(want, got, rtol=1e-3, atol=1e-4 * float(want.abs().max()))


def test_only_classical_detectors_are_not_networks_and_they_say_so_in_one_line():
    assert CLASSICAL == ["opencv_haar_face"]
    for name in CLASSICAL:
        entry = ENTRIES[name]
        assert entry.input_kind == "classical" and entry.export is None and entry.face_detector is not None
        with pytest.raises(UsageError) as raised:
            entry.build()
        assert str(raised.value) == f"model {name!r}: {entry.export_refusal}"


@pytest.mark.parametrize("name", sorted(n for n, e in ENTRIES.items() if e.task == "face-detect"))
def test_every_face_detector_is_declared_and_finds_the_astronauts_face(name):
    """Each face-detect entry makes its detector from the registry alone (the CLI's --detector alias included)
    and finds the one face of scikit-image's astronaut, as an inclusive (l, t, r, b, score) box on her face."""
    from cvtool.models.face_detectors import FaceDetectorOptions, make_face_detector
    from cvtool.models.registry import get_entry

    from cvtool.io.image import load_image
    from conftest import SAMPLES

    entry = ENTRIES[name]
    photo = load_image(SAMPLES / "photos" / "astronaut.jpg")
    assert entry.aliases and get_entry(entry.aliases[0], "face-detect") is entry
    found = make_face_detector(entry, FaceDetectorOptions(device=CPU)).detect([photo])
    assert len(found) == 1 and len(found[0]) == 1
    left, top, right, bottom, _score = found[0][0]
    assert 150 < (left + right) / 2 < 260 and 60 < (top + bottom) / 2 < 160  # her face, in a 512 x 512 photo
