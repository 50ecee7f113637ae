"""dlib's face ResNet and MMOD detector, parsed from face_recognition_models and run in PyTorch.

Where dlib itself is importable (the `compare` extra) the outputs are checked against it on the same
inputs; the property checks (same person close, different people far, the face where it is) run always.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cvtool.errors import WeightsError
from cvtool.models.dlib import convert
from cvtool.models.dlib.dnn import parse_dnn
from cvtool.models.face_mmod import (
    ARCH_TOKENS as MMOD_TOKENS,
    MMOD_FILE,
    MmodFaceDetector,
    load_mmod_net,
    mmod_state_dict_from_dlib,
    pyramid_rects,
)
from cvtool.models.face_resnet import (
    ARCH_TOKENS as RESNET_TOKENS,
    NUM_PARAMS,
    RESNET_FILE,
    FaceResNet,
    load_face_resnet,
    padded_add,
    resnet_state_dict_from_dlib,
)

from conftest import SHARED

MODELS = convert.face_models_dir()
pytestmark = pytest.mark.skipif(MODELS is None, reason="face_recognition_models is not installed")
ASTRONAUT_FACE = (168, 69, 263, 164)  # where the face is in skimage's astronaut (512 x 512)


@pytest.fixture(scope="module")
def cache_dir(_converted_models_cache):
    """The session's converted-models cache (conftest points CVTOOL_CACHE at it for every test)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVTOOL_CACHE", str(_converted_models_cache))
        yield _converted_models_cache


@pytest.fixture(scope="module")
def resnet(cache_dir) -> FaceResNet:
    return load_face_resnet()


@pytest.fixture(scope="module")
def detector(cache_dir) -> MmodFaceDetector:
    return MmodFaceDetector(load_mmod_net())


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return data.astronaut()


def _describe(model: FaceResNet, chips: list[np.ndarray]) -> np.ndarray:
    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        return model(batch).numpy()


def _crude_chip(image: np.ndarray, box) -> np.ndarray:
    """A square crop around a detector box, resized to 150: good enough for identity, no landmarks needed."""
    import cv2

    left, top, right, bottom = box[:4]
    cx, cy, half = (left + right) / 2, (top + bottom) / 2 + 0.1 * (bottom - top), 0.75 * (right - left)
    x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
    x1, y1 = int(min(cx + half, image.shape[1])), int(min(cy + half, image.shape[0]))
    return cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (150, 150), interpolation=cv2.INTER_AREA)


# --- the file parser --------------------------------------------------------------------------------------


def test_resnet_file_parsed_to_the_last_byte():
    parsed = parse_dnn(MODELS / RESNET_FILE, RESNET_TOKENS)  # raises unless every byte is consumed
    counts = {kind: len(parsed.of_kind(kind)) for kind in ("con", "affine", "relu", "add_prev", "avg_pool", "max_pool", "fc")}
    assert counts == {"con": 29, "affine": 29, "relu": 29, "add_prev": 14, "avg_pool": 5, "max_pool": 1, "fc": 1}
    assert parsed.loss["id"] == "loss_metric_2" and parsed.loss["dist_thresh"] == pytest.approx(0.6)
    assert (parsed.input["nr"], parsed.input["nc"]) == (150, 150)
    assert parsed.input["avg_rgb"] == pytest.approx((122.782, 117.001, 104.298), abs=1e-5)
    n = sum(r["weight"].size + r["bias"].size for r in parsed.of_kind("con"))
    n += sum(2 * r["gamma"].size for r in parsed.of_kind("affine")) + parsed.of_kind("fc")[0]["weight"].size
    assert n == NUM_PARAMS == 5_614_592
    assert sum(p.numel() for p in FaceResNet().parameters()) == NUM_PARAMS


def test_mmod_file_parsed_to_the_last_byte():
    parsed = parse_dnn(MODELS / MMOD_FILE, MMOD_TOKENS)
    assert [r.id for r in parsed.layers].count("bn_con2") == 6
    assert [r["eps"] for r in parsed.of_kind("bn")] == pytest.approx([1e-4] * 6)
    assert parsed.loss["detector_windows"] == [{"width": 80, "height": 80, "label": ""}]
    assert parsed.loss["overlaps_nms"][0] == pytest.approx(0.33828, abs=1e-5)
    assert [r["stride_y"] for r in parsed.of_kind("con")] == [2, 2, 2, 1, 1, 1, 1]


def test_truncated_file_is_a_one_line_weights_error(tmp_path):
    bad = tmp_path / "truncated.dat"
    bad.write_bytes((MODELS / MMOD_FILE).read_bytes()[:300_000])
    with pytest.raises(WeightsError) as info:
        mmod_state_dict_from_dlib(bad)
    assert str(bad) in str(info.value) and "file ends early" in str(info.value) and "\n" not in str(info.value)


