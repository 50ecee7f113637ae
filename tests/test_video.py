"""Video files and cameras through classify, detect and segment: per-frame records, annotated videos,
bad inputs, Ctrl-C, and memory that does not grow with the video's length."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.io.render import class_palette, draw_detections
from conftest import jsonl

FPS = 10.0
SIZE = (64, 48)  # width, height


def make_video(path, frames=20, size=SIZE, fps=FPS, fourcc="mp4v"):
    """Moving shapes on a grey background; frame i's square sits at x = 2 + 2i."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((h, w, 3), 128, np.uint8)
        x = (2 + 2 * i) % max(1, w - h // 2)
        cv2.rectangle(frame, (x, h // 5), (x + h // 3, h // 5 + h // 3), (0, 0, 255), -1)
        cv2.circle(frame, (w - 1 - x, 2 * h // 3), h // 8, (255, 255, 0), -1)
        writer.write(frame)
    writer.release()
    return path


def read_frames(path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    fps, frames = capture.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames, fps


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    (root / "bad.mp4").write_text("not a video")
    cv2.imwrite(str(root / "still.png"), np.full((SIZE[1], SIZE[0], 3), 200, np.uint8))
    return {"mp4": make_video(root / "shapes.mp4"), "avi": make_video(root / "shapes.avi", fourcc="MJPG"),
            "bad": root / "bad.mp4", "image": root / "still.png"}


def _frame_records(records, path):
    return [r for r in records if r["path"] == str(path) and "error" not in r]


def test_detect_streams_frames_with_stride_and_writes_the_annotated_video(clips, yolo_checkpoint, tmp_path):
    out = tmp_path / "out"
    args = ["detect", str(clips["image"]), str(clips["mp4"]), str(clips["bad"]), "--weights", str(yolo_checkpoint),
            "--conf", "0.05", "--vid-stride", "3", "--batch-size", "4", "--out", str(out), "-f", "jsonl"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # the bad video fails; the image and the good video are processed
    records = jsonl(result.stdout)
    assert records[0]["path"] == str(clips["image"]) and "frame" not in records[0]  # input order kept
    frames = _frame_records(records, clips["mp4"])
    assert len(frames) == math.ceil(20 / 3) == len(records) - 2
    assert [r["frame"] for r in frames] == list(range(0, 20, 3))
    assert [r["time_s"] for r in frames] == pytest.approx([i / FPS for i in range(0, 20, 3)], abs=1e-3)
    target = out / "shapes.detect.mp4"
    assert all(r["outputs"] == [str(target)] and r["model"] == "yolo" and r["result"]["size"] == [48, 64]
               for r in frames)
    assert records[-1] == {"path": str(clips["bad"]), "error": "not a video OpenCV can read"}
    assert f"cvtool: {clips['bad']}: not a video OpenCV can read" in result.stderr

    written, fps = read_frames(target)
    source, _ = read_frames(clips["mp4"])
    assert len(written) == len(frames) and written[0].shape == (48, 64, 3) and fps == pytest.approx(FPS / 3, rel=1e-3)
    assert sum(len(r["result"]["detections"]) for r in frames) > 0
    for record, shown in zip(frames, written):  # each written frame is its own frame with its own boxes drawn
        frame = source[record["frame"]]
        drawn = draw_detections(frame, record["result"]["detections"]).astype(int)
        if record["result"]["detections"]:
            assert np.abs(shown - drawn).mean() < np.abs(shown - frame.astype(int)).mean()
    assert sorted(p.name for p in out.iterdir()) == [".cvtool-outputs", "shapes.detect.mp4", "still.detect.jpg"]

    again = CliRunner().invoke(app, [*args[:-2], "--skip-existing", "-f", "jsonl"])
    assert again.exit_code == 1 and "2 skipped (output exists)" in again.stderr  # the image and the video
    assert jsonl(again.stdout) == [records[-1]]


def test_segment_overlays_every_frame_of_an_avi(clips, unet_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["segment", str(clips["avi"]), "--weights", str(unet_checkpoint), "--out",
                                      str(out), "--alpha", "0.5", "-b", "8", "-f", "jsonl"])
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert [r["frame"] for r in records] == list(range(20))
    assert records[-1]["time_s"] == pytest.approx(1.9, abs=1e-3)
    assert all(r["result"] == {"size": [48, 64], "classes": [
        {"index": 1, "label": "shape", "pixels": 3072, "fraction": 1.0}]} for r in records)
    written, fps = read_frames(out / "shapes.segment.mp4")
    source, _ = read_frames(clips["avi"])
    assert len(written) == 20 and fps == pytest.approx(FPS) and written[0].shape == source[0].shape
    expected = source[7] * 0.5 + class_palette()[1] * 0.5  # class 1's colour blended over every pixel
    assert np.abs(written[7] - expected).mean() < 6  # up to video compression
    assert np.abs(written[7] - source[7].astype(float)).mean() > 30


def test_classify_captions_frames_and_a_missing_camera_is_one_error(clips, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["classify", str(clips["mp4"]), "cam:7", "--model", "lenet5_digits", "--top-k",
                                      "2", "--out", str(out), "-f", "jsonl"])
    assert result.exit_code == 1, result.output
    records = jsonl(result.stdout)
    assert records[-1] == {"path": "cam:7", "error": "cannot open camera 7 (no such device, no permission, or in use)"}
    frames = records[:-1]
    assert [r["frame"] for r in frames] == list(range(20)) and all(len(r["result"]["top_k"]) == 2 for r in frames)
    assert {"path", "task", "model", "weights_sha256", "ms", "result", "frame", "time_s", "outputs"} == set(frames[0])
    written, fps = read_frames(out / "shapes.classify.mp4")
    assert len(written) == 20 and fps == pytest.approx(FPS) and written[0].shape == (48, 64, 3)
    assert written[0][1, 1].max() < 40 < 100 < written[0][-1, -1].min()  # the caption's dark band; grey elsewhere
    assert "cvtool: cam:7: cannot open camera 7" in result.stderr

    bare = CliRunner().invoke(app, ["classify", "7", "--model", "lenet5_digits", "-f", "jsonl"])
    assert bare.exit_code == 1 and jsonl(bare.stdout) == [{"path": "7", "error": "no such file or directory"}]


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    """640x480 videos of 60 and 600 frames: were frames collected, the long one would hold 550 MB more."""
    root = tmp_path_factory.mktemp("long")
    return {n: make_video(root / f"long{n}.mp4", frames=n, size=(640, 480), fps=25.0) for n in (60, 600)}


_PEAK_RSS = textwrap.dedent("""
    import resource, sys
    from cvtool.cli import app
    try:
        app(sys.argv[1:])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)
""")


def _peak_rss_mb(video, out) -> int:
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, "-q", "classify", str(video), "--model", "lenet5_digits",
                           "--out", str(out), "-f", "jsonl"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CVTOOL_NO_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == int(video.stem[4:])
    return int(done.stderr.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_videos_length(long_clips, tmp_path):
    short, long = _peak_rss_mb(long_clips[60], tmp_path / "a"), _peak_rss_mb(long_clips[600], tmp_path / "b")
    frame_mb = 640 * 480 * 3 / 2**20
    assert long - short < 60 * frame_mb, (short, long)  # 540 more frames kept would be ~500 MB more
    assert len(read_frames(tmp_path / "b" / "long600.classify.mp4")[0]) == 600


def test_only_a_few_batches_of_frames_are_alive(long_clips):
    """Frames prepared but not yet rendered stay within about two batches, whatever the length."""
    from cvtool.models.loading import load_model
    from cvtool.pipelines.classify import ClassifyPipeline
    from cvtool.pipelines.video import run_video

    class Counting(ClassifyPipeline):
        alive = peak = 0

        def prepare_array(self, rgb):
            Counting.alive += 1
            Counting.peak = max(Counting.peak, Counting.alive)
            return super().prepare_array(rgb)

        def render(self, rgb, sample, result):
            Counting.alive -= 1
            return super().render(rgb, sample, result)

    import tempfile

    with tempfile.TemporaryDirectory() as out:
        pipeline = Counting(load_model("lenet5_digits", task="classify"), out_dir=out)
        records = list(run_video(pipeline, str(long_clips[600]), batch_size=8, stride=2, out_dir=out))
        assert len(records) == 300 and Counting.alive == 0
        assert Counting.peak <= 2 * 8 + 1, Counting.peak


def test_ctrl_c_leaves_no_partial_video(long_clips, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "cvtool", "classify", str(long_clips[600]), "--model",
                                "lenet5_digits", "--batch-size", "1", "--out", str(out), "-f", "jsonl"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a shell's background job ignores SIGINT, and the child would inherit that
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = json.loads(process.stdout.readline())  # frames are being written into the video now
    assert first["frame"] == 0
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=60)
    assert process.returncode == 130, errors
    assert len(rest.splitlines()) < 599  # it stopped part-way
    assert "cvtool: interrupted" in errors
    assert list(out.iterdir()) == []  # neither the video nor its temp file
