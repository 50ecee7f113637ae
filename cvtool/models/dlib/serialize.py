"""dlib's `serialize` encodings: variable-length integers, (mantissa, exponent) reals, strings,
matrices and raw float32 tensors.

One cursor over the file's bytes; every reader advances it, and `expect_end` proves that a loader
consumed the whole file (the format is not self-describing, so full consumption is the best evidence
that a hard-coded architecture matched the file).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cvtool.errors import WeightsError

_INF, _NEG_INF, _NAN = 32000, 32001, 32002


class DlibReader:
    def __init__(self, data: bytes, source: str = "<bytes>"):
        self.data = memoryview(data)
        self.pos = 0
        self.source = source

    @classmethod
    def open(cls, path: str | Path) -> "DlibReader":
        path = Path(path)
        try:
            return cls(path.read_bytes(), str(path))
        except OSError as exc:
            raise WeightsError(f"{path}: cannot read dlib model file ({exc.strerror or exc})") from None

    def fail(self, reason: str) -> WeightsError:
        return WeightsError(f"{self.source}: not the expected dlib model file ({reason} at byte {self.pos})")

    def _take(self, n: int) -> memoryview:
        if n < 0:
            raise self.fail(f"negative length {n}")
        if self.pos + n > len(self.data):
            raise self.fail("file ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        header = self._take(1)[0]
        n = header & 0x0F
        if header & 0x70 or not 1 <= n <= 8:
            raise self.fail(f"bad integer header 0x{header:02x}")
        value = int.from_bytes(self._take(n), "little")
        return -value if header & 0x80 else value

    def expect_int(self, expected: int, what: str) -> int:
        value = self.int()
        if value != expected:
            raise self.fail(f"{what} is {value}, expected {expected}")
        return value

    def real(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        if exponent == _INF:
            return math.inf
        if exponent == _NEG_INF:
            return -math.inf
        if exponent == _NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def bool(self) -> bool:
        byte = self._take(1)[0]
        if byte not in (0x30, 0x31):
            raise self.fail(f"bad bool byte 0x{byte:02x}")
        return byte == 0x31

    def byte(self) -> int:
        return self._take(1)[0]

    def string(self) -> str:
        return bytes(self._take(self.int())).decode("latin-1")

    def expect_string(self, *expected: str) -> str:
        value = self.string()
        if value not in expected:
            shown = value if len(value) <= 40 else value[:40] + "..."  # a wrong file can hold megabytes here
            raise self.fail(f"record {shown!r}, expected {' or '.join(map(repr, expected))}")
        return value

    def matrix(self) -> np.ndarray:
        """A dlib::matrix of reals, row-major, as float64 (its values fit float32 exactly)."""
        rows, cols = abs(self.int()), abs(self.int())
        return np.array([self.real() for _ in range(rows * cols)], dtype=np.float64).reshape(rows, cols)

    def tensor(self) -> np.ndarray:
        """A resizable_tensor: version 2, NCHW sizes, then raw little-endian float32."""
        self.expect_int(2, "tensor version")
        shape = tuple(self.int() for _ in range(4))
        count = math.prod(shape)
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.expect_int(1, "alias_tensor version")
        return tuple(self.int() for _ in range(4))

    def expect_end(self) -> None:
        left = len(self.data) - self.pos
        if left:
            raise self.fail(f"{left} bytes left over after the last record")
