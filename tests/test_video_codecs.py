"""Annotated videos in H.264 (PyAV), read back by two other readers (OpenCV's FFmpeg and PyAV) at the same
fps and frame count; mp4v (OpenCV) when PyAV is missing; the write stays atomic."""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np
import pytest
from conftest import invoke_cli, jsonl

from cvtool.io import video
from cvtool.io.video import AtomicVideoWriter

av = pytest.importorskip("av")  # PyAV: the `video` extra, and the `dev` extra the tests are run with


def _frames(n=12, size=(64, 48)):
    w, h = size
    for i in range(n):
        frame = np.full((h, w, 3), 90, np.uint8)
        frame[8:24, 4 + 3 * i:20 + 3 * i] = (230, 40, 40)
        yield frame


def _write(path, fps, size=(64, 48), n=12, codec=None):
    writer = AtomicVideoWriter(path, fps, size, codec=codec)
    for frame in _frames(n, size):
        writer.write(frame)
    writer.close()
    return writer


def _read_cv2(path):
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return fps, frames


@pytest.mark.parametrize("fps", [10.0, 30000 / 1001])
def test_h264_is_read_back_by_opencv_and_pyav_at_the_same_fps(tmp_path, fps):
    target = tmp_path / "out.mp4"
    writer = _write(target, fps)
    assert writer.codec == "h264"
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"  # what browsers play
        assert float(stream.average_rate) == pytest.approx(fps, rel=1e-6)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(container.streams.audio) == 0
    cv_fps, cv_frames = _read_cv2(target)
    assert cv_fps == pytest.approx(fps, rel=1e-4)
    assert len(decoded) == len(cv_frames) == 12
    for i, (ours, theirs, original) in enumerate(zip(decoded, cv_frames, _frames())):
        assert ours.shape == theirs.shape == original.shape
        assert np.abs(ours.astype(int) - original).mean() < 4, i  # lossy, but the same picture
        assert np.abs(theirs.astype(int) - original).mean() < 4, i
    assert [p for p in os.listdir(tmp_path) if p.endswith(".mp4")] == ["out.mp4"]  # no temp file left beside it


def test_h264_moov_atom_comes_first_so_browsers_start_playing_at_once(tmp_path):
    target = tmp_path / "out.mp4"
    _write(target, 10.0)
    data = target.read_bytes()
    assert data[4:8] == b"ftyp"
    assert 0 <= data.find(b"moov") < data.find(b"mdat")


def test_odd_sizes_are_padded_to_even_for_h264(tmp_path):
    target = tmp_path / "odd.mp4"
    writer = _write(target, 10.0, size=(65, 47))
    assert writer.size == (66, 48)
    _, frames = _read_cv2(target)
    assert frames[0].shape == (48, 66, 3)


def test_without_pyav_the_mp4v_writer_is_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now fails, as where PyAV is not installed
    assert not video.h264_available()
    target = tmp_path / "out.mp4"
    writer = _write(target, 10.0)
    assert writer.codec == "mp4v"
    capture = cv2.VideoCapture(str(target))
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    assert fourcc in ("mp4v", "FMP4")  # MPEG-4 Part 2 (OpenCV's FFmpeg names it FMP4 when reading)
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    capture.release()


def test_an_abandoned_h264_video_leaves_nothing(tmp_path):
    writer = AtomicVideoWriter(tmp_path / "out.mp4", 10.0, (64, 48))
    for frame in _frames(3):
        writer.write(frame)
    writer.close(ok=False)
    assert [p for p in os.listdir(tmp_path) if p.endswith(".mp4")] == []


def test_avi_stays_motion_jpeg(tmp_path):
    writer = _write(tmp_path / "out.avi", 10.0)
    assert writer.codec == "mjpg"
    assert len(_read_cv2(tmp_path / "out.avi")[1]) == 12


def test_classify_out_writes_an_h264_video_at_the_inputs_fps(tmp_path):
    clip = tmp_path / "clip.mp4"
    _write(clip, 12.5, codec="mp4v")
    out = tmp_path / "out"
    result = invoke_cli("classify", str(clip), "--model", "lenet5_digits", "--out", str(out), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert len(jsonl(result.stdout)) == 12
    with av.open(str(out / "clip.classify.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert float(stream.average_rate) == pytest.approx(12.5)
        assert sum(1 for _ in container.decode(stream)) == 12
