"""Splitting a batch between N processes or machines with no coordination: `--shard K/N`.

Input i belongs to shard `sha1(path) mod N`, where `path` is the input's path string as the batch lists
it (as typed, or as a directory or glob expanded it), normalised with `os.path.normpath` (so `./a.jpg` and
`a.jpg` agree) and hashed as UTF-8. A stable hash, never Python's `hash()` (salted per process): N
processes given the same input list each take a disjoint part, and together all of it, on any machine
where the paths read the same. The realpath is deliberately not used, so machines that mount the data
at different places still agree, as long as each runs the command from the same relative place (or
with the same absolute paths). Error items (a missing file, a glob matching nothing) are sharded alike,
so exactly one shard reports each.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Iterable, Iterator, TypeVar

from cvtool.errors import UsageError

T = TypeVar("T")
_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """`"0/4"` -> (0, 4); anything else is a one-line UsageError."""
    match = _SPEC.fullmatch(text or "")
    if not match:
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. 0/4 (shard K of N, K from 0 to N-1)")
    k, n = int(match.group(1)), int(match.group(2))
    check_shard((k, n), option=f"--shard {text}")
    return k, n


def check_shard(shard: tuple[int, int], *, option: str = "shard") -> tuple[int, int]:
    try:
        k, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise UsageError(f"{option}: expected (K, N), e.g. (0, 4)") from None
    if n < 1:
        raise UsageError(f"{option}: N must be at least 1")
    if not 0 <= k < n:
        raise UsageError(f"{option}: K must be from 0 to {n - 1}")
    return k, n


def shard_of(path: str, n: int) -> int:
    """The shard (0..n-1) an input path belongs to."""
    key = os.path.normpath(os.fspath(path)).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "big") % n


def select(items: Iterable[T], shard: tuple[int, int] | None) -> Iterator[T]:
    """The items (paths or `InputItem`s) of shard K of N, lazily and in order; all of them for `None`."""
    if shard is None:
        yield from items
        return
    k, n = check_shard(shard)
    for item in items:
        if shard_of(getattr(item, "path", item), n) == k:
            yield item
