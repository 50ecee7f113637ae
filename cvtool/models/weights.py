"""Fetching pretrained weight files the torchvision way: cached, hash-checked, with progress, and a
guaranteed offline mode.

Files land in torch.hub's cache (`$TORCH_HOME/hub/checkpoints`) under their published names, so
cvtool and torchvision share one copy. A download streams into a temp file beside its final name and
is renamed into the cache only when complete and its hash matches, so a partial or corrupt file never
looks cached. A file found in the cache is hash-checked too before it is used (anyone can drop a file
under the name the offline message asks for); the verdict is remembered per file version
(cvtool.cache.file_sha256), so an unchanged file is read once, not on every load.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Callable, Iterator
from urllib.parse import urlparse

from cvtool.cache import file_sha256, remember_sha256
from cvtool.cache import sha256_file as sha256_file  # re-exported: always re-reads the file
from cvtool.errors import WeightsError
from cvtool.io import remote
from cvtool.io.atomic import atomic_open

# torch.hub's convention: `name-<hex>.ext`, the hex being a prefix of the file's SHA-256.
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")
DOWNLOAD_TIMEOUT_S = 30.0  # each wait for data (CVTOOL_READ_TIMEOUT overrides), not for the whole file
# The DNS lookup and the connection are bounded apart (CVTOOL_CONNECT_TIMEOUT, default 5 s: cvtool.io.remote),
# so a machine whose DNS never answers hears "cannot download" within seconds, not after the resolver gives up.
_CHUNK = 1 << 20
_TRUE = {"1", "true", "yes", "on"}
# What a failing host, network or URL raises; disk errors (e.g. a full cache) are not among them.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ValueError)


def cache_dir() -> Path:
    """torch.hub's checkpoint folder, so TORCH_HOME is honoured and torchvision's downloads are reused.

    Without importing torch (`cvtool models` lists what is on disk in a fraction of a second): torch.hub's own
    rule, $TORCH_HOME else $XDG_CACHE_HOME/torch else ~/.cache/torch, then hub/; once torch.hub is imported,
    torch.hub.get_dir() itself (it also honours torch.hub.set_dir). A test holds the two equal."""
    import sys

    hub = sys.modules.get("torch.hub")
    if hub is not None:
        return Path(hub.get_dir()) / "checkpoints"
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def is_offline() -> bool:
    """CVTOOL_OFFLINE=1 promises the network is never tried (air-gapped machines, reproducible CI)."""
    return os.environ.get("CVTOOL_OFFLINE", "").strip().lower() in _TRUE


def _basename(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def resolve_url(url: str) -> str:
    """With CVTOOL_WEIGHTS_MIRROR set, the same file name from that mirror (air-gapped sites)."""
    mirror = os.environ.get("CVTOOL_WEIGHTS_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{_basename(url)}" if mirror else url


def cached_path(url: str) -> Path:
    """Where `url`'s file lives in the cache, whether or not it is there yet."""
    return cache_dir() / _basename(url)


def expected_hash_prefix(url_or_filename: str) -> str | None:
    """The SHA-256 prefix a torch.hub-style name carries (`resnet18-f37072fd.pth`); None if it has none."""
    match = HASH_REGEX.search(_basename(url_or_filename))
    return (match.group(1) or None) if match else None


def expected_sha256(url: str | None, sha256: str | None = None) -> str | None:
    """The hash (or torch.hub prefix) a file must match: `sha256` when given, else the one in `url`'s name."""
    expected = sha256 or (expected_hash_prefix(url) if url else None)
    return expected.lower() if expected else None


_expected_hash = expected_sha256


def verify(path: str | Path, url: str | None = None, sha256: str | None = None) -> bool | None:
    """Re-hash a cached file (really re-read, not remembered) against its published hash; None when
    there is nothing to compare with."""
    expected = _expected_hash(url, sha256)
    return None if expected is None else file_sha256(path, rehash=True).startswith(expected)


