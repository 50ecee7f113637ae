"""Inputs from the network: http(s) URLs of images and videos, and live streams (RTSP, RTMP, HLS).

The rules, the same on every command:
- offline (`--offline`, CVTOOL_OFFLINE=1): a URL is refused at once, the network never tried;
- every wait is bounded: the DNS lookup and the connection within CVTOOL_CONNECT_TIMEOUT seconds
  (default 5; urllib's own timeout does not cover DNS, so the lookup runs in a thread that is waited
  for that long), and each wait for data within CVTOOL_READ_TIMEOUT seconds (default 10);
- at most CVTOOL_MAX_BYTES bytes (default 500 MB, the spirit of --max-pixels): a larger Content-Length is
  refused before the body is read, a body that grows past it is cut off;
- the content is checked by its first bytes (magic numbers), not by the Content-Type, before anything
  decodes it: an HTML error page served with status 200 is "not an image (the server sent text/html)".

Images decode from memory (cvtool.io.image.decode_image); a video file is downloaded to a temp file
and opened there; a live stream (rtsp://, rtmp://, an HLS .m3u8 playlist) goes to OpenCV's FFmpeg directly.
Every failure is one InputError naming the URL. Only the standard library is used (urllib).
"""

from __future__ import annotations

import functools
import http.client
import os
import re
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import PurePosixPath
from urllib.parse import urlparse

from cvtool.errors import InputError, UsageError

DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_MAX_BYTES = 500_000_000
_CHUNK = 1 << 16
_TRUE = {"1", "true", "yes", "on"}

_URL = re.compile(r"(?i)(https?|rtsps?|rtmps?)://\S+")
_ANY_SCHEME = re.compile(r"(?i)([a-z][a-z0-9+.-]*)://")
_LIVE_SCHEMES = {"rtsp", "rtsps", "rtmp", "rtmps"}
_LIVE_SUFFIXES = {".m3u8", ".mjpg", ".mjpeg"}  # HLS playlists (FFmpeg follows them as they grow); an IP
# camera's Motion JPEG over HTTP (multipart/x-mixed-replace: one JPEG after another, never ending)


def is_url(spec: object) -> bool:
    """`http(s)://`, `rtsp(s)://` or `rtmp(s)://` followed by something."""
    return isinstance(spec, str) and _URL.fullmatch(spec) is not None


def unsupported_scheme(spec: str) -> str | None:
    """"unsupported URL scheme 'ftp' ..." for `ftp://...` and the like; None for anything else."""
    match = _ANY_SCHEME.match(spec)
    if match is None or is_url(spec):
        return None
    return f"unsupported URL scheme '{match.group(1)}' (http, https, rtsp and rtmp are read)"


def url_suffix(url: str) -> str:
    """The suffix of the URL's path, query and fragment left out: `.../clip.mp4?sig=1` -> `.mp4`."""
    return PurePosixPath(urlparse(url).path).suffix.lower()


def is_live_url(url: str) -> bool:
    """A stream that never ends as a file does: RTSP, RTMP, an HLS playlist, an HTTP Motion JPEG stream
    (`.mjpg`). Read by FFmpeg as it comes."""
    return is_url(url) and (urlparse(url).scheme.lower() in _LIVE_SCHEMES or url_suffix(url) in _LIVE_SUFFIXES)


def is_offline() -> bool:
    """CVTOOL_OFFLINE=1 (what `--offline` sets) promises the network is never tried."""
    return os.environ.get("CVTOOL_OFFLINE", "").strip().lower() in _TRUE


OFFLINE_REASON = "a URL, and cvtool is offline (--offline / CVTOOL_OFFLINE=1); download it and give the file"


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"{name}={raw!r} is not a positive number")
    return value