def test_extra_bytes_are_refused(tmp_path):
    bad = tmp_path / "padded.dat"
    bad.write_bytes((MODELS / MMOD_FILE).read_bytes() + b"\x00\x00")
    with pytest.raises(WeightsError, match=r"padded\.dat.*2 bytes left over"):
        mmod_state_dict_from_dlib(bad)


@pytest.mark.parametrize("wrong", [MMOD_FILE, "shape_predictor_5_face_landmarks.dat"])
def test_wrong_file_is_refused_naming_it(wrong):
    with pytest.raises(WeightsError) as info:
        resnet_state_dict_from_dlib(MODELS / wrong)
    message = str(info.value)
    assert wrong in message and "\n" not in message and len(message) < len(str(MODELS / wrong)) + 200


# --- the ResNet -----------------------------------------------------------------------------------------------


def test_padded_add_pads_the_smaller_operand_with_zeros():
    skip = torch.arange(1 * 128 * 4 * 4, dtype=torch.float32).view(1, 128, 4, 4)
    branch = torch.full((1, 256, 3, 3), 0.5)
    out = padded_add(skip, branch)
    assert out.shape == (1, 256, 4, 4)
    assert torch.equal(out[:, :128, :3, :3], skip[:, :, :3, :3] + 0.5)
    assert torch.equal(out[:, :128, 3, :], skip[:, :, 3, :])  # the branch had no bottom row
    assert torch.equal(out[:, 128:, :3, :3], branch[:, 128:])
    assert out[:, 128:, 3, :].abs().max() == 0 and out[:, 128:, :, 3].abs().max() == 0


def test_down_blocks_meet_the_measured_shapes(resnet):
    shapes = []
    for block in resnet.blocks:
        if block.down:
            block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    with torch.inference_mode():
        out = resnet(torch.zeros(1, 3, 150, 150, dtype=torch.uint8))
    for block in resnet.blocks:
        block._forward_hooks.clear()
    assert shapes == [(64, 17, 17), (128, 8, 8), (256, 4, 4), (256, 2, 2)]
    assert out.shape == (1, 128)


def test_descriptor_matches_dlib(resnet, astronaut):
    dlib = pytest.importorskip("dlib")
    shape = dlib.shape_predictor(str(MODELS / "shape_predictor_5_face_landmarks.dat"))
    recogniser = dlib.face_recognition_model_v1(str(MODELS / RESNET_FILE))
    chips = [dlib.get_face_chip(image, shape(image, dlib.rectangle(*box)))
             for image, box in [(astronaut, ASTRONAUT_FACE), (astronaut[:, ::-1].copy(), (248, 69, 343, 164))]]
    rng = np.random.default_rng(0)
    chips.append(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))
    ours = _describe(resnet, chips)
    theirs = np.array([recogniser.compute_face_descriptor(c) for c in chips])
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.linalg.norm(ours[0] - ours[1]) < 0.3  # the same face mirrored: dlib measures ~0.19


def test_same_person_close_and_different_people_far(resnet, detector, astronaut):
    mirrored = astronaut[:, ::-1].copy()
    boxes = detector.detect([astronaut, mirrored])
    chips = [_crude_chip(astronaut, boxes[0][0]), _crude_chip(mirrored, boxes[1][0])]
    a, b = _describe(resnet, chips)
    assert np.linalg.norm(a - b) < 0.6
    assert 1.0 < np.linalg.norm(a) < 2.0  # not L2-normalised (dlib's norms are about 1.3-1.5)


def test_people_from_the_shared_faces(resnet, detector):
    import cv2

    folder = SHARED / "faces"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared data sets are not on this machine)")
    chips = {}
    for name in ("obama/obama1.jpg", "obama/obama2.jpg", "biden/biden1.jpg"):
        image = cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB)
        faces = detector.detect([image])[0]
        assert faces, f"no face found in {name}"
        chips[name] = _crude_chip(image, max(faces, key=lambda f: f[4]))
    d = dict(zip(chips, _describe(resnet, list(chips.values()))))
    assert np.linalg.norm(d["obama/obama1.jpg"] - d["obama/obama2.jpg"]) < 0.6
    assert np.linalg.norm(d["obama/obama1.jpg"] - d["biden/biden1.jpg"]) > 0.6


# --- the detector --------------------------------------------------------------------------------------------


def test_tiled_pyramid_layout():
    shape, rects = pyramid_rects(512, 512)
    assert shape == (1895, 534) and len(rects) == 24
    assert rects[0] == (11, 11, 522, 522) and rects[1] == (11, 533, 436, 958) and rects[5] == (319, 1680, 522, 1883)
    assert pyramid_rects(0, 10) == ((0, 0), [])


