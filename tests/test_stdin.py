"""`-` reads stdin, which holds one image or a list of paths, told apart by the rule in cvtool/io/inputs.py:
an image's magic number first -> one image named "-"; else UTF-8 lines of paths; else one error line."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT, SAMPLES, jsonl

from cvtool.io import remote
from cvtool.io.files import set_stdin_image
from cvtool.io.inputs import InputItem, iter_inputs

DIGIT = SAMPLES / "digits" / "digit_3.png"
LENET = ("--model", "lenet5_digits", "--format", "jsonl", "--top-k", "3")
NEITHER = ("stdin is neither an image (JPEG, PNG, GIF, WebP, TIFF, BMP, JPEG 2000) nor UTF-8 text with one path "
           "per line")


@pytest.fixture(autouse=True)
def _no_stdin_image_left_over():
    yield
    set_stdin_image(None)


def _cvtool(*args: str, stdin: bytes, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command with bytes on its stdin, as `cat a.png | cvtool classify -` runs it."""
    return subprocess.run([sys.executable, "-m", "cvtool", *args], input=stdin, capture_output=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=300)


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("path", "ms")}


def test_image_bytes_piped_on_stdin_are_one_image_named_dash():
    piped = _cvtool("classify", "-", *LENET, stdin=DIGIT.read_bytes())
    listed = _cvtool("classify", "-", *LENET, stdin=f"{DIGIT}\n".encode())  # a path list still works
    assert piped.returncode == 0 and listed.returncode == 0, piped.stderr + listed.stderr
    [from_stdin], [from_path] = jsonl(piped.stdout.decode()), jsonl(listed.stdout.decode())
    assert from_stdin["path"] == "-" and from_path["path"] == str(DIGIT)
    assert _without_timing(from_stdin) == _without_timing(from_path)
    assert from_stdin["result"]["top_k"][0]["label"] == "3"


def test_binary_that_is_neither_is_one_error_line_never_binary_in_the_record():
    junk = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))
    result = _cvtool("classify", "-", *LENET, stdin=b"\x00\x01" + junk)
    assert result.returncode == 1
    assert jsonl(result.stdout.decode()) == [{"path": "-", "error": NEITHER}]
    assert [line for line in result.stderr.decode().splitlines() if line.startswith("cvtool: -:")] == [
        f"cvtool: -: {NEITHER}"]


def _stdin(data: bytes, chunk: int | None = None):
    """A text stdin over `data` whose binary buffer hands out at most `chunk` bytes per read (a slow pipe)."""

    class Pipe(io.RawIOBase):
        def __init__(self):
            self.data = data

        def readable(self):
            return True

        def readinto(self, target):
            n = min(len(target), chunk or len(self.data), len(self.data))
            target[:n], self.data = self.data[:n], self.data[n:]
            return n

    return io.TextIOWrapper(io.BufferedReader(Pipe(), buffer_size=chunk or io.DEFAULT_BUFFER_SIZE))


def _items(data: bytes, chunk: int | None = None) -> list[InputItem]:
    return list(iter_inputs(["-"], stdin=_stdin(data, chunk)))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tif", ".gif", ".jp2"])
def test_every_sniffed_format_is_one_image_even_through_a_pipe_giving_one_byte_at_a_time(suffix):
    from cvtool.io.image import read_image

    rgb = np.zeros((40, 36, 3), np.uint8)
    rgb[2:25, 1:14] = (250, 20, 30)
    if suffix == ".gif":
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="GIF")
        data = buffer.getvalue()
    else:
        data = cv2.imencode(suffix, rgb[..., ::-1])[1].tobytes()
    assert remote.image_kind(data[:16]) is not None, suffix
    assert _items(data, chunk=1) == [InputItem("-")]
    decoded = read_image("-")
    assert decoded.shape == (40, 36, 3)
    if suffix in (".png", ".bmp", ".tif", ".gif"):  # lossless
        assert np.array_equal(decoded, rgb)


def test_a_path_list_is_never_mistaken_for_an_image(tmp_path, monkeypatch):
    """Text that starts like the text-ish magic numbers (GIF, BMP, RIFF, TIFF letters) is still paths."""
    names = ["GIF89a.png", "BMW_photo.png", "RIFF0000WEBPVP8.png", "II_and_MM.png", "P6.png"]
    for name in names:
        (tmp_path / name).write_bytes(DIGIT.read_bytes())
    listing = "".join(f"{tmp_path / name}\n" for name in names)
    monkeypatch.chdir(tmp_path)
    assert [i.path for i in _items(listing.encode(), chunk=3)] == [str(tmp_path / name) for name in names]
    for first in range(len(names)):  # relative: each magic-like name in turn is stdin's first bytes
        order = names[first:] + names[:first]
        items = _items("".join(f"{name}\n" for name in order).encode(), chunk=3)
        assert items == [InputItem(name) for name in order]


def test_the_first_path_is_taken_before_stdin_ends():
    """`find ... | cvtool classify -`: the first line is an input at once, not after 16 bytes or EOF."""
    read_r, read_w = os.pipe()
    os.write(read_w, b"a.png\n")
    with open(read_r, "rb", buffering=0) as raw:
        stdin = io.TextIOWrapper(io.BufferedReader(raw))
        first = next(iter_inputs(["-"], stdin=stdin))
        assert first == InputItem("a.png", "no such file or directory")
        os.close(read_w)


def test_utf8_paths_and_comments_still_work(tmp_path):
    photo = tmp_path / "café.png"
    photo.write_bytes(DIGIT.read_bytes())
    items = _items(f"# a comment\n\n{photo}\n".encode())
    assert items == [InputItem(str(photo))]


def test_invalid_utf8_or_nul_after_some_paths_ends_with_one_error(tmp_path):
    photo = tmp_path / "a.png"
    photo.write_bytes(DIGIT.read_bytes())
    items = _items(f"{photo}\n".encode() + b"\xff\xfe bad\nmore.png\n")
    assert items == [InputItem(str(photo)), InputItem("-", NEITHER)]
    assert _items(b"a\x00b\n") == [InputItem("-", NEITHER)]


def test_a_stdin_image_over_the_byte_limit_is_one_error(monkeypatch):
    monkeypatch.setenv("CVTOOL_MAX_BYTES", "500")
    data = DIGIT.read_bytes()
    assert len(data) > 500
    assert _items(data) == [InputItem("-", "larger than the limit of 500 bytes; raise it with CVTOOL_MAX_BYTES")]


def test_a_text_stream_without_a_buffer_is_paths():
    """The Python API may hand a StringIO: lines of paths, no sniffing."""
    assert list(iter_inputs(["-"], stdin=io.StringIO("nothing.png\n"))) == [
        InputItem("nothing.png", "no such file or directory")]
