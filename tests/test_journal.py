"""--records FILE: an append-only JSON Lines journal; a rerun does only what is left, a SIGKILL loses nothing
recorded, a torn last line is redone, errors are retried, a video is done only when it ended."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from conftest import SAMPLES, invoke_cli, jsonl

from cvtool.io.journal import Journal, done_paths, read_records

DIGITS = SAMPLES / "digits"
LENET = ["--model", "lenet5_digits", "-k", "1", "--device", "cpu", "-f", "jsonl"]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_rerun_does_only_what_is_left_and_retries_errors(tmp_path):
    journal = tmp_path / "done.jsonl"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    first = invoke_cli("classify", str(DIGITS), str(broken), *LENET, "--records", str(journal))
    assert first.returncode == 1
    assert len(jsonl(first.stdout)) == 11 and _lines(journal) == jsonl(first.stdout)  # the same records
    again = invoke_cli("classify", str(DIGITS), str(broken), *LENET, "--records", str(journal), "--out",
                       str(tmp_path / "elsewhere"))  # whatever --out is
    assert again.returncode == 1
    assert [r["path"] for r in jsonl(again.stdout)] == [str(broken)]  # only the error is retried
    assert f"cvtool: 10 skipped (done in {journal})\n" in again.stderr
    assert len(_lines(journal)) == 12
    broken.write_bytes((DIGITS / "digit_4.png").read_bytes())  # fixed: the third run does it
    third = invoke_cli("classify", str(DIGITS), str(broken), *LENET, "--records", str(journal))
    assert third.returncode == 0 and [r["path"] for r in jsonl(third.stdout)] == [str(broken)]
    final = read_records(journal)
    assert len(final) == 11 and all("result" in r for r in final)
    assert final[-1]["path"] == str(broken) and final[-1]["result"]["top_k"][0]["label"] == "4"
    fourth = invoke_cli("classify", str(DIGITS), str(broken), *LENET, "--records", str(journal))
    assert fourth.returncode == 0 and fourth.stdout == ""


def test_a_torn_last_line_is_ignored_and_redone(tmp_path):
    journal = tmp_path / "done.jsonl"
    whole = jsonl(invoke_cli("classify", str(DIGITS), *LENET).stdout)
    complete = "".join(json.dumps(r) + "\n" for r in whole[:4])
    journal.write_text(complete + json.dumps(whole[4])[:37])  # killed while writing the fifth
    assert done_paths(journal) == {r["path"] for r in whole[:4]}
    rerun = invoke_cli("classify", str(DIGITS), *LENET, "--records", str(journal))
    assert rerun.returncode == 0
    assert [r["path"] for r in jsonl(rerun.stdout)] == [r["path"] for r in whole[4:]]
    lines = journal.read_text().splitlines()
    assert journal.read_text().startswith(complete) and len(lines) == 10  # the torn bytes were cut
    assert Counter(json.loads(line)["path"] for line in lines) == Counter(r["path"] for r in whole)


def test_a_batch_killed_with_sigkill_and_rerun_records_every_input_exactly_once(tmp_path):
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(200):
        cv2.imwrite(str(images / f"img_{i:03d}.png"), rng.integers(0, 255, (28, 28), dtype=np.uint8))
    journal = tmp_path / "done.jsonl"
    command = [sys.executable, "-m", "cvtool", "classify", str(images), *LENET, "-b", "1", "--workers", "1",
               "--threads", "1", "--records", str(journal)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while not (journal.exists() and journal.read_bytes().count(b"\n") >= 10):
            assert proc.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline, "no journal lines within 240 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = journal.read_bytes().count(b"\n")
    assert proc.returncode == -signal.SIGKILL and 10 <= killed_at < 200, killed_at
    rerun = subprocess.run(command[:-2] + ["--records", str(journal)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert len(jsonl(rerun.stdout)) == 200 - killed_at
    assert f"{killed_at} skipped (done in {journal})" in rerun.stderr
    records = _lines(journal)  # every line whole
    counts = Counter(r["path"] for r in records)
    assert len(counts) == 200 and set(counts.values()) == {1}
    assert all("result" in r for r in records)


def test_a_video_is_done_only_when_it_ended(tmp_path):
    import cv2

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (32, 32))
    for i in range(6):
        writer.write(np.full((32, 32, 3), 40 * i, np.uint8))
    writer.release()
    journal = tmp_path / "done.jsonl"
    first = invoke_cli("classify", str(video), str(DIGITS / "digit_1.png"), *LENET, "--records", str(journal))
    assert first.returncode == 0, first.stderr
    lines = _lines(journal)
    assert [r.get("frame") for r in lines[:6]] == list(range(6))
    assert lines[6] == {"path": str(video), "video_done": True, "frames": 6}  # after its last frame
    assert lines[7]["path"].endswith("digit_1.png")
    assert invoke_cli("classify", str(video), *LENET, "--records", str(journal)).stdout == ""
    # cut short: frames without the marker; a rerun redoes the video, the reader keeps the finished attempt
    journal.write_text("".join(json.dumps(r) + "\n" for r in lines[:3]))
    rerun = invoke_cli("classify", str(video), *LENET, "--records", str(journal))
    assert [r["frame"] for r in jsonl(rerun.stdout)] == list(range(6))
    assert len(_lines(journal)) == 3 + 6 + 1
    assert [r["frame"] for r in read_records(journal)] == list(range(6))


def test_one_writer_at_a_time_and_bad_journals_are_one_line(tmp_path):
    journal = tmp_path / "done.jsonl"
    with Journal(journal):
        result = invoke_cli("classify", str(DIGITS), *LENET, "--records", str(journal))
        assert result.returncode == 2
        assert result.stderr.endswith(f"cvtool: {journal}: in use by another cvtool process (give each process, "
                                      "e.g. each --shard, its own file)\n")
    image = tmp_path / "photo.png"
    image.write_bytes((DIGITS / "digit_2.png").read_bytes())
    result = invoke_cli("classify", str(DIGITS), *LENET, "--records", str(image))
    assert result.returncode == 2 and result.stderr.endswith(
        f"cvtool: {image}: --records names an image or video file; give a journal file, e.g. records.jsonl\n")
    assert image.read_bytes() == (DIGITS / "digit_2.png").read_bytes()
    garbage = tmp_path / "notes.txt"
    garbage.write_text("hello\n")
    result = invoke_cli("classify", str(DIGITS), *LENET, "--records", str(garbage))
    assert result.returncode == 2 and result.stderr.endswith(
        f"cvtool: {garbage}: line 1 is not a JSON record (is this a cvtool --records journal?)\n")
    missing = tmp_path / "no" / "done.jsonl"
    result = invoke_cli("classify", str(DIGITS), *LENET, "--records", str(missing))
    assert result.returncode == 2 and result.stderr.endswith(
        f"cvtool: {missing}: cannot be created as a --records journal (no directory {missing.parent})\n")


def test_api_run_writes_and_honours_the_journal(tmp_path):
    import cvtool

    clf = cvtool.Classifier("lenet5_digits", device="cpu", top_k=1)
    journal = tmp_path / "api.jsonl"
    first = [r.to_dict() for r in clf.run(DIGITS, records=journal)]
    assert _lines(journal) == first
    skipped = []
    assert list(clf.run(DIGITS, records=journal, on_skip=skipped.append)) == []
    assert sorted(skipped) == sorted(r["path"] for r in first)
    with pytest.raises(cvtool.UsageError, match="names a directory"):
        clf.run(DIGITS, records=tmp_path)
