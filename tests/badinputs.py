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
        "bomb.png": (_bomb_png(50_000, 50_000), "50000x50000 = 2,500,000,000 pixels, over the limit of"),
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


# -- awkward sizes, special files, tampering (bench/bad_inputs.py's wider sweep) --------------------------

# width x height: one pixel, very thin, very wide, tiny odd sizes (no model may crash on them)
AWKWARD_SIZES = [(1, 1), (2, 2), (3, 7), (7, 3), (1, 500), (500, 1), (2000, 1), (1, 2000), (5, 600)]


def make_awkward_sizes(directory: Path) -> dict[str, str]:
    """One PNG per AWKWARD_SIZES entry (`size_WxH.png`); return {name: ""}: each must give a result or one
    error line for that image, never a crash of the batch."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = {}
    for width, height in AWKWARD_SIZES:
        name = f"size_{width}x{height}.png"
        (directory / name).write_bytes(_png_bytes((rng.random((height, width, 3)) * 255).astype(np.uint8)))
        names[name] = ""
    return names


def make_fifo(path: Path) -> Path:
    """A named pipe with an image's name: opening it for reading blocks until someone writes."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def flip_bytes_in_place(path: Path, at: float = 0.6, count: int = 64) -> None:
    """Change bytes without changing the size or the mtime (what bit rot or a careful attacker does)."""
    import os

    path = Path(path)
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(int(stat.st_size * at))
        chunk = handle.read(count)
        handle.seek(int(stat.st_size * at))
        handle.write(bytes(b ^ 0x5A for b in chunk))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


class _RunsCode:
    """Unpickling this runs `touch MARKER`: what a malicious "weights" file does."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def write_pickled_code(path: Path, marker: Path) -> Path:
    """A .pt file (torch.save's zip layout) whose unpickling would create `marker`."""
    import torch

    path = Path(path)
    torch.save({"state_dict": _RunsCode(str(marker))}, path)
    return path