def connect_timeout() -> float:
    """Seconds for the DNS lookup and for the connection, each (CVTOOL_CONNECT_TIMEOUT, default 5)."""
    return _env_number("CVTOOL_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S)


def read_timeout(default: float = DEFAULT_READ_TIMEOUT_S) -> float:
    """Seconds any one wait for data may last (CVTOOL_READ_TIMEOUT, default 10)."""
    return _env_number("CVTOOL_READ_TIMEOUT", default)


def max_bytes() -> int:
    """The largest download or stdin image taken (CVTOOL_MAX_BYTES, default 500 MB)."""
    return int(_env_number("CVTOOL_MAX_BYTES", DEFAULT_MAX_BYTES))


def _mb(n: int) -> str:
    return f"{n / 1e6:.3g} MB" if n >= 1e5 else f"{n} bytes"


def too_large(limit: int, size: int | None = None) -> str:
    told = f" (the server says {_mb(size)})" if size is not None else ""
    return f"larger than the limit of {_mb(limit)}{told}; raise it with CVTOOL_MAX_BYTES"


# --- bounded connections -------------------------------------------------------------------------------


class NetworkTimeout(TimeoutError):
    """A DNS lookup or a connection that did not finish in time; `str()` says which, and how long."""


def resolve(host: str, port: int, timeout: float) -> list:
    """socket.getaddrinfo, given at most `timeout` seconds (a resolver that never answers cannot hold us)."""
    result: dict = {}

    def lookup():
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result["error"] = exc

    worker = threading.Thread(target=lookup, name="cvtool-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise NetworkTimeout(f"DNS lookup of {host} timed out after {timeout:g} s")
    if "error" in result:
        error = result["error"]
        if isinstance(error, socket.gaierror):
            raise OSError(error.errno, f"cannot resolve {host} ({error.strerror or error})") from None
        raise error
    return result["infos"]


def _create_connection(address, timeout=None, source_address=None, *, connect_s: float, **_):
    """socket.create_connection with the DNS lookup and the connect bounded by `connect_s`; the socket's
    own timeout (for each read) is then what urllib asked for."""
    host, port = address
    error: OSError | None = None
    for family, type_, proto, _, sockaddr in resolve(host, port, connect_s):
        sock = socket.socket(family, type_, proto)
        try:
            sock.settimeout(connect_s)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
        except TimeoutError:
            sock.close()
            error = NetworkTimeout(f"connecting to {host}:{port} timed out after {connect_s:g} s")
            continue
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.settimeout(timeout if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT else None)
        return sock
    raise error if error is not None else OSError(f"no address for {host}")


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, connect_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_create_connection, connect_s=connect_s)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, connect_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_create_connection, connect_s=connect_s)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connect_s: float):
        super().__init__()
        self.connect_s = connect_s

    def http_open(self, req):
        return self.do_open(functools.partial(_HTTPConnection, connect_s=self.connect_s), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, connect_s: float):
        super().__init__()
        self.connect_s = connect_s

    def https_open(self, req):
        return self.do_open(functools.partial(_HTTPSConnection, connect_s=self.connect_s), req,
                            context=self._context)


def open_url(url: str | urllib.request.Request, *, read_s: float | None = None, connect_s: float | None = None):
    """urllib's urlopen, with the DNS lookup and connect bounded by `connect_s` and each read by `read_s`."""
    connect_s = connect_timeout() if connect_s is None else connect_s
    read_s = read_timeout() if read_s is None else read_s
    request = url if isinstance(url, urllib.request.Request) else urllib.request.Request(
        url, headers={"User-Agent": "cvtool"})
    opener = urllib.request.build_opener(_HTTPHandler(connect_s), _HTTPSHandler(connect_s))
    return opener.open(request, timeout=read_s)


# What a failing host, network or URL raises; disk errors (e.g. a full disk) are not among them.
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)


def network_reason(exc: BaseException, read_s: float) -> str:
    """A few words for an error line: `HTTP 404 Not Found`, `Connection refused`, `timed out after 5 s ...`."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".strip()
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, NetworkTimeout):
        return str(reason)
    if isinstance(reason, TimeoutError):
        return f"timed out after {read_s:g} s waiting for the server"
    if isinstance(reason, str):
        text = reason
    else:
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return str(text).strip().splitlines()[0][:120]


# --- content checks ---------------------------------------------------------------------------------------

# Magic numbers at offset 0 (JPEG, PNG, GIF, TIFF, JPEG 2000, BMP with its reserved zeros, WebP).
_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
)


def image_kind(head: bytes) -> str | None:
    """The format named by an image's first bytes (16 are enough), or None. Text-based formats (PNM) are
    not sniffed here: their headers are text, so they could not be told from a list of paths."""
    for magic, name in _IMAGE_MAGIC:
        if head.startswith(magic):
            return name
    if (head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 13
            and any((b < 0x20 and b not in b"\t\n\r") or b >= 0x80 for b in head[6:13])):
        return "GIF"  # its binary screen descriptor: no line of text starts like this
    if head[:4] == b"RIFF" and head[8:15] == b"WEBPVP8" and head[7] < 0x20:
        return "WebP"  # the size's top byte: under 0x20 for any file below 536 MB, never in a path
    if head[:2] == b"BM" and len(head) >= 10 and head[6:10] == b"\x00\x00\x00\x00":
        return "BMP"
    return None


def could_be_image(head: bytes) -> bool:
    """Whether more bytes could still make `head` an image's start (a pipe may deliver a few at a time)."""
    if image_kind(head) is not None:
        return True
    prefixes = [*(m for m, _ in _IMAGE_MAGIC), b"GIF87a", b"GIF89a", b"RIFF", b"BM"]
    return len(head) < 16 and any(m[:len(head)] == head[:len(m)] for m in prefixes)


