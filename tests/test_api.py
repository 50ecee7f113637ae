"""The Python API (`import cvtool`): every task's object against the CLI's records for the same image,
every kind of image source, the array convention, errors, threads sharing one model, video streams,
and the training entries."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cvtool
from cvtool.cli import app
from conftest import SAMPLES, jsonl, save_random_unet, save_random_yolo

DIGITS = sorted((SAMPLES / "digits").glob("*.png"))
PHOTO = SAMPLES / "photos" / "chelsea.jpg"


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "ms"}


def _cli_records(*args: str) -> list[dict]:
    result = CliRunner().invoke(app, [*args, "-f", "jsonl"])
    assert result.exit_code in (0, 1), result.output
    return jsonl(result.stdout)


@pytest.fixture(scope="module")
def yolo_checkpoint(tmp_path_factory):
    return save_random_yolo(tmp_path_factory.mktemp("yolo") / "yolo.pt", ["cat", "dog"])


@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory):
    return save_random_unet(tmp_path_factory.mktemp("unet") / "unet.pt", ["background", "thing"])


@pytest.fixture(scope="module")
def style_checkpoint(tmp_path_factory):
    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.transformer_net import FAST_STYLE_PREPROCESS, TransformerNet

    torch.manual_seed(0)
    model = TransformerNet(width=4, blocks=1)
    path = tmp_path_factory.mktemp("style") / "style.pt"
    save_checkpoint(path, arch="fast_style", task="stylize", state_dict=model.state_dict(), classes=[],
                    preprocess=FAST_STYLE_PREPROCESS.to_dict(), extra={"arch_kwargs": {"width": 4, "blocks": 1}})
    return path


def test_import_cvtool_loads_no_torch_and_names_the_api():
    code = ("import sys, cvtool; assert 'torch' not in sys.modules; "
            "print(sorted(n for n in cvtool.__all__ if n[0].isupper()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names = set(eval(done.stdout))
    assert {"Classifier", "Detector", "Segmenter", "Stylizer", "FaceVerifier", "CvtoolError", "InputError"} <= names
    assert callable(cvtool.train.classify) and callable(cvtool.list_models) and callable(cvtool.export_onnx)


def test_classifier_records_equal_the_cli_records():
    clf = cvtool.Classifier("lenet5_digits", top_k=3, device="cpu")
    cli = _cli_records("classify", *map(str, DIGITS), "--model", "lenet5_digits", "-k", "3", "--device", "cpu")
    api = clf([str(p) for p in DIGITS])
    assert [_without_timing(r.to_dict()) for r in api] == [_without_timing(r) for r in cli]
    assert [r.label for r in api] == [str(i) for i in range(10)]  # digit_N.png is a handwritten N


def test_every_kind_of_image_source_gives_the_same_answer():
    from PIL import Image

    clf = cvtool.Classifier("lenet5_digits", top_k=2, device="cpu")
    path = DIGITS[7]
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    sources = [str(path), path, path.read_bytes(), rgb, Image.open(path), rgb[..., 0]]  # the last: grey H x W
    answers = [r.result["top_k"] for r in clf(sources)]
    assert all(a == answers[0] for a in answers) and answers[0][0]["label"] == "7"
    single = clf(rgb)
    assert single.path is None and single.to_dict()["path"] is None and single.label == "7"


@pytest.mark.parametrize("source, message", [
    (np.zeros((8, 8, 3), np.float32), "<array>: a float32 array; images are uint8 arrays (0-255, RGB)"),
    (np.zeros((2, 8, 8, 3), np.uint8), "<array>: an array of shape (2, 8, 8, 3); images are H x W x 3 (RGB)"),
    (np.zeros((0, 8, 3), np.uint8), "<array>: an empty image (0x8 pixels)"),
    (b"not an image", "<bytes>: not an image (unrecognised format)"),
    (12345, "<int>: unsupported image type int: give a path, encoded bytes, a NumPy array"),
    ([[0, 1], [2, 3]], "<list>: unsupported image type list: give a path, encoded bytes, a NumPy array"),
    ("no/such/file.png", "no/such/file.png: no such file"),
])
def test_bad_images_raise_input_error_with_the_cli_line(source, message):
    clf = cvtool.Classifier("lenet5_digits", device="cpu")
    with pytest.raises(cvtool.InputError) as caught:
        clf(source)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("make, message", [
    (lambda: cvtool.Classifier("lenet5_digits", top_k=0), "top_k=0 is out of range: at least 1"),
    (lambda: cvtool.Detector("no_such_model", conf=25), "conf=25 is out of range: from 0 to 1"),
    (lambda: cvtool.Detector("no_such_model", iou=-0.1), "iou=-0.1 is out of range: from 0 to 1"),
    (lambda: cvtool.Detector("no_such_model", max_det=0), "max_det=0 is out of range: at least 1"),
    (lambda: cvtool.Segmenter("no_such_model", alpha=1.5), "alpha=1.5 is out of range: from 0 to 1"),
    (lambda: cvtool.Segmenter("no_such_model", tile=8), "tile=8 is out of range: at least 16"),
    (lambda: cvtool.Segmenter("no_such_model", threshold=50), "threshold=50 is out of range: strictly between 0 and 1"),
    (lambda: cvtool.FaceVerifier("no_such_model", threshold=-1), "threshold=-1 is out of range: at least 0"),
    (lambda: cvtool.train.classify("no/such/data", epochs=0), "--epochs 0: must be at least 1"),
    (lambda: cvtool.train.detect("no/such/data", batch_size=0), "--batch-size 0: must be at least 1"),
    (lambda: cvtool.train.segment("no/such/data", lr=-1.0), "--lr -1.0: must be above 0"),
    (lambda: cvtool.train.face("no/such/data", weight_decay=-0.5), "--weight-decay -0.5: must be 0 or more"),
    (lambda: cvtool.train.style("no/such/style.jpg", data="no/such/data", epochs=-2),
     "--epochs -2: must be at least 1"),
])
def test_arguments_out_of_the_clis_ranges_are_usage_errors_before_any_load(make, message):
    """What the CLI's options refuse, the API refuses too, naming the argument, before a model is sought (the
    unknown model name would be the error otherwise): Detector(conf=25) found nothing, silently."""
    with pytest.raises(cvtool.UsageError) as caught:
        make()
    assert str(caught.value) == message


def test_a_batch_size_below_1_is_a_usage_error():
    clf = cvtool.Classifier("lenet5_digits", device="cpu")
    rgb = np.zeros((28, 28, 3), np.uint8)
    for call in (lambda: clf([rgb, rgb], batch_size=0), lambda: list(clf.run([], batch_size=0)),
                 lambda: next(clf.stream("cam:0", batch_size=0))):
        with pytest.raises(cvtool.UsageError, match=r"^batch_size=0 is out of range: at least 1$"):
            call()


def test_unknown_model_is_a_usage_error_with_a_suggestion():
    with pytest.raises(cvtool.UsageError, match="unknown model 'lenet5_digit'; did you mean lenet5_digits"):
        cvtool.Classifier("lenet5_digit")


def test_threads_share_one_loaded_model():
    clf = cvtool.Classifier("lenet5_digits", top_k=1, device="cpu")
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in DIGITS]
    expected = [clf(img).result for img in images]
    answers: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            answers[worker] = [clf(images[(worker + i) % 10]).result for i in range(20)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for worker, results in answers.items():
        assert results == [expected[(worker + i) % 10] for i in range(20)]
    assert len(answers) == 8


def test_detector_records_arrays_and_plot(yolo_checkpoint, tmp_path):
    det = cvtool.Detector(weights=yolo_checkpoint, conf=0.05, device="cpu")
    cli = _cli_records("detect", str(PHOTO), "--weights", str(yolo_checkpoint), "--conf", "0.05", "--device", "cpu")
    res = det(PHOTO)
    assert _without_timing(res.to_dict()) == _without_timing(cli[0])
    n = len(res.detections)
    assert n > 0 and res.boxes.shape == (n, 4) and res.scores.shape == (n,) and len(res.labels) == n
    assert res.boxes.dtype == np.float32 and set(res.labels) <= {"cat", "dog"}
    h, w = res.result["size"]
    assert (res.boxes[:, [0, 2]] >= 0).all() and (res.boxes[:, [0, 2]] <= w).all()
    plotted = res.plot()
    assert plotted.shape == (h, w, 3) and not np.array_equal(plotted, res.image)  # boxes were drawn
    saved = res.save(tmp_path / "boxes.png")
    assert cv2.imread(str(saved)).shape == (h, w, 3)


def test_detector_stream_yields_kept_frames_with_pixels(yolo_checkpoint, tmp_path):
    from test_video import make_video

    video = make_video(tmp_path / "clip.mp4", frames=10)
    det = cvtool.Detector(weights=yolo_checkpoint, conf=0.05, device="cpu")
    frames = list(det.stream(video, vid_stride=3))
    assert [r.record["frame"] for r in frames] == [0, 3, 6, 9]
    cli = _cli_records("detect", str(video), "--weights", str(yolo_checkpoint), "--conf", "0.05", "--vid-stride", "3",
                       "--device", "cpu")
    assert [_without_timing(r.to_dict()) for r in frames] == [_without_timing(r) for r in cli]
    assert frames[0].plot().shape == (48, 64, 3)
    with pytest.raises(cvtool.InputError, match="clip-missing.mp4"):
        next(det.stream(tmp_path / "clip-missing.mp4"))


def test_segmenter_records_and_mask(unet_checkpoint):
    seg = cvtool.Segmenter(weights=unet_checkpoint, device="cpu")
    cli = _cli_records("segment", str(PHOTO), "--weights", str(unet_checkpoint), "--device", "cpu")
    res = seg(PHOTO)
    assert _without_timing(res.to_dict()) == _without_timing(cli[0])
    h, w = res.result["size"]
    assert res.mask.shape == (h, w)
    counts = np.bincount(res.mask.ravel(), minlength=2)
    assert {c["label"]: c["pixels"] for c in res.classes} == {
        name: int(counts[i]) for i, name in enumerate(["background", "thing"]) if counts[i]}
    assert res.plot().shape == (h, w, 3)


def test_feed_forward_stylizer_matches_the_cli_output(style_checkpoint, tmp_path):
    sty = cvtool.Stylizer(style_checkpoint, device="cpu")
    out = tmp_path / "styled.png"
    cli = _cli_records("stylize", str(PHOTO), "--model", str(style_checkpoint), "--out", str(out), "--device", "cpu")
    res = sty(PHOTO)
    expected = _without_timing(cli[0])
    expected.pop("outputs")
    assert _without_timing(res.to_dict()) == expected
    written = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(res.stylized, written) and np.array_equal(res.plot(), written)


def test_stylizer_refuses_mixed_modes_in_one_line(style_checkpoint):
    with pytest.raises(cvtool.UsageError, match="a feed-forward --model carries its style"):
        cvtool.Stylizer(style_checkpoint, style=str(PHOTO))
    with pytest.raises(cvtool.UsageError, match="give a style image"):
        cvtool.Stylizer()
    with pytest.raises(cvtool.UsageError, match="unknown backend 'onnx'; use auto, torch or onnxruntime"):
        cvtool.Stylizer(style=str(PHOTO), backend="onnx")
    with pytest.raises(cvtool.UsageError, match="--backend auto needs --model"):
        cvtool.Stylizer(style=str(PHOTO), backend="auto")
    with pytest.raises(cvtool.UsageError, match="Stylizer.run writes the stylised images: give out"):
        cvtool.Stylizer(style_checkpoint, device="cpu").run([str(PHOTO)], out=None)


def test_run_is_the_cli_batch(tmp_path):
    clf = cvtool.Classifier("lenet5_digits", top_k=1, device="cpu")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    results = list(clf.run([str(SAMPLES / "digits"), str(tmp_path / "broken.png")], out=tmp_path / "out"))
    assert [r.ok for r in results] == [True] * 10 + [False]
    assert results[-1].to_dict() == {"path": str(tmp_path / "broken.png"),
                                     "error": "truncated or corrupt PNG (no IEND chunk)"}
    written = json.loads((tmp_path / "out" / "digit_3.json").read_text())
    assert written["result"] == results[3].result
    with pytest.raises(cvtool.UsageError, match="plot"):
        results[0].plot()


def test_train_classify_entry_returns_the_summary_and_calls_back(tmp_path):
    from sklearn.datasets import load_digits

    data = tmp_path / "digits"
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:90], digits.target[:90])):
        if label < 3:
            folder = data / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i}.png"), (image * 255 / 16).astype(np.uint8))

    class Recorder(cvtool.train.Callbacks):
        def __init__(self):
            self.events = []

        def on_train_start(self, run):
            self.events.append(("start", run.run_dir, run.resumed))

        def on_epoch_end(self, row):
            self.events.append(("epoch", row["epoch"]))

    recorder = Recorder()
    summary = cvtool.train.classify(data, arch="lenet5", epochs=2, batch_size=16, out=tmp_path / "run", device="cpu",
                                    callbacks=recorder)
    assert recorder.events == [("start", tmp_path / "run", False), ("epoch", 1), ("epoch", 2)]
    assert summary["run_dir"] == str(tmp_path / "run") and (tmp_path / "run" / "best.pt").is_file()
    assert set(summary["val_report"]["per_class"]) == {"0", "1", "2"}
    resumed = cvtool.train.classify(resume=tmp_path / "run", epochs=3, callbacks=recorder, device="cpu")
    assert recorder.events[-2:] == [("start", tmp_path / "run", True), ("epoch", 3)]
    assert resumed["epochs"] == 3
    clf = cvtool.Classifier(weights=tmp_path / "run" / "best.pt", device="cpu")
    assert clf.classes == ["0", "1", "2"]
    with pytest.raises(cvtool.UsageError, match="DATA is required"):
        cvtool.train.classify(arch="lenet5", out=tmp_path / "other")


def test_list_models_is_the_registry_view():
    names = {m["name"]: m for m in cvtool.list_models(task="classify")}
    assert "lenet5_digits" in names and all(m["task"] == "classify" for m in names.values())


def _readme_python_blocks() -> list[str]:
    text = (SAMPLES.parent / "README.md").read_text()
    section = text[text.index("## Python API"):text.index("## Usage")]
    blocks = section.split("```python\n")[1:]
    return [block[: block.index("```")] for block in blocks]


def test_the_readme_python_examples_run(tmp_path, monkeypatch):
    """Every ```python block of the README's "Python API" section runs, in order, in one namespace (blocks
    starting `# needs:` name weights or files a fresh machine cannot have, and are only compiled)."""
    from sklearn.datasets import load_digits

    (tmp_path / "sample_images").symlink_to(SAMPLES)
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:120], digits.target[:120])):
        folder = tmp_path / "digits" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), (image * 255 / 16).astype(np.uint8))
    monkeypatch.chdir(tmp_path)
    blocks = _readme_python_blocks()
    assert len(blocks) >= 5
    namespace: dict = {}
    ran = 0
    for block in blocks:
        code = compile(block, "README.md", "exec")
        if block.startswith("# needs:"):
            continue
        exec(code, namespace)  # noqa: S102 - the README's own examples
        ran += 1
    assert ran >= 5
    assert (tmp_path / "labels" / "digit_5.json").is_file() and (tmp_path / "runs" / "digits" / "best.pt").is_file()
    assert namespace["digits"].classes == [str(i) for i in range(10)]