def test_detector_finds_the_astronaut(detector, astronaut):
    faces = detector.detect([astronaut])[0]
    assert len(faces) == 1
    left, top, right, bottom, score = faces[0]
    assert abs((left + right) / 2 - 215.5) < 8 and abs((top + bottom) / 2 - 116.5) < 8
    assert 80 <= right - left + 1 <= 120 and score > 0.5


def test_detector_matches_dlib(detector, astronaut):
    dlib = pytest.importorskip("dlib")
    reference = dlib.cnn_face_detection_model_v1(str(MODELS / MMOD_FILE))
    small = np.ascontiguousarray(astronaut[::2, ::2])  # 256 x 256: the face (~48 px) needs upsample=1
    for image, upsample in [(astronaut, 0), (small, 1), (small, 0)]:
        ours = detector.detect([image], upsample=upsample)[0]
        theirs = [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence)
                  for d in reference(image, upsample)]
        assert [f[:4] for f in ours] == [f[:4] for f in theirs]
        assert np.allclose([f[4] for f in ours], [f[4] for f in theirs], atol=1e-4)


def test_batched_grey_and_tiny_inputs(detector, astronaut):
    grey = astronaut.mean(axis=2).astype(np.uint8)
    mirrored = astronaut[:, ::-1].copy()
    alone = [detector.detect([img])[0] for img in (astronaut, mirrored)]
    together = detector.detect([astronaut, np.zeros((6, 6, 3), np.uint8), mirrored, grey])
    for batched, single in [(together[0], alone[0]), (together[2], alone[1])]:
        assert [f[:4] for f in batched] == [f[:4] for f in single]
        assert np.allclose([f[4] for f in batched], [f[4] for f in single], atol=1e-5)
    assert together[1] == []  # too small for the network: no faces, no error
    assert len(together[3]) == 1 and abs(together[3][0][0] - alone[0][0][0]) <= 4
    one_at_a_time = MmodFaceDetector(detector.module, max_batch_pixels=1).detect([astronaut, mirrored])
    assert [[f[:4] for f in faces] for faces in one_at_a_time] == [[f[:4] for f in faces] for faces in alone]
    left, _, right, _, _ = together[2][0]
    assert abs((left + right) / 2 - (511 - 215.5)) < 20  # found on the other side (the net is not symmetric)


# --- convert once, then the cache --------------------------------------------------------------------------


def test_converted_once_then_read_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CVTOOL_CACHE", str(tmp_path))
    calls = []

    def counting(path):
        calls.append(path)
        return resnet_state_dict_from_dlib(path)

    dat = convert.face_model_path(RESNET_FILE)
    first = convert.converted_state_dict(dat, counting, "resnet_test")
    cached = convert.cache_path_for(dat, "resnet_test")
    assert cached.is_file() and cached.parent == tmp_path / "dlib" and len(calls) == 1
    start = time.perf_counter()
    second = convert.converted_state_dict(dat, counting, "resnet_test")
    assert time.perf_counter() - start < 2.0 and len(calls) == 1
    assert second.keys() == first.keys() and all(torch.equal(first[k], second[k]) for k in first)

    cached.write_bytes(b"not a torch file")  # corrupt: rebuilt, not fatal
    third = convert.converted_state_dict(dat, counting, "resnet_test")
    assert len(calls) == 2 and torch.equal(third["fc.weight"], first["fc.weight"])
    assert torch.load(cached, weights_only=True).keys() == first.keys()


def test_cache_key_follows_the_source_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CVTOOL_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / MMOD_FILE
    shutil.copy(MODELS / MMOD_FILE, copy)
    before = convert.cache_path_for(copy, "mmod")
    with open(copy, "ab") as handle:
        handle.write(b"\x00")
    assert convert.cache_path_for(copy, "mmod") != before


def test_cache_root_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CVTOOL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert convert.cache_root() == tmp_path / "cvtool"


def test_missing_package_file_names_the_fix(monkeypatch):
    with pytest.raises(WeightsError, match="missing from the installed face_recognition_models"):
        convert.face_model_path("no_such_model.dat")
    monkeypatch.setattr(convert, "face_models_dir", lambda: None)
    with pytest.raises(WeightsError, match="pip install face_recognition_models"):
        convert.face_model_path(RESNET_FILE)


def test_registry_entries_load(cache_dir):
    from cvtool.models.loading import load_model
    from cvtool.models.registry import get_entry

    embed = load_model("dlib_face_resnet", task="face-embed")
    assert isinstance(embed.module, FaceResNet) and Path(embed.weights_path).parent == cache_dir / "dlib"
    entry = get_entry("dlib_mmod_face", task="face-detect")
    assert entry.weights.kind == "package" and entry.weights.is_available() and "CC0" in entry.licence
    found = load_model("dlib_mmod_face", task="face-detect")
    assert sum(p.numel() for p in found.module.parameters()) == entry.num_params