_PNM = re.compile(rb"P[1-7][\s#]")


def _looks_like_image(head: bytes) -> bool:
    return image_kind(head) is not None or _PNM.match(head) is not None


def _looks_like_video(head: bytes) -> bool:
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")  # MP4, MOV, M4V
            or head.startswith(b"\x1aE\xdf\xa3")  # Matroska, WebM
            or (head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"))
            or head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"))  # MPEG program / elementary stream
            or (head[:1] == b"G" and head[188:189] == b"G")  # MPEG-TS (sync byte every 188)
            or head.startswith((b"FLV", b"OggS", b"0&\xb2u\x8ef\xcf\x11")))  # FLV, Ogg, ASF/WMV


# --- fetching -----------------------------------------------------------------------------------------------


def fetch_bytes(url: str, *, kind: str = "image", limit: int | None = None) -> bytes:
    """The body of `url`, checked to be an `kind` ("image" or "video") by its first bytes; InputError
    naming the URL on any failure (offline, HTTP status, timeout, too large, wrong content)."""
    chunks: list[bytes] = []
    _stream(url, chunks.append, kind=kind, limit=limit)
    return b"".join(chunks)


def download_to_temp(url: str, *, kind: str = "video", limit: int | None = None) -> str:
    """`url`'s body in a new temp file (its path; the caller removes it), checked as `fetch_bytes` checks."""
    fd, tmp = tempfile.mkstemp(prefix="cvtool-url-", suffix=url_suffix(url) or ".bin")
    try:
        with os.fdopen(fd, "wb") as handle:
            _stream(url, handle.write, kind=kind, limit=limit)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _stream(url: str, sink, *, kind: str, limit: int | None) -> int:
    if is_offline():
        raise InputError(OFFLINE_REASON, url)
    limit = max_bytes() if limit is None else limit
    read_s = read_timeout()
    received = 0
    try:
        with open_url(url, read_s=read_s) as response:
            declared = response.headers.get("Content-Length")
            total = int(declared) if declared and declared.strip().isdigit() else None
            if total is not None and total > limit:
                raise InputError(too_large(limit, total), url)
            content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip() or None
            head = b""
            while len(head) < 512:  # enough for every check above (an MPEG-TS needs 189)
                chunk = response.read(512 - len(head))
                if not chunk:
                    break
                head += chunk
            if not head:
                raise InputError("empty download (0 bytes)", url)
            if not (_looks_like_image(head) if kind == "image" else _looks_like_video(head)):
                what = "an image" if kind == "image" else "a video"
                if content_type is None:
                    sent = "unrecognised content, no Content-Type"
                elif content_type.lower().startswith(f"{kind}/"):
                    sent = f"the server says {content_type}, but the first bytes are no {kind} format"
                else:
                    sent = f"the server sent {content_type}"
                raise InputError(f"not {what} ({sent})", url)
            received = len(head)
            chunk = head
            while chunk:
                if received > limit:
                    raise InputError(too_large(limit), url)
                sink(chunk)
                chunk = response.read(_CHUNK)
                received += len(chunk)
    except InputError:
        raise
    except NETWORK_ERRORS as exc:
        raise InputError(f"cannot download: {network_reason(exc, read_s)}", url) from None
    if total is not None and received != total:  # http.client does not flag a connection closed early
        raise InputError(f"cannot download: connection closed after {received} of {total} bytes", url)
    return received