def test_face_verifier_records_equal_the_cli_records(tmp_path):
    photo = SAMPLES / "photos" / "astronaut.jpg"
    mirrored = tmp_path / "mirrored.png"
    cv2.imwrite(str(mirrored), cv2.imread(str(photo))[:, ::-1])
    fv = cvtool.FaceVerifier(device="cpu")
    cli = CliRunner().invoke(app, ["verify-face", str(photo), str(mirrored), "-f", "jsonl", "--device", "cpu"])
    assert cli.exit_code == 0, cli.output  # the same person
    api = fv.verify(photo, mirrored)
    assert _without_timing(api.to_dict()) == _without_timing(jsonl(cli.stdout)[0])
    from_arrays = fv.verify(cv2.imread(str(photo))[..., ::-1], cv2.imread(str(mirrored))[..., ::-1])
    assert from_arrays.distance == pytest.approx(api.distance, abs=1e-6) and from_arrays.path is None

    gallery_dir = tmp_path / "known"
    gallery_dir.mkdir()
    cv2.imwrite(str(gallery_dir / "eileen.png"), cv2.imread(str(photo)))
    known = fv.gallery(gallery_dir)
    named = fv.identify(mirrored, known)
    cli = CliRunner().invoke(app, ["verify-face", "--gallery", str(gallery_dir), str(mirrored), "-f", "jsonl",
                                   "--device", "cpu"])
    assert cli.exit_code == 0, cli.output
    assert _without_timing(named.to_dict()) == _without_timing(jsonl(cli.stdout)[0])
    assert [f["name"] for f in named.result["faces"]] == ["eileen"]
    assert named.plot().shape == cv2.imread(str(mirrored)).shape


