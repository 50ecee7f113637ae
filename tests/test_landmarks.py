"""Landmark regression: `cvtool train landmarks`, `cvtool landmarks`, `cvtool val landmarks`, the API object.

Small generated data: a rigid five-dot pattern placed and sized at random on dark 64 x 64 images, its dots' centres
the points (known exactly). The geometry (crops, flips, NME) is checked against known answers; training a LeNet-5
backbone for a few seconds must beat the mean-shape guess by far. Real faces (HELEN) train behind `slow`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvtool.ops import landmarks as geo
from cvtool.train.datasets import DataError
from cvtool.train.landmark_regression import read_pts, open_landmark_data
from tests.conftest import invoke_cli, jsonl

TEMPLATE = np.array([[-1, -0.6], [1, -0.6], [0, 0.1], [-0.6, 0.8], [0.6, 0.8]])
PAIRS = "0:1,3:4"  # the pattern's left/right dots
HELEN = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "helen_landmarks"


def make_dots(root: Path, n: int = 60, seed: int = 0, *, pts_dir: str | None = None) -> list[np.ndarray]:
    """n images with the pattern; .pts beside each image (header-less) or images/ + `pts_dir`/ (with header)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images" if pts_dir else root
    label_dir = root / pts_dir if pts_dir else root
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    all_points = []
    for i in range(n):
        image = np.full((64, 64, 3), 30, np.uint8)
        angle = np.radians(rng.uniform(-25, 25))
        turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = (TEMPLATE @ turn.T) * rng.uniform(10, 18) + rng.uniform(22, 42, 2) + rng.uniform(-1.5, 1.5, (5, 2))
        for x, y in points:
            cv2.circle(image, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
        cv2.imwrite(str(image_dir / f"img{i:02d}.png"), image)
        text = geo.format_pts(points) if pts_dir else "".join(f"{x:.3f} {y:.3f}\n" for x, y in points)
        (label_dir / f"img{i:02d}.pts").write_text(text)
        all_points.append(points)
    return all_points


@pytest.fixture(scope="module")
def dots(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dots")
    make_dots(root)
    return root


def _train(data: Path, out: Path, **extra) -> dict:
    import cvtool

    options = dict(arch="lenet5", epochs=30, lr=3e-3, flip_pairs=PAIRS, fit_faces=0, device="cpu", out=out)
    return cvtool.train.landmarks(data, **{**options, **extra})


@pytest.fixture(scope="module")
def box_run(dots, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("box") / "run"
    return out, _train(dots, out)


@pytest.fixture(scope="module")
def image_run(dots, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("image") / "run"
    return out, _train(dots, out, region="image", rotate=0.0, jitter=0.0)


# -- reading --------------------------------------------------------------------------------------------------

def test_pts_with_and_without_the_header_read_alike(tmp_path):
    points = np.array([[1.5, 2.25], [30.0, 40.125], [5.0, 6.0]])
    bare, headed = tmp_path / "bare.pts", tmp_path / "headed.pts"
    bare.write_text("1.5 2.25\n30 40.125\n\n5 6\n")
    headed.write_text(geo.format_pts(points))
    assert headed.read_text().startswith("version: 1\nn_points: 3\n{\n")
    np.testing.assert_allclose(read_pts(bare), points)
    np.testing.assert_allclose(read_pts(headed), points)


@pytest.mark.parametrize("text, reason", [
    ("1 2\n3\n", "point 2 is '3', not 'x y'"),
    ("1 2\nx y\n", "point 2 is 'x y', not 'x y'"),
    ("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n", "n_points says 3 but the file holds 2"),
    ("version: 1\nn_points: 2\n1 2\n3 4\n", "between '{' and '}'"),
    ("version: 1\n{\n1 2\n}\n", "'version' is not followed by 'n_points: N'"),
    ("", "no points"),
    ("1 nan\n", "not finite"),
])
def test_a_malformed_pts_file_is_one_line_naming_it(tmp_path, text, reason):
    path = tmp_path / "bad.pts"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_pts(path)
    assert str(info.value).startswith(f"{path}: ") and reason in str(info.value) and "\n" not in str(info.value)


def test_every_layout_reads_the_same_points(tmp_path):
    beside = make_dots(tmp_path / "beside", n=4)
    split = make_dots(tmp_path / "split", n=4, pts_dir="labels")
    for a, b in zip(beside, split):
        np.testing.assert_allclose(a, b)
    rows = [[f"beside/img{i:02d}.png", *np.round(p, 3).reshape(-1).tolist()] for i, p in enumerate(beside)]
    (tmp_path / "points.csv").write_text("path," + ",".join(f"x{i},y{i}" for i in range(5)) + "\n"
                                         + "".join(",".join(map(str, r)) + "\n" for r in rows))
    (tmp_path / "points.json").write_text(json.dumps([{"path": r[0], "points": np.reshape(r[1:], (-1, 2)).tolist()}
                                                      for r in rows]))
    for spec in ("beside", "split", "points.csv", "points.json"):
        data = open_landmark_data(tmp_path / spec)
        assert len(data) == 4 and [Path(s).name for s in data.sources] == [f"img{i:02d}.png" for i in range(4)]
        for got, want in zip(data.points, beside):
            np.testing.assert_allclose(got, want, atol=1e-3)


def _cli_error(*args) -> str:
    result = invoke_cli("train", "landmarks", *map(str, args))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("cvtool: training ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_bad_training_data_is_one_line_naming_the_file_and_nothing_is_written(tmp_path):
    data = tmp_path / "data"
    make_dots(data, n=6)
    out = tmp_path / "run"
    (data / "img03.pts").write_text("1 2\n3 4\n5 6\n7 8\n")  # 4 points where the others have 5
    before = {p: p.read_bytes() for p in data.iterdir()}
    line = _cli_error(data, "--arch", "lenet5", "--out", out, "--fit-faces", "0")
    assert line == f"cvtool: {data / 'img03.pts'}: 4 points, but {data / 'img00.pts'} has 5 (every image needs the " \
                   "same points)"
    (data / "img03.pts").write_text("12 13\n1e9 4\n5 6\n7 8\n9 10\n")
    assert "point 1 (1000000000.0, 4.0) is outside the 64x64 image" in _cli_error(data, "--arch", "lenet5", "--out",
                                                                                   out, "--fit-faces", "0")
    (data / "img03.pts").write_text("12 13\n14 oops\n")
    assert f"{data / 'img03.pts'}: malformed .pts: point 2" in _cli_error(data, "--arch", "lenet5", "--out", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli_error(empty, "--out", out) == f"cvtool: {empty}: no images in this folder (expected images with " \
                                              ".pts files beside them or in labels/)"
    (tmp_path / "bad.csv").write_text("a.png,1,2,3\n")
    assert "row 1: expected path,x0,y0,x1,y1,..." in _cli_error(tmp_path / "bad.csv", "--out", out)
    (tmp_path / "bad.json").write_text('{"images": [{"path": "a.png"}]}')
    assert "entry 1: expected" in _cli_error(tmp_path / "bad.json", "--out", out)
    assert "--flip-pairs" in _cli_error(data, "--flip-pairs", "0-1", "--out", out)
    assert not out.exists()
    assert {p: p.read_bytes() for p in data.iterdir() if p.name != "img03.pts"} == \
           {p: b for p, b in before.items() if p.name != "img03.pts"}


# -- geometry -------------------------------------------------------------------------------------------------

def test_the_ibug_flip_mapping_swaps_sides_and_is_its_own_inverse():
    flip = geo.IBUG_68.flip
    assert sorted(flip) == list(range(68)) and all(flip[flip[i]] == i for i in range(68))
    assert (flip[36], flip[45], flip[0], flip[16], flip[48], flip[54]) == (45, 36, 16, 0, 54, 48)
    assert [i for i in range(68) if flip[i] == i] == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]  # the midline
    assert geo.layout_for(68) is geo.IBUG_68 and geo.layout_for(5) is geo.DLIB_5
    assert geo.layout_for(3).pairs == () and geo.layout_for(3, [(0, 2)]).flip == (2, 1, 0)
    with pytest.raises(ValueError):
        geo.layout_for(3, [(0, 0)])


@pytest.mark.parametrize("side", [40.0, 400.0])  # 400: the crop shrinks the image 10x (area-averaged first)
def test_a_crop_puts_an_image_point_where_its_matrix_says(side):
    image = np.zeros((600, 700, 3), np.uint8)
    dot = np.array([330.0, 270.0])
    cv2.circle(image, (330, 270), max(2, int(side / 30)), (255, 255, 255), -1)
    matrix = geo.crop_matrix(320.0, 280.0, side, 64, angle=20.0, flip=True)
    crop = geo.warp(image, matrix, 64).astype(np.float64).sum(2)
    ys, xs = np.nonzero(crop > crop.max() * 0.5)
    centre = np.array([(xs * crop[ys, xs]).sum(), (ys * crop[ys, xs]).sum()]) / crop[ys, xs].sum()
    np.testing.assert_allclose(centre, geo.apply(matrix, dot[None])[0], atol=0.6)
    back = geo.from_crop_fractions(geo.to_crop_fractions(geo.apply(matrix, dot[None]), 64), matrix, 64)
    np.testing.assert_allclose(back[0], dot, atol=1e-9)


def test_a_flipped_sample_mirrors_the_points_and_swaps_the_pairs(dots):
    from cvtool.models.landmark_net import landmark_preprocess
    from cvtool.train.landmark_regression import LandmarkDataset, decode_patches

    layout = geo.layout_for(5, [(0, 1), (3, 4)])
    patches = decode_patches(open_landmark_data(dots).subset([0]), "box", 32)
    pre = landmark_preprocess("lenet5", 32)
    plain = LandmarkDataset(patches, pre, 32, layout)[0]
    flipped = LandmarkDataset(patches, pre, 32, layout, augment=True, hflip=True)
    seed = next(s for s in range(100) if np.random.default_rng(s).uniform(size=5)[4] < 0.5)
    flipped.rotate, flipped.jitter = 0.0, 0.0
    image, target = flipped[(0, seed)]
    want = plain[1][:10].numpy().reshape(5, 2)[[1, 0, 2, 4, 3]]
    want[:, 0] = 1 - want[:, 0]
    np.testing.assert_allclose(target[:10].numpy().reshape(5, 2), want, atol=1e-5)


def test_nme_and_failure_rates_have_their_known_values():
    truth = np.zeros((4, 68, 2))
    truth[:, :, 0] = np.linspace(0, 100, 68)
    truth[:, 45, 0], truth[:, 36, 0] = 150.0, 50.0  # outer eye corners 100 px apart
    shifts = np.array([3.0, 9.0, 9.5, 20.0])  # px, every point: NME 0.03, 0.09, 0.095, 0.2
    predicted = truth + np.stack([shifts, np.zeros(4)], 1)[:, None, :]
    errors = geo.nme(predicted, truth, geo.IBUG_68)
    np.testing.assert_allclose(errors, shifts / 100)
    summary = geo.nme_summary(errors, geo.IBUG_68)
    assert summary["failure_0.08"] == 0.75 and summary["failure_0.10"] == 0.25 and summary["nme"] == 0.10375
    generic = geo.layout_for(2)  # the box diagonal: a 30 x 40 box, 50 px
    assert geo.nme(np.array([[[5.0, 0], [35, 40]]]), np.array([[[0.0, 0], [30, 40]]]), generic)[0] == 0.1


def test_a_box_fit_recovers_how_detector_boxes_sit_on_the_points():
    rng = np.random.default_rng(1)
    truth = [np.array([x, y, x + s, y + s * 1.1]) for x, y, s in rng.uniform(50, 300, (20, 3))]
    # a detector whose boxes are 0.8 x the points' larger side, centred 0.1 side higher
    detected = []
    for t in truth:
        side = max(t[2] - t[0], t[3] - t[1]) / 0.8
        cx, cy = (t[0] + t[2]) / 2, (t[1] + t[3]) / 2 - 0.1 * side
        detected.append([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
    fit = geo.fit_boxes(detected, truth, "mmod", 80)
    assert (fit.dx, fit.dy, fit.scale, fit.faces) == (0.0, 0.1, 0.8, 20)
    ref = fit.reference_box(detected[0])
    np.testing.assert_allclose([(ref[0] + ref[2]) / 2, (ref[1] + ref[3]) / 2],
                               [(truth[0][0] + truth[0][2]) / 2, (truth[0][1] + truth[0][3]) / 2])
    assert geo.BoxFit.from_dict(fit.to_dict()) == fit and geo.fit_boxes([], [], "mmod", 80) is None


# -- training and inference ------------------------------------------------------------------------------------

def _mean_shape_nme(dots: Path) -> float:
    """The error of guessing every image's points as the training set's mean (crop fractions), in box crops."""
    data = open_landmark_data(dots)
    fractions = []
    for pts in data.points:
        matrix = geo.crop_matrix(*geo.crop_square(geo.points_box(pts)), 32)
        fractions.append(geo.to_crop_fractions(geo.apply(matrix, pts), 32))
    mean = np.mean(fractions, 0)
    guesses = [geo.from_crop_fractions(mean, geo.crop_matrix(*geo.crop_square(geo.points_box(p)), 32), 32)
               for p in data.points]
    return float(geo.nme(np.stack(guesses), np.stack(data.points), geo.layout_for(5)).mean())


def test_training_learns_the_points_and_writes_a_self_describing_run(box_run, dots):
    from cvtool.models.checkpoint import load_weights_file

    out, summary = box_run
    assert summary["points"] == 5 and summary["layout"] == "points5" and summary["normaliser"] == "box diagonal"
    assert summary["train_images"] == 48 and summary["val_images"] == 12 and summary["epochs"] == 30
    # the pattern turns and its dots wander: in its box the mean shape is a poor guess, the network a good one
    assert summary["val"]["nme"] < 0.05 and summary["val"]["failure_0.10"] <= 0.25
    assert summary["val"]["nme"] < 0.5 * _mean_shape_nme(dots)
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "summary.json"):
        assert (out / name).is_file()
    meta = load_weights_file(out / "best.pt").meta
    assert meta["arch"] == "landmark_net" and meta["task"] == "landmarks"
    assert meta["arch_kwargs"] == {"backbone": "lenet5", "num_points": 5}
    assert meta["landmark_layout"]["pairs"] == [[0, 1], [3, 4]] and meta["landmark_region"] == "box"
    assert meta["landmark_box_fit"] is None  # --fit-faces 0


def test_val_landmarks_on_true_boxes_scores_what_training_validated(box_run, dots):
    out, summary = box_run
    result = invoke_cli("val", "landmarks", str(dots), "--weights", str(out / "best.pt"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 60 and report["boxes"] == "points" and report["layout"] == "points5"
    assert report["nme"] < 0.05 and report["failure_0.10"] <= 0.2


def test_a_box_model_without_a_detector_fit_says_to_use_no_detect(box_run, dots):
    out, _ = box_run
    result = invoke_cli("landmarks", str(dots / "img00.png"), "--weights", str(out / "best.pt"))
    assert result.returncode == 2
    assert "trained without measuring a face detector's boxes" in result.stderr and "--no-detect" in result.stderr


def test_cvtool_landmarks_finds_the_points_and_writes_them(image_run, dots, tmp_path):
    import cvtool

    out, summary = image_run
    assert summary["region"] == "image" and summary["val"]["nme"] < 0.15
    truth = open_landmark_data(dots).points
    images = [str(dots / f"img{i:02d}.png") for i in range(50, 60)]
    result = invoke_cli("landmarks", *images, "--weights", str(out / "best.pt"), "-f", "jsonl", "--out",
                        str(tmp_path / "marked"), "--save-pts")
    assert result.returncode == 0, result.stderr
    records = jsonl(result.stdout)
    errors = [np.linalg.norm(np.array(r["result"]["faces"][0]["points"]) - truth[50 + i], axis=1).mean()
              for i, r in enumerate(records)]
    mean_guess = np.mean(truth, 0)  # the pattern's average place, the best guess without looking
    guess_errors = [np.linalg.norm(mean_guess - truth[50 + i], axis=1).mean() for i in range(10)]
    assert np.mean(errors) < 0.6 * np.mean(guess_errors) and np.mean(errors) < 6.0  # px, on 64 x 64 images
    first = records[0]
    assert first["result"]["names"] == ["p0", "p1", "p2", "p3", "p4"] and first["result"]["faces"][0]["score"] is None
    assert sorted(Path(p).name for p in first["outputs"]) == ["img50.face00.pts", "img50.landmarks.jpg"]
    np.testing.assert_allclose(read_pts(tmp_path / "marked" / "img50.face00.pts"),
                               first["result"]["faces"][0]["points"], atol=1e-3)
    api = cvtool.LandmarkDetector(weights=out / "best.pt")(images[0])
    assert api.points.shape == (1, 5, 2)
    np.testing.assert_allclose(api.points[0], first["result"]["faces"][0]["points"], atol=0.01)
    table = invoke_cli("landmarks", images[0], "--weights", str(out / "best.pt"), "-f", "csv")
    lines = table.stdout.splitlines()
    assert lines[0] == "path,frame,face,point,name,x,y,error" and len(lines) == 6


def test_the_onnx_export_predicts_the_same_points(image_run, dots, tmp_path):
    import cvtool

    out, _ = image_run
    report = cvtool.export_onnx(out / "best.pt", tmp_path / "lm.onnx")
    assert report["max_abs_diff"] < 1e-4
    image = str(dots / "img07.png")
    torch_points = cvtool.LandmarkDetector(weights=out / "best.pt")(image).points
    onnx = cvtool.LandmarkDetector(weights=tmp_path / "lm.onnx")
    assert onnx.loaded.backend == "onnxruntime" and onnx.layout.num_points == 5
    np.testing.assert_allclose(onnx(image).points, torch_points, atol=0.01)


def test_a_bad_image_in_a_batch_is_one_line_and_the_rest_go_on(image_run, dots, tmp_path):
    out, _ = image_run
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    result = invoke_cli("landmarks", str(bad), str(dots / "img00.png"), "--weights", str(out / "best.pt"), "-f",
                        "jsonl")
    assert result.returncode == 1
    records = jsonl(result.stdout)
    assert "error" in records[0] and records[0]["path"] == str(bad) and "faces" in records[1]["result"]
    assert str(bad) in result.stderr and "Traceback" not in result.stderr


# -- real faces ------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not HELEN.is_dir(), reason="../shared/datasets/helen_landmarks is not here")
def test_helen_faces_train_and_the_detector_path_finds_them(tmp_path):
    """80 real HELEN faces, a small ResNet-18 at 64 px for a few epochs: the face detector's fit is measured and
    `cvtool landmarks` on a held-out photo puts its points closer to the markup than the fit's crop centre does."""
    import cvtool

    data = open_landmark_data(HELEN)
    listed = tmp_path / "faces.json"
    listed.write_text(json.dumps([{"path": s, "points": p.tolist()} for s, p in zip(data.sources[:80], data.points)]))
    summary = cvtool.train.landmarks(listed, arch="resnet18", img_size=64, epochs=8, fit_faces=10, device="cpu",
                                     out=tmp_path / "run")
    assert summary["layout"] == "ibug68" and summary["box_fit"]["faces"] >= 5
    assert summary["val"]["nme"] < 0.5
    finder = cvtool.LandmarkDetector(weights=tmp_path / "run" / "best.pt")
    result = finder(data.sources[100])
    assert len(result.faces) >= 1
    truth = data.points[100]
    centre = np.repeat(truth.mean(0, keepdims=True), 68, 0)
    best = min(geo.nme(f[None], truth[None], geo.IBUG_68)[0] for f in result.points)
    assert best < geo.nme(centre[None], truth[None], geo.IBUG_68)[0]


def test_a_half_precision_export_is_checked_by_the_points_agreement(image_run, dots, tmp_path):
    import cvtool

    out, _ = image_run
    report = cvtool.export_onnx(out / "best.pt", tmp_path / "half.onnx", half=True, calibration=dots)
    agreement = report["agreement"]
    assert agreement["measure"] == "largest point distance (fraction of the crop)" and agreement["bar"] == 0.01
    assert 0 <= agreement["value"] <= 0.01 and agreement["inputs"] > 0


def test_the_server_answers_as_the_api_does(image_run, dots, tmp_path):
    """POST /landmarks (made from the task table like every endpoint) answers the record the API makes."""
    import os

    import cvtool
    from tests.test_serve import Server, request

    out, _ = image_run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CVTOOL_NO_PROGRESS": "1", "TMPDIR_SERVE": str(tmp_path)}
    for name in ("CVTOOL_OFFLINE", "CVTOOL_SERVER", "CVTOOL_TOKEN"):
        env.pop(name, None)
    server = Server("--allow-paths", str(out), env=env)
    try:
        image = dots / "img05.png"
        status, answer = request(f"{server.url}/landmarks?weights={out / 'best.pt'}&name=img05.png",
                                 image.read_bytes(), headers={"Content-Type": "application/octet-stream"})
        # the thin client: the same record, and the --out files the local pipeline writes, made here
        remote = invoke_cli("landmarks", str(image), "--weights", str(out / "best.pt"), "--out",
                            str(tmp_path / "remote"), "--save-pts", "-f", "jsonl", env={"CVTOOL_SERVER": server.url})
    finally:
        server.stop()
    assert status == 200, answer
    local = cvtool.LandmarkDetector(weights=out / "best.pt")(str(image)).to_dict()
    assert answer["task"] == "landmarks" and answer["result"] == local["result"]
    assert remote.returncode == 0, remote.stderr
    assert jsonl(remote.stdout)[0]["result"] == local["result"]
    assert sorted(p.name for p in (tmp_path / "remote").iterdir() if not p.name.startswith(".")) == [
        "img05.face00.pts", "img05.landmarks.jpg"]


def test_a_run_resumes_from_its_last_checkpoint(dots, tmp_path):
    import cvtool

    first = _train(dots, tmp_path / "run", epochs=2)
    before = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    resumed = cvtool.train.landmarks(resume=tmp_path / "run", epochs=3, device="cpu")
    history = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert first["epochs"] == 2 and resumed["epochs"] == 3 and len(history) == 4  # header + 3 epochs
    assert history[:3] == before and resumed["points"] == 5 and resumed["layout"] == "points5"
