"""The CLI as a thin client of `cvtool serve` (CVTOOL_SERVER=http://host:port, or `cvtool --server URL`).

Files are read here and sent as bytes; the server answers the record `cvtool TASK` would print, and it
is printed the same way with the same exit code. HTTP is the standard library's urllib, and nothing
here imports torch, so a call costs the interpreter and the upload, not the model. An unreachable
server is one line and exit 2: there is no silent fallback to running locally (unset CVTOOL_SERVER
for that).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Iterator

from cvtool.errors import EXIT_INTERNAL, EXIT_USAGE, CvtoolError, InputError, UsageError

ENV_SERVER = "CVTOOL_SERVER"
ENV_TOKEN = "CVTOOL_TOKEN"
LOCAL_ONLY = "unset CVTOOL_SERVER to run it locally"


class ServerError(CvtoolError):
    """The server failed on its side (HTTP 5xx): the CLI's exit 3."""

    exit_code = EXIT_INTERNAL


def server_url() -> str | None:
    return os.environ.get(ENV_SERVER) or None


class Client:
    """POSTs to one server; `post` returns (status, headers, body) for any HTTP answer and raises UsageError
    only when no answer came (refused, unreachable, timed out)."""

    def __init__(self, url: str, token: str | None = None, timeout: float | None = None):
        parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"CVTOOL_SERVER={url!r}: expected http://HOST:PORT")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.token = token if token is not None else os.environ.get(ENV_TOKEN)
        self.timeout = timeout if timeout is not None else float(os.environ.get("CVTOOL_SERVER_TIMEOUT", "600"))

    def request(self, method: str, endpoint: str, *, params: dict | None = None, body: bytes | None = None,
                content_type: str | None = None) -> tuple[int, dict, bytes]:
        query = urllib.parse.urlencode({k: _param(v) for k, v in (params or {}).items() if v is not None})
        req = urllib.request.Request(f"{self.url}{endpoint}{'?' + query if query else ''}", data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers or {}), exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UsageError(f"cannot reach the cvtool server at {self.url} ({ENV_SERVER}): {reason}") from None

    def post_image(self, endpoint: str, data: bytes, name: str, params: dict) -> tuple[int, dict, bytes]:
        return self.request("POST", endpoint, params={**params, "name": name}, body=data,
                            content_type="application/octet-stream")

    def post_files(self, endpoint: str, files: dict[str, tuple[str, bytes]], params: dict) -> tuple[int, dict, bytes]:
        body, content_type = multipart(files)
        return self.request("POST", endpoint, params=params, body=body, content_type=content_type)


