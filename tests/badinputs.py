"""A corpus of bad (and awkward-but-valid) image files, for tests and bench/bad_inputs.py."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: decoding it would need gigabytes."""
    data = bytearray(_png_bytes(np.zeros((1, 1), np.uint8)))
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def make_bad_corpus(directory: Path) -> dict[str, str]:
    """Write the corpus; return {relative path: expected substring of the error ("" = must succeed)}."""
    directory = Path(directory)
    rng = np.random.default_rng(0)
    photo = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    jpeg = _jpeg_bytes(photo)
    png = _png_bytes(photo)
    files = {
        "empty.jpg": (b"", "empty file (0 bytes)"),
        "text.jpg": (b"hello, I am not a picture\n" * 10, "not an image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated JPEG"),
        "truncated.png": (png[: len(png) // 2], "truncated or corrupt PNG"),
        "random.png": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not an image"),
        "bomb.png": (_bomb_png(50_000, 50_000), "megapixels"),
        "café_日本.png": (png, ""),
        "real_png.jpg": (png, ""),
        "grey16.png": (_png_bytes((rng.random((20, 30)) * 65535).astype(np.uint16)), ""),
        "rgba.png": (_png_bytes(np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])), ""),
        "mixed/good.png": (png, ""),
        "mixed/broken.png": (rng.integers(0, 256, 512, dtype=np.uint8).tobytes(), "not an image"),
        "mixed/notes.txt": (b"not listed: a directory input only takes image suffixes", None),
    }
    expected = {}
    for name, (data, reason) in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if reason is not None:
            expected[name] = reason
    return expected
