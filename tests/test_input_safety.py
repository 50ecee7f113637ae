"""Input/output safety through the real CLI: --out equal to the input folder never overwrites an input nor
takes earlier outputs as inputs; a FIFO (or device) among the inputs is one error line, never a hang; an
--out that cannot be written is one usage line before any work; a failed write is that input's error line."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SAMPLES, jsonl, run_cli
from typer.testing import CliRunner

from cvtool.cli import app

DIGIT = SAMPLES / "digits" / "digit_4.png"
CLASSIFY = ["classify", "-m", "lenet5_digits"]


class _Result:
    def __init__(self, result):
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def cli(*args: str) -> _Result:
    """The CLI in this process (no torch import per call); the FIFO tests use a real subprocess with a timeout."""
    return _Result(CliRunner().invoke(app, list(args)))


def checksums(folder: Path) -> dict[str, str]:
    """Every file's sha256, cvtool's own manifest of outputs (.cvtool-outputs) aside."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != ".cvtool-outputs"}


def image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return path


def error_lines(stderr: str) -> list[str]:
    """The per-input error lines (model, summary and note lines left out)."""
    return [line for line in stderr.splitlines()
            if line.startswith("cvtool: ") and " ok, " not in line and "(sha256 " not in line and "previous" not in line]


def test_a_folder_of_broken_files_gives_one_cvtool_line_each_and_no_opencv_noise(tmp_path):
    """In a real process (OpenCV and FFmpeg write to file descriptor 2 themselves, past Python): every broken
    image or video is one `cvtool: FILE: reason` line on stderr, and nothing else is written there but the
    model and summary lines (OpenCV printed "[ERROR:0@0.1] global loadsave.cpp ... imdecode_ ..." before)."""
    from badinputs import make_bad_corpus

    expected = {name: reason for name, reason in make_bad_corpus(tmp_path / "in").items() if reason}
    extra = {"short.ppm": (b"P6\n2 2\n255\n", "could not decode image"),
             "trunc.mp4": (b"\x00\x00\x00\x18ftypmp42", "not a video OpenCV can read"),
             "noise.mp4": (np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
                           "not a video OpenCV can read")}
    for name, (data, reason) in extra.items():
        (tmp_path / "in" / name).write_bytes(data)
        expected[name] = reason
    result = subprocess.run([sys.executable, "-m", "cvtool", "classify", str(tmp_path / "in"), "--recursive",
                             *CLASSIFY[1:], "-k", "1", "-f", "jsonl"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    noise = [line for line in result.stderr.splitlines() if not line.startswith("cvtool: ")]
    assert noise == []
    errors = {Path(r["path"]).relative_to(tmp_path / "in").as_posix(): r["error"]
              for r in jsonl(result.stdout) if "error" in r}
    assert set(errors) == set(expected) and all(want in errors[name] for name, want in expected.items()), errors
    lines = error_lines(result.stderr)
    assert len(lines) == len(expected) and all(line.count(": ") >= 2 for line in lines)


# -- --out is the input folder

@pytest.mark.parametrize("task", ["classify", "detect", "segment"])
def test_out_in_the_input_folder_leaves_inputs_alone_and_a_rerun_takes_no_outputs_as_inputs(
        task, tmp_path, yolo_checkpoint, unet_checkpoint):
    folder = tmp_path / "photos"
    folder.mkdir()
    image(folder / "foo.png", 1)
    image(folder / "bar.jpg", 2)
    command = {"classify": CLASSIFY,
               "detect": ["detect", "--weights", str(yolo_checkpoint), "--conf", "0", "--save-crops"],
               "segment": ["segment", "--weights", str(unet_checkpoint), "--save-mask"]}[task]
    inputs = checksums(folder)

    first = cli(*command, str(folder), "--out", str(folder), "-f", "jsonl")
    assert first.returncode == 0, first.stderr
    assert sorted(r["path"] for r in jsonl(first.stdout)) == [str(folder / "bar.jpg"), str(folder / "foo.png")]
    written = sorted(set(checksums(folder)) - set(inputs))
    assert written, "the first run wrote its outputs beside the inputs"
    if task == "detect":
        assert "foo.detect.jpg" in written and any(".crop000-" in name for name in written)
    if task == "segment":
        assert {"foo.mask.png", "foo.overlay.png", "foo.mask-shape.png", "bar.overlay.jpg"} <= set(written)

    second = cli(*command, str(folder), "--out", str(folder), "-f", "jsonl")
    assert second.returncode == 0, second.stderr
    assert sorted(r["path"] for r in jsonl(second.stdout)) == [str(folder / "bar.jpg"), str(folder / "foo.png")]
    assert sorted(set(checksums(folder)) - set(inputs)) == written  # no foo.detect.detect.jpg, no foo.mask.mask.png
    images_written = [n for n in written if not n.endswith(".json")]
    if images_written:
        assert f"cvtool: {len(images_written)} previous cvtool output(s) in --out not taken as inputs" in second.stderr
    assert {name: digest for name, digest in checksums(folder).items() if name in inputs} == inputs


@pytest.mark.parametrize("task, other", [
    ("classify", "foo.json"),  # an image named like classify's output for foo.png
    ("detect", "foo.detect.jpg"),
    ("segment", "foo.mask.png"),
    ("segment", "foo.overlay.png"),
])
def test_an_input_named_like_another_inputs_output_is_never_overwritten(task, other, tmp_path, yolo_checkpoint,
                                                                        unet_checkpoint):
    """Named on the command line, `foo.detect.jpg` is an input: foo.png's output may not replace it."""
    image(tmp_path / "foo.png", 1)
    image(tmp_path / "keep.png", 3)
    (tmp_path / other).write_bytes((tmp_path / "keep.png").read_bytes())
    (tmp_path / "keep.png").unlink()
    command = {"classify": CLASSIFY, "detect": ["detect", "--weights", str(yolo_checkpoint)],
               "segment": ["segment", "--weights", str(unet_checkpoint)]}[task]
    before = checksums(tmp_path)

    result = cli(*command, str(tmp_path / "foo.png"), str(tmp_path / other), "--out", str(tmp_path), "-f", "jsonl")
    assert result.returncode == 1
    records = {r["path"]: r for r in jsonl(result.stdout)}
    target = tmp_path / other
    assert records[str(tmp_path / "foo.png")]["error"] == (
        f"output {target} would overwrite an input of this batch; choose another --out")
    assert error_lines(result.stderr)[0] == (
        f"cvtool: {tmp_path / 'foo.png'}: output {target} would overwrite an input of this batch; choose another --out")
    assert {n: d for n, d in checksums(tmp_path).items() if n in before} == before


@pytest.mark.parametrize("task, lookalike", [("detect", "foo.detect.jpg"), ("segment", "foo.mask.png")])
def test_a_users_file_that_looks_like_an_output_is_an_input_never_overwritten(task, lookalike, tmp_path,
                                                                             yolo_checkpoint, unet_checkpoint):
    """The issue's case: `foo.jpg` and the user's own `foo.detect.jpg` in a folder, `--out` that folder. cvtool did
    not write foo.detect.jpg (it is not in the folder's .cvtool-outputs manifest), so it is an input like any
    other, and foo.jpg's output may not replace it: one error line, exit 1, the file untouched."""
    image(tmp_path / "foo.png", 1)
    image(tmp_path / lookalike, 3)
    before = checksums(tmp_path)
    command = {"detect": ["detect", "--weights", str(yolo_checkpoint)],
               "segment": ["segment", "--weights", str(unet_checkpoint)]}[task]
    for _ in range(2):  # the rerun meets the same refusal, and takes its own outputs of the first run as no inputs
        result = cli(*command, str(tmp_path), "--out", str(tmp_path), "-f", "jsonl")
        assert result.returncode == 1, result.stderr
        records = {r["path"]: r for r in jsonl(result.stdout)}
        assert sorted(records) == [str(tmp_path / lookalike), str(tmp_path / "foo.png")]
        assert records[str(tmp_path / "foo.png")]["error"] == (
            f"output {tmp_path / lookalike} would overwrite an input of this batch; choose another --out")
        assert "error" not in records[str(tmp_path / lookalike)]
        assert {n: d for n, d in checksums(tmp_path).items() if n in before} == before


def test_an_output_is_never_written_over_a_file_cvtool_did_not_write(tmp_path):
    """`--out` elsewhere holding a user's `digit_3.json`: not ours, so it is kept and that input fails in one line."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "digit_3.json").write_text("my notes\n")
    result = cli(*CLASSIFY, str(SAMPLES / "digits" / "digit_3.png"), str(SAMPLES / "digits" / "digit_4.png"),
                 "--out", str(out), "-f", "jsonl")
    assert result.returncode == 1
    assert (out / "digit_3.json").read_text() == "my notes\n"
    assert error_lines(result.stderr) == [f"cvtool: {SAMPLES / 'digits' / 'digit_3.png'}: output {out / 'digit_3.json'} "
                                          "exists and was not written by cvtool; move it away or choose another --out"]
    rerun = cli(*CLASSIFY, str(SAMPLES / "digits" / "digit_4.png"), "--out", str(out), "-f", "jsonl")
    assert rerun.returncode == 0, rerun.stderr  # its own earlier output is replaced without a word


# -- FIFOs and devices

@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="no FIFOs or /dev/zero")
def test_fifos_and_devices_among_the_inputs_are_one_error_line_each_not_a_hang(tmp_path):
    """A FIFO named on the command line, one in a directory, one named like a video (FFmpeg would block on it),
    one read from stdin, and a device that never ends: each one line, the good image still classified."""
    folder = tmp_path / "in"
    folder.mkdir()
    good = folder / "digit.png"
    good.write_bytes(DIGIT.read_bytes())
    fifos = [tmp_path / "named.png", folder / "pipe.png", folder / "clip.mp4", tmp_path / "listed.png"]
    for fifo in fifos:
        os.mkfifo(fifo)
    # a real subprocess with a short timeout: a FIFO that gets opened blocks for ever, and must fail the test
    result = subprocess.run([sys.executable, "-m", "cvtool", *CLASSIFY, str(fifos[0]), str(folder), "/dev/zero", "-",
                             "-f", "jsonl"], capture_output=True, text=True, timeout=120, input=f"{fifos[3]}\n")
    assert result.returncode == 1, result.stderr
    assert error_lines(result.stderr) == [
        f"cvtool: {fifos[0]}: not a regular file (a FIFO)",
        f"cvtool: {fifos[2]}: not a regular file (a FIFO)",
        f"cvtool: {fifos[1]}: not a regular file (a FIFO)",
        "cvtool: /dev/zero: not a regular file (a character device)",
        f"cvtool: {fifos[3]}: not a regular file (a FIFO)",
    ]
    assert [r["path"] for r in jsonl(result.stdout) if "error" not in r] == [str(good)]


# -- --out that cannot be written

def _unwritable_dirs(tmp_path: Path) -> list[Path]:
    """Directories this process really cannot create a file in. As root, permission bits are ignored, so a
    chmod-ed folder is writable after all; sysfs (/sys) refuses new files even to root."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    found = []
    for folder in (locked, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=folder)
        except OSError:
            found.append(folder)
            continue
        os.close(fd)
        os.unlink(probe)
    return found


def test_an_unwritable_out_is_one_usage_line_before_any_work(tmp_path):
    folders = _unwritable_dirs(tmp_path)
    if not folders:
        pytest.skip("no directory here refuses this user a new file (root without /sys)")
    for folder in folders:
        result = run_cli(*CLASSIFY, str(DIGIT), "--out", str(folder))
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"cvtool: --out {folder}: not writable (permission denied)"]
        assert result.stdout == ""
    (tmp_path / "locked").chmod(0o755)


def test_an_out_that_cannot_be_created_is_one_usage_line(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    result = run_cli(*CLASSIFY, str(DIGIT), "--out", str(blocker / "sub"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"cvtool: --out {blocker / 'sub'}: cannot create it (a part of the path is a file)"]


def test_a_missing_out_is_created_up_front(tmp_path):
    out = tmp_path / "new" / "deeper"
    result = cli(*CLASSIFY, str(tmp_path / "nothing.png"), "--out", str(out))
    assert result.returncode == 1 and out.is_dir()  # created before the (failing) batch ran


def test_a_write_that_fails_mid_batch_is_that_inputs_error_line(tmp_path):
    """Any user can make a write fail, root included: a file-size limit (RLIMIT_FSIZE) below the size of a record.
    Every write fails; each input gets its own one error line and the batch goes on to the end."""
    import resource
    import signal
    import subprocess
    import sys

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(DIGIT.read_bytes())
    out = tmp_path / "out"
    out.mkdir()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    done = subprocess.run([sys.executable, "-m", "cvtool", *CLASSIFY, str(folder), "--out", str(out), "-f", "jsonl"],
                          capture_output=True, text=True, timeout=300, preexec_fn=small_files,
                          env={**os.environ, "CVTOOL_NO_PROGRESS": "1"})
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr) == [f"cvtool: {folder / n}.png: cannot write {out / n}.json (file too large)"
                                        for n in "ab"]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == []  # no partial output, no temp file left behind


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_as_the_pairs_csv_is_a_usage_error_at_once(tmp_path):
    import threading

    from cvtool.errors import UsageError
    from cvtool.pipelines.face import read_pairs

    fifo = tmp_path / "pairs.csv"
    os.mkfifo(fifo)
    errors = []

    def read():
        try:
            read_pairs(fifo)
        except UsageError as exc:
            errors.append(str(exc))

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # blocked in open(): give it a writer so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading the pairs FIFO blocked")
    assert errors == [f"{fifo}: cannot read pairs file (not a regular file (a FIFO))"]