def _param(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def multipart(files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """multipart/form-data with one file part per field: field -> (file name, bytes)."""
    boundary = f"cvtool-{uuid.uuid4().hex}"
    chunks = []
    for field, (name, data) in files.items():
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{quoted}"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n".encode())
        chunks += [data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def read_file(path: str) -> bytes:
    """The file's bytes; on any problem, the CLI's own reader says what is wrong (the same InputError)."""
    from cvtool.io.files import open_regular

    try:
        with open_regular(path, "rb") as handle:
            data = handle.read()
        if data:
            return data
    except OSError:
        pass
    from cvtool.io.image import _read_bytes  # raises InputError("no such file" / "empty file (0 bytes)" ...)

    return _read_bytes(path)


def _json(body: bytes) -> dict:
    try:
        return json.loads(body)
    except ValueError:
        return {"error": body.decode("utf-8", "replace").strip()[:200] or "empty answer"}


def input_failure(status: int, body: bytes) -> str | None:
    """The one-line reason when the server says this input is bad (422, 413); None for anything else."""
    return _json(body).get("error") if status in (413, 422) else None


def raise_for(status: int, body: bytes, client: Client) -> None:
    """Any answer that is not a record nor a bad input: stop the command as the local run would."""
    payload = _json(body)
    message = payload.get("error") or f"HTTP {status}"
    path = payload.get("path")
    if status >= 500:
        raise ServerError(f"server error ({client.url}): {message}")
    if status == 401:
        raise UsageError(f"{client.url}: {message}; set CVTOOL_TOKEN")
    raise UsageError(message, path)


# -- the commands ------------------------------------------------------------------------------------

# verify-face's table/CSV columns, as cvtool.pipelines.face.VERIFY_COLUMNS / verify_rows give them (a test
# holds the two equal): importing that module costs the client NumPy and OpenCV, ~0.2 s per call.
VERIFY_COLUMNS = ["path_b", "same", "distance", "threshold", "detector", "model"]


def verify_rows(result: dict) -> list[list]:
    return [[result[column] for column in VERIFY_COLUMNS]]


def _writer(task: str, fmt: str | None):
    """The CLI's writer; the columns and row flatteners (cvtool.api, no torch) only for table and CSV."""
    from cvtool.io.records import make_writer

    if fmt is None:
        fmt = "table" if sys.stdout.isatty() else "jsonl"
    if fmt in ("coco", "yolo"):
        raise UsageError(f"--format {fmt} needs the model's class list, which stays on the server; use json or "
                         f"jsonl, or {LOCAL_ONLY}")
    if fmt in ("json", "jsonl"):
        return make_writer(fmt, [], lambda result: [])
    if task == "verify-face":  # the local CLI's columns (cvtool.pipelines.face, which imports NumPy and OpenCV)
        return make_writer(fmt, VERIFY_COLUMNS, verify_rows)
    if task == "stylize":
        from cvtool.pipelines.stylize import FAST_COLUMNS, fast_rows

        return make_writer(fmt, FAST_COLUMNS, fast_rows)
    import cvtool.api as api

    kind = {"classify": api.Classifier, "detect": api.Detector, "segment": api.Segmenter,
            "identify": api.FaceVerifier}[task]
    return make_writer(fmt, kind.columns, kind.rows)


def run_batch(url: str, task: str, images: list[str], *, fmt: str | None, recursive: bool, options: dict) -> int:
    """classify / detect / segment (and verify-face --gallery as `identify`): one request per input, in order;
    a bad input is reported and the batch goes on (exit 1 at the end), as locally."""
    from cvtool.console import BatchSummary, drive, info
    from cvtool.io.inputs import expand_inputs
    from cvtool.io.video import is_stream

    client = Client(url)
    writer = _writer(task, fmt)
    items, total = expand_inputs(images, recursive=recursive, stdin=sys.stdin)
    info(f"{task} on the cvtool server at {client.url}")
    params = {k: v for k, v in options.items() if v is not None}

    def records() -> Iterator[dict]:
        for item in items:
            if item.error:
                yield {"path": item.path, "error": item.error}
                continue
            if is_stream(item.path):
                yield {"path": item.path, "error": f"videos and cameras are not sent to the server; {LOCAL_ONLY}"}
                continue
            try:
                data = read_file(item.path)
            except InputError as exc:
                yield {"path": item.path, "error": exc.reason}
                continue
            status, _, body = client.post_image(f"/{task}", data, item.path, params)
            if status == 200:
                yield json.loads(body)
                continue
            reason = input_failure(status, body)
            if reason is None:
                raise_for(status, body, client)
            yield {"path": item.path, "error": reason}

    summary = BatchSummary()
    drive(records(), writer, total=total, summary=summary)
    return summary.exit_code


def run_verify(url: str, images: list[str], *, fmt: str | None, options: dict) -> int:
    """verify-face A B: 0 same person, 1 different, 2 when a face cannot be had (as locally)."""
    from cvtool.console import error_line

    if len(images) != 2:
        raise UsageError(f"give two images to compare (got {len(images)}), or --gallery KNOWN IMAGES...")
    client = Client(url)
    writer = _writer("verify-face", fmt)

    def failed(path: str, reason: str) -> int:
        error_line(f"{path}: {reason}")
        writer.write({"path": path, "error": reason})
        writer.close()
        return EXIT_USAGE

    try:
        files = {"a": (images[0], read_file(images[0])), "b": (images[1], read_file(images[1]))}
    except InputError as exc:
        return failed(exc.path or images[0], exc.reason)
    status, _, body = client.post_files("/verify-face", files, {k: v for k, v in options.items() if v is not None})
    if status != 200:
        reason = input_failure(status, body)
        if reason is None:
            raise_for(status, body, client)
        return failed(_json(body).get("path") or images[0], reason)
    record = json.loads(body)
    writer.write(record)
    writer.close()
    return 0 if record["result"]["same"] else 1


def run_remote(task: str, images: list[str], *, fmt=None, out=None, recursive: bool = False, options: dict,
               gallery=None, calibrate=None) -> int:
    """What cli.py calls when CVTOOL_SERVER is set: the command's exit code."""
    url = server_url()
    fmt = getattr(fmt, "value", fmt)
    if task == "stylize":  # its output is an image written here: not done through the server yet
        raise UsageError(f"stylize is not sent to the server (POST /stylize answers the image); {LOCAL_ONLY}")
    if out is not None:
        raise UsageError(f"--out writes files on this machine, and only records come back from the server; {LOCAL_ONLY}")
    if calibrate is not None:
        raise UsageError(f"--calibrate is not sent to the server; {LOCAL_ONLY}")
    if task == "verify-face" and gallery is not None:
        if not images:
            raise UsageError("--gallery needs images whose faces to name")
        return run_batch(url, "identify", images, fmt=fmt, recursive=recursive,
                         options={**options, "gallery": str(gallery)})
    if task == "verify-face":
        return run_verify(url, images, fmt=fmt, options=options)
    return run_batch(url, task, images, fmt=fmt, recursive=recursive, options=options)
