"""A minimal ICC v2 RGB matrix/TRC profile, built byte by byte, to test colour conversion without
depending on profiles installed on the machine."""

from __future__ import annotations

import struct


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)


def _curve(gamma: float) -> bytes:
    return b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def _desc(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return b"desc" + b"\0" * 4 + struct.pack(">I", len(ascii_text)) + ascii_text + b"\0" * (4 + 4 + 2 + 1 + 67)


def rgb_profile(name: str, red, green, blue, gamma: float = 2.2, white=(0.9642, 1.0, 0.8249)) -> bytes:
    """Colorants are D50-adapted XYZ, as ICC wants them."""
    tags = [
        (b"desc", _desc(name)),
        (b"wtpt", _xyz(*white)),
        (b"rXYZ", _xyz(*red)),
        (b"gXYZ", _xyz(*green)),
        (b"bXYZ", _xyz(*blue)),
        (b"rTRC", _curve(gamma)),
        (b"gTRC", _curve(gamma)),
        (b"bTRC", _curve(gamma)),
        (b"cprt", b"text" + b"\0" * 4 + b"public domain\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size) + b"none" + struct.pack(">I", 0x02100000) + b"mntr" + b"RGB " + b"XYZ "
        + b"\0" * 12 + b"acsp" + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 8
        + struct.pack(">I", 0) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 4 + b"\0" * 16 + b"\0" * 28
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


# Display P3 primaries, Bradford-adapted to D50: a common wide-gamut phone-camera profile.
DISPLAY_P3_LIKE = rgb_profile(
    "Wide gamut test profile (Display P3 primaries)",
    red=(0.5151, 0.2412, -0.0011),
    green=(0.2920, 0.6922, 0.0419),
    blue=(0.1571, 0.0666, 0.7841),
)