def test_cli_coco_lists_every_category_of_the_model(yolo_checkpoint, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((40, 60, 3), 128, np.uint8))
    result = CliRunner().invoke(app, ["detect", str(blank), "--weights", str(yolo_checkpoint), "--conf", "0.99",
                                      "-f", "coco"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["annotations"] == []  # nothing passes --conf 0.99 on a blank image
    assert document["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert document["images"] == [{"id": 1, "file_name": str(blank), "width": 60, "height": 40}]


def test_run_never_writes_onto_an_input_or_a_style_image(tmp_path, style_checkpoint):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "a.stylized.png"):  # the second is named like the first one's output
        cv2.imwrite(str(folder / name), np.full((20, 30, 3), 90, np.uint8))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    sty = cvtool.Stylizer(style_checkpoint, device="cpu")
    results = list(sty.run([folder / "a.png", folder / "a.stylized.png"], out=folder))
    assert results[0].error == f"output {folder / 'a.stylized.png'} would overwrite an input of this batch; choose another --out"
    assert results[1].ok and {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before
    # a directory input: the user's a.stylized.png (not written by cvtool) is an input and stays untouched; the
    # output cvtool wrote for it in the first run (a.stylized.stylized.png) is not taken as an input
    rerun = list(sty.run(folder, out=folder))
    assert [r.path for r in rerun] == [str(folder / "a.png"), str(folder / "a.stylized.png")]
    assert "would overwrite an input of this batch" in rerun[0].error
    assert rerun[1].ok and rerun[1].record["outputs"] == [str(folder / "a.stylized.stylized.png")]
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before