def check_cached(path: Path, url: str, sha256: str | None = None) -> None:
    """A one-line WeightsError when a cached file does not match its published hash.

    The hash is remembered per file version (path, size, mtime, ctime, inode), so only the first
    load of a given file reads it.
    """
    expected = _expected_hash(url, sha256)
    if expected is None:
        return
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise WeightsError(f"cannot read ({exc.strerror or exc})", path) from None
    if not actual.startswith(expected):
        raise CorruptWeightsError(path, actual, expected)


class CorruptWeightsError(WeightsError):
    """A cached weights file whose hash is not the published one; `for_model` names the fix's model."""

    def __init__(self, path: Path, actual: str, expected: str, model: str | None = None):
        fix = f"run `cvtool models pull {model}`" if model else "the next run downloads it again"
        super().__init__(f"corrupt: sha256 {actual[:12]}… does not match the published {expected[:12]}…; delete it "
                         f"and {fix} (or pass --weights FILE)", path)
        self.file, self.actual, self.expected = path, actual, expected

    def for_model(self, model: str) -> "CorruptWeightsError":
        return CorruptWeightsError(self.file, self.actual, self.expected, model)


def fetch(url: str, *, sha256: str | None = None, offline: bool | None = None, progress: bool = True,
          alternative: str | None = "--weights FILE") -> Path:
    """The cached file for `url`, downloading it first if it is not there.

    A cache hit touches no network and is checked against the published hash (read once per file
    version, see check_cached): a mismatch is a WeightsError, never a silent load.
    Offline (the argument, else CVTOOL_OFFLINE) a miss fails at once, without any network attempt.
    `alternative`: the caller's own way to give the file instead (`--vgg-weights FILE`), offered in errors.
    """
    instead = f" or pass {alternative}" if alternative else ""
    target = cached_path(url)
    if target.is_file() and target.stat().st_size > 0:
        check_cached(target, url, sha256)
        return target
    source = resolve_url(url)
    if is_offline() if offline is None else offline:
        raise WeightsError(
            f"weights file {target.name} is not in the cache and cvtool is offline; download {source} and put it in "
            f"{target.parent}/{',' + instead if instead else ''}"
        )
    expected = _expected_hash(url, sha256)
    with atomic_open(target, "wb") as handle:  # an exception below removes the temp file
        actual = _download(source, handle, target.name, progress, instead)
        if expected and not actual.startswith(expected):
            raise WeightsError(
                f"downloaded {target.name} is corrupt: sha256 {actual[:12]}… does not match expected {expected[:12]}…; "
                f"try again{instead}"
            )
    remember_sha256(target, actual)  # hashed while it streamed in: the first load need not read it again
    return target


def _download(source: str, handle: IO[bytes], name: str, progress: bool, instead: str = "") -> str:
    """Stream `source` into `handle` and return its SHA-256; a one-line WeightsError on any network failure."""
    digest, received = hashlib.sha256(), 0
    read_s = remote.read_timeout(DOWNLOAD_TIMEOUT_S)
    try:
        request = urllib.request.Request(source, headers={"User-Agent": "cvtool"})
        with remote.open_url(request, read_s=read_s) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress_bar(name, total, enabled=progress) as advance:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
    except _NETWORK_ERRORS as exc:
        raise _cannot_download(name, source, _network_reason(exc, read_s), instead) from None
    if total is not None and received != total:  # http.client does not flag a connection closed early
        raise _cannot_download(name, source, f"connection closed after {received} of {total} bytes", instead)
    return digest.hexdigest()


def _cannot_download(name: str, source: str, reason: str, instead: str = "") -> WeightsError:
    return WeightsError(
        f"cannot download {name} from {source} ({reason}); put the file in {cache_dir()}/{instead} "
        "(set CVTOOL_OFFLINE=1 to never try the network)"
    )


def _network_reason(exc: Exception, read_s: float = DOWNLOAD_TIMEOUT_S) -> str:
    """A few words for the error line: `HTTP 404 Not Found`, `Connection refused`, `DNS lookup of HOST timed
    out after 5 s`, `timed out after 30 s waiting for the server`."""
    return remote.network_reason(exc, read_s)


@contextlib.contextmanager
def _progress_bar(name: str, total: int | None, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich bar on stderr (bytes, speed, ETA), so stdout stays clean for results; yields `advance(n)`."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(name, total=total)
        yield lambda n: bar.advance(task, n)
