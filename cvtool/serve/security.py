"""What the server refuses: requests without the token, server-side paths outside --allow-paths, bodies
over --max-bytes. Kept free of FastAPI so the rules can be read (and tested) on their own."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from cvtool.errors import CvtoolError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Forbidden(CvtoolError):
    """A server-side path the server may not read (HTTP 403)."""


class TooLarge(CvtoolError):
    """A request body over --max-bytes (HTTP 413)."""


def check_binding(host: str, token: str | None) -> None:
    """Anything but loopback needs a token: refuse to start without one."""
    from cvtool.errors import UsageError

    if host not in LOOPBACK_HOSTS and not token:
        raise UsageError(f"--host {host} is reachable from other machines: give --token TOKEN (or set CVTOOL_TOKEN); "
                         "clients then send 'Authorization: Bearer TOKEN'")


def token_ok(header: str | None, token: str | None) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time; always true when no token is set."""
    if not token:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode())


def confine(path: str, root: Path | None, *, what: str = "path") -> Path:
    """A client-given server path -> the real file it names, inside `root` (--allow-paths), or Forbidden.

    Relative paths are taken from `root`. Refused: any server path when no root is configured, a `..`
    component, and anything whose real location (symlinks followed) lies outside the real `root`. A NUL byte
    names no file at all: a bad request (UsageError, 400), not a path refused (403)."""
    from cvtool.errors import UsageError

    if root is None:
        raise Forbidden(f"server-side {what}s are refused: start the server with --allow-paths DIR", path)
    if not path:
        raise Forbidden(f"an empty {what}", path)
    if "\0" in path:  # the OS cannot take it (os.path.realpath: "ValueError: embedded null byte")
        raise UsageError(f"a NUL byte is not allowed in a server {what}", path)
    given = Path(path)
    if ".." in given.parts:
        raise Forbidden(f"'..' is not allowed in a server {what}", path)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(given if given.is_absolute() else real_root / given))
    if real != real_root and real_root not in real.parents:  # real locations only: a link out of root is out
        raise Forbidden(f"outside --allow-paths {root}", path)
    return real


def parse_size(text: str) -> int:
    """`20MB`, `512k`, `1G`, `1000` -> bytes (powers of 1024 for the letters)."""
    from cvtool.errors import UsageError

    units = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}
    s = text.strip().upper()
    number = s.rstrip("KMGB")
    try:
        value = float(number) * units[s[len(number):]]
    except (KeyError, ValueError):
        raise UsageError(f"{text!r}: expected a size such as 20MB, 512KB or 1000000") from None
    if value < 1:
        raise UsageError(f"{text!r}: a size must be at least 1 byte")
    return int(value)
