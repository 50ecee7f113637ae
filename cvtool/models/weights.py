"""Fetching pretrained weight files the torchvision way: cached, hash-checked, with progress, and a
guaranteed offline mode.

Files land in torch.hub's cache (`$TORCH_HOME/hub/checkpoints`) under their published names, so
cvtool and torchvision share one copy. A download goes to a temp file and is renamed into the cache
only after its hash matches, so a partial or corrupt file never looks cached.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from cvtool.errors import WeightsError

# torch.hub's convention: `name-<hex>.ext`, the hex being a prefix of the file's SHA-256.
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")
_TRUE = {"1", "true", "yes", "on"}
_CHUNK = 1 << 20


def cache_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def is_offline() -> bool:
    return os.environ.get("CVTOOL_OFFLINE", "").strip().lower() in _TRUE


def _basename(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def resolve_url(url: str) -> str:
    """With CVTOOL_WEIGHTS_MIRROR set, the same file name from that mirror (air-gapped sites)."""
    mirror = os.environ.get("CVTOOL_WEIGHTS_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{_basename(url)}" if mirror else url


def cached_path(url: str) -> Path:
    return cache_dir() / _basename(url)


def expected_hash_prefix(url_or_filename: str) -> str | None:
    match = HASH_REGEX.search(_basename(url_or_filename) or url_or_filename)
    return match.group(1) if match and match.group(1) else None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_matches(actual: str, url: str, sha256: str | None) -> tuple[bool, str | None]:
    expected = sha256 or expected_hash_prefix(url)
    return (True, None) if not expected else (actual.startswith(expected.lower()), expected)


def verify(path: str | Path, url: str | None = None, sha256: str | None = None) -> bool | None:
    """Re-hash a cached file; None when there is nothing published to compare against."""
    expected = sha256 or (expected_hash_prefix(url) if url else None)
    if not expected:
        return None
    return sha256_file(path).startswith(expected.lower())


def fetch(url: str, *, sha256: str | None = None, offline: bool | None = None, progress: bool = True) -> Path:
    """The cached file for `url`, downloading it first if it is not there."""
    target = cached_path(url)
    if target.is_file() and target.stat().st_size > 0:
        return target
    name = target.name
    if offline if offline is not None else is_offline():
        raise WeightsError(
            f"weights file {name} is not in the cache and cvtool is offline; download {url} and put it in "
            f"{target.parent}/, or pass --weights FILE"
        )
    source = resolve_url(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            actual = _download(source, handle, name, progress)
        ok, expected = _hash_matches(actual, url, sha256)
        if not ok:
            raise WeightsError(
                f"downloaded {name} is corrupt: sha256 {actual[:12]}… does not match expected {expected[:12]}…; "
                "try again or pass --weights FILE"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _download(source: str, handle, name: str, progress: bool) -> str:
    """Stream `source` into `handle`, hashing as it goes; one-line WeightsError on any network failure."""
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(source, headers={"User-Agent": "cvtool"})
        with urllib.request.urlopen(request, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress_bar(name, total, progress) as advance:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    handle.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
        reason = _network_reason(exc)
        raise WeightsError(
            f"cannot download {name} from {source} ({reason}); put the file in {cache_dir()}/ or pass --weights FILE "
            "(set CVTOOL_OFFLINE=1 to never try the network)"
        ) from None
    return digest.hexdigest()


def _network_reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", exc)
    text = getattr(reason, "strerror", None) or str(reason) or type(exc).__name__
    return text.splitlines()[0][:100]


class _progress_bar:
    """A rich download bar on stderr (bytes, speed, ETA); a no-op when progress is off."""

    def __init__(self, name: str, total: int | None, enabled: bool):
        self.name, self.total, self.enabled, self.progress = name, total, enabled, None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.progress = Progress(
            TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=Console(stderr=True),
        )
        self.progress.__enter__()
        task = self.progress.add_task(self.name, total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
