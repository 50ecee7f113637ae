"""cvtool's own cache folder: converted face models, ONNX exports, gallery descriptors; and the one way
anything in a cache is trusted: by its hash.

Downloaded weights go to torch.hub's folder instead (see cvtool/models/weights.py), shared with torchvision.

- `write_verified(path, data, source)` writes a cache entry atomically with a sidecar
  (`<name>.sha256.json`) holding the SHA-256 and size of the content and, when the entry was derived
  from a source file, that file's SHA-256.
- `load_verified(path, source)` returns the entry's bytes only when they hash to what the sidecar
  says and the source still hashes to what it was built from; otherwise None, and the caller
  rebuilds. The bytes returned are the bytes checked: load from them, not from the path again.
- `file_sha256(path)` hashes a file once per version of it: the digest is remembered in
  `hashes.json` here, keyed by the absolute path with its size, mtime, ctime and inode, so an
  unchanged multi-megabyte file (downloaded weights, a dlib source file) is not re-read on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

SIDECAR_SUFFIX = ".sha256.json"
MEMO_NAME = "hashes.json"
_MEMO_MAX_ENTRIES = 512
_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def cache_root() -> Path:
    """$CVTOOL_CACHE, else the platform's user cache folder (platformdirs): ~/.cache/cvtool on Linux
    ($XDG_CACHE_HOME honoured), ~/Library/Caches/cvtool on macOS, %LOCALAPPDATA%\\cvtool\\Cache on Windows."""
    explicit = os.environ.get("CVTOOL_CACHE", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cvtool", appauthor=False))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks so large weights never sit in memory whole (always re-reads)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(stat: os.stat_result) -> list[int]:
    # ctime cannot be set back by a user (os.utime sets mtime/atime only), so a rewrite in place is seen
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _memo_path() -> Path:
    return cache_root() / MEMO_NAME


def _read_memo() -> dict:
    try:
        memo = json.loads(_memo_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_memo(memo: dict) -> None:
    from cvtool.io.atomic import atomic_write_text

    if len(memo) > _MEMO_MAX_ENTRIES:  # oldest first (insertion order): forget those
        memo = dict(list(memo.items())[-_MEMO_MAX_ENTRIES:])
    try:
        atomic_write_text(_memo_path(), json.dumps(memo, indent=0))
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def file_sha256(path: str | Path, *, rehash: bool = False) -> str:
    """Hex SHA-256 of `path`, read from the memo when this very version of the file was hashed before.

    `rehash=True` always reads the file (what `cvtool models verify` does) and refreshes the memo.
    OSError (missing, unreadable) propagates to the caller, which knows what the file is.
    """
    path = Path(path)
    key = str(path.resolve())
    stamp = _stamp(path.stat())
    memo = _read_memo()
    entry = memo.get(key)
    if (not rehash and isinstance(entry, dict) and entry.get("stat") == stamp
            and isinstance(entry.get("sha256"), str) and _HEX64.fullmatch(entry["sha256"])):
        return entry["sha256"]
    digest = sha256_file(path)
    if _stamp(path.stat()) == stamp:  # unchanged while it was read: safe to remember
        remember_sha256(path, digest)
    return digest


def remember_sha256(path: str | Path, digest: str) -> None:
    """Record the hash of a file just written by the caller, which hashed its bytes on the way in
    (a download); the next file_sha256 of this version of the file then costs nothing."""
    path = Path(path)
    try:
        stamp = _stamp(path.stat())
    except OSError:
        return
    memo = _read_memo()
    key = str(path.resolve())
    memo.pop(key, None)
    memo[key] = {"stat": stamp, "sha256": digest.lower()}
    _write_memo(memo)


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_verified(path: str | Path, data: bytes, source: str | Path | None = None) -> None:
    """Write a cache entry and its hash sidecar, each atomically (content first: a reader in between
    sees a mismatch and rebuilds). OSError propagates: the caller decides whether a cache is required."""
    from cvtool.io.atomic import atomic_write_bytes, atomic_write_text

    record = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    if source is not None:
        record["source"] = str(Path(source).resolve())
        record["source_sha256"] = file_sha256(source)
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar_path(path), json.dumps(record, indent=1))


def load_verified(path: str | Path, source: str | Path | None = None) -> bytes | None:
    """The entry's bytes when they match their sidecar (and `source` still hashes as it did when the
    entry was built); None when the entry is missing, has no sidecar, was altered, or is stale."""
    try:
        record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        data = Path(path).read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("size") != len(data):
        return None
    if record.get("sha256") != hashlib.sha256(data).hexdigest():
        return None
    if source is not None:
        try:
            if record.get("source_sha256") != file_sha256(source):
                return None
        except OSError:
            return None  # the source is gone: the caller's rebuild says so in one line
    return data
