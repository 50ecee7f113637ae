"""The CLI as a thin client of `cvtool serve` (CVTOOL_SERVER=http://host:port, or `cvtool --server URL`).

Files are read here and sent as bytes; the server answers the record `cvtool TASK` would print, and it
is printed the same way with the same exit code. HTTP is the standard library's urllib, and nothing
here imports torch, so a call costs the interpreter and the upload, not the model. An unreachable
server is one line and exit 2: there is no silent fallback to running locally (unset CVTOOL_SERVER
for that).

`--out` files are written here, under the names and with the bytes a local run writes (`LocalOutputs`):
classify's JSON and detect's drawings, crops and YOLO labels from the record and the image decoded here;
segment's mask, overlay and class masks from the class mask the server sends as a PNG; stylize's image
from the server's PNG. All atomically, never over an input of the batch (cvtool.io.outputs' rules).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Iterator, NamedTuple

from cvtool.errors import EXIT_INTERNAL, EXIT_USAGE, CvtoolError, InputError, UsageError
from cvtool.io.outputs import one_input_for_file
from cvtool.tasks.options import LOAD
from cvtool.tasks.spec import TABLE_FORMATS, Table, TaskSpec

ENV_SERVER = "CVTOOL_SERVER"
ENV_TOKEN = "CVTOOL_TOKEN"
ENV_IN_FLIGHT = "CVTOOL_SERVER_IN_FLIGHT"
IN_FLIGHT = 4  # a batch's requests on their way at once: the server batches them across requests (--max-batch)
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
    if isinstance(value, (list, tuple)):  # a comma-separated option given as a list
        return ",".join(str(v) for v in value)
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

class Mode(NamedTuple):
    """What the server runs of a command: its endpoint, the table (task table columns and rows: no NumPy) its
    records print as, whether it is one request for two images (verify-face A B) rather than one per input, and
    the endpoint's own parameters it takes besides the task's options (/identify's gallery)."""

    endpoint: str
    table: Table
    pair: bool = False
    params: dict = {}


def _one_mode(spec: TaskSpec, images: list[str], values: dict, out) -> Mode:
    return Mode(spec.endpoint or f"/{spec.name}", spec.table)


def _stylize_mode(spec: TaskSpec, images: list[str], values: dict, out) -> Mode:
    if values.get("model") is None:
        raise UsageError("stylize CONTENT STYLE (Gatys et al.'s optimisation, minutes of gradient steps) is not sent "
                         f"to the server, which runs --model networks only; {LOCAL_ONLY}")
    return Mode(spec.endpoint, spec.tables["feed_forward"])


def _verify_face_mode(spec: TaskSpec, images: list[str], values: dict, out) -> Mode:
    from cvtool.tasks.verify_face import mode

    if out is not None:
        raise UsageError(f"verify-face --out draws faces on this machine, and only records come back from the server; "
                         f"{LOCAL_ONLY}")
    if values.get("calibrate") is not None:
        raise UsageError(f"--calibrate is not sent to the server; {LOCAL_ONLY}")
    gallery = values.get("gallery")
    if mode(images, gallery=gallery, calibrate=None) == "pair":
        return Mode(spec.endpoint, spec.tables["pair"], pair=True)
    return Mode("/identify", spec.table, params={"gallery": str(gallery)})  # a batch, each image's faces named


MODES = {"stylize": _stylize_mode, "verify-face": _verify_face_mode}  # tasks with modes the server does not run


def request_params(spec: TaskSpec, values: dict) -> dict:
    """A request's query options: the task's `server` options among the command's values (None: not sent, the
    server's default applies), under the table's names (an old name, e.g. segment's batch_size, as its option)."""
    params = {}
    for option in spec.options.select(route="server"):
        for name in (option.name, *option.aliases):
            if values.get(name) is not None:
                params[option.name] = values[name]
                break
    return params


def _writer(table: Table, fmt: str | None, extra_formats: dict | None = None):
    """The CLI's writer, the table's columns and rows for table and CSV."""
    from cvtool.io.records import make_writer

    if fmt is None:
        fmt = "table" if sys.stdout.isatty() else "jsonl"
    return make_writer(fmt, list(table.columns), table.rows, extra_formats=extra_formats)


def _extra_formats(client: "Client", spec: TaskSpec, fmt: str | None, params: dict) -> dict | None:
    """The writers of a format beyond the table's (detect's `-f coco`, with the COCO categories the server's
    detector has, from GET /detect/categories; `-f yolo`)."""
    if fmt is None or fmt in TABLE_FORMATS:
        return None
    from cvtool.pipelines.detect import writers_for

    return writers_for(_coco_categories(client, spec, params) if fmt == "coco" else {})


def run_batch(url: str, spec: TaskSpec, mode: Mode, images: list[str], *, fmt: str | None, recursive: bool,
              params: dict, out=None, saves: dict | None = None, skip_existing: bool = False) -> int:
    """classify / detect / segment / stylize --model (and verify-face --gallery, on /identify): one request per
    input, up to CVTOOL_SERVER_IN_FLIGHT (4) of them at once, records printed in input order; a bad input is
    reported and the batch goes on (exit 1 at the end), as locally. With
    `out`, each input's files are written here as the local run writes them (`LocalOutputs`)."""
    from cvtool.console import BatchSummary, drive, info
    from cvtool.io.inputs import expand_inputs
    from cvtool.io.kinds import is_stream

    client = Client(url)
    in_flight = requests_in_flight()
    writer = _writer(mode.table, fmt, _extra_formats(client, spec, fmt, params))
    outputs = local_outputs(spec, out, saves or {}, params, skip_existing)
    items, total = expand_inputs(images, recursive=recursive, stdin=sys.stdin, out_dir=out,
                                 on_previous_outputs=lambda n: info(f"{n} previous cvtool output(s) in --out not "
                                                                    "taken as inputs"))
    if outputs is not None:
        items = outputs.check_inputs(items)
    info(f"{mode.endpoint.lstrip('/')} on the cvtool server at {client.url}")
    if outputs is not None:
        params = {**params, **outputs.params}
    summary = BatchSummary()

    def finish(item, data: bytes, status: int, headers: dict, body: bytes) -> dict:
        if status == 200:
            record, png = _answer(headers, body, client)
            if outputs is not None:
                try:
                    record["outputs"] = outputs.save(item.path, data, record, png, headers)
                except ServerError:
                    raise
                except CvtoolError as exc:  # as the local runner: this input fails, the batch goes on
                    return {"path": item.path, "error": exc.reason}
            return record
        reason = input_failure(status, body)
        if reason is None:
            raise_for(status, body, client)
        return {"path": item.path, "error": reason}

    def records() -> Iterator[dict]:
        """In input order, with up to `in_flight` requests on their way at once (so the server can batch one
        client's files); files are read, and outputs written, here in this thread only."""
        from collections import deque

        pending: deque[_Pending] = deque()
        try:
            for item in items:
                if item.error:
                    pending.append(_Pending({"path": item.path, "error": item.error}))
                elif is_stream(item.path):
                    pending.append(_Pending({"path": item.path, "error": "videos and cameras are not sent to "
                                             f"the server; {LOCAL_ONLY}"}))
                elif skip_existing and outputs is not None and outputs.done(item.path):
                    summary.skipped += 1
                    continue
                else:
                    try:
                        data = read_file(item.path)
                    except InputError as exc:
                        pending.append(_Pending({"path": item.path, "error": exc.reason}))
                    else:
                        while sum(entry.future is not None for entry in pending) >= in_flight:
                            yield pending.popleft().settle(finish)  # the window is full: the oldest first
                        future = _in_background(client.post_image, mode.endpoint, data, item.path, params)
                        pending.append(_Pending(None, item, data, future))
                while pending and pending[0].record is not None:
                    yield pending.popleft().settle(finish)
            while pending:
                yield pending.popleft().settle(finish)
        finally:  # stopped early (a server error, Ctrl-C): the answers still on their way are not waited for
            for entry in pending:
                if entry.future is not None:
                    entry.future.cancel()

    drive(records(), writer, total=total, summary=summary)
    return summary.exit_code


def _coco_categories(client: "Client", spec: TaskSpec, params: dict) -> dict[int, dict]:
    """The server's detector's COCO categories (class index -> {"id", "name"}), as the local `-f coco` lists them:
    the detector its loading options (the table's LOAD ones) name."""
    loads = {o.name: params[o.name] for o in spec.options.select(stage=LOAD, route="server") if o.name in params}
    status, _, body = client.request("GET", "/detect/categories", params=loads)
    if status != 200:
        raise_for(status, body, client)
    try:
        return {int(c["index"]): {"id": c["id"], "name": c["name"]} for c in json.loads(body)["categories"]}
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"server error ({client.url}): /detect/categories sent no categories") from None


def _in_background(fn, *args):
    """fn(*args) in a daemon thread, as a concurrent.futures.Future: a command stopped by Ctrl-C or a server
    error exits at once, without waiting for the requests it has on their way (a thread pool's workers would
    be joined at exit, each up to CVTOOL_SERVER_TIMEOUT)."""
    import threading
    from concurrent.futures import Future

    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the main thread, which raises it
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True, name="cvtool-request").start()
    return future


class _Pending(NamedTuple):
    """One input of a batch in the client's window: its record already (it failed here), or its request."""

    record: dict | None
    item: Any = None
    data: bytes = b""
    future: Any = None  # concurrent.futures.Future of (status, headers, body)

    def settle(self, finish) -> dict:
        return self.record if self.record is not None else finish(self.item, self.data, *_result(self.future))


def _result(future):
    """The future's result, waited for in slices of 0.2 s: the kernel may hand Ctrl-C to any thread, and when a
    request thread takes it, the main thread learns of it only once it runs again; a plain wait would hold it
    until that request ends (up to CVTOOL_SERVER_TIMEOUT)."""
    while True:
        try:
            return future.result(timeout=0.2)
        except TimeoutError:
            if future.done():  # the request's own timeout, not the slice's
                raise


def requests_in_flight() -> int:
    """How many of a batch's requests the client keeps on their way at once: CVTOOL_SERVER_IN_FLIGHT, default
    IN_FLIGHT (1: one after another)."""
    given = os.environ.get(ENV_IN_FLIGHT, "").strip()
    if not given:
        return IN_FLIGHT
    if not given.isdigit() or int(given) < 1:
        raise UsageError(f"{ENV_IN_FLIGHT}={given!r}: expected a whole number >= 1")
    return int(given)


RECORD_HEADER = "x-cvtool-record"  # a PNG answer's record (/stylize, /segment?format=png)
CLASSES_HEADER = "x-cvtool-classes"  # /detect?with_classes=true: the model's class list


def _header(headers: dict, name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _answer(headers: dict, body: bytes, client: Client) -> tuple[dict, bytes | None]:
    """A 200 answer: (its record, the PNG it carries or None). A PNG answer has its record in X-Cvtool-Record."""
    try:
        text = _header(headers, RECORD_HEADER)
        if text is not None:
            return json.loads(text), body
        return json.loads(body), None
    except ValueError:
        raise ServerError(f"server error ({client.url}): an answer that is neither a record nor a PNG with one") \
            from None


# -- --out, written on this machine ------------------------------------------------------------------

def local_outputs(spec: TaskSpec, out, saves: dict, params: dict, skip_existing: bool):
    """The writer of `--out` files for the task (None without --out), after the local CLI's checks of --out: its
    `needs_out` options (saves made here: --save-crops, --save-txt, --save-mask) need it. `params`: the request's
    options, over the table's defaults."""
    spec.check_needs_out(saves, out)
    options = {**spec.defaults(route="server"), **params}
    kind = OUTPUTS.get(spec.name)
    if kind is not None:
        return kind.for_out(out, options, saves, skip_existing)
    from cvtool.io.outputs import check_out_dir

    check_out_dir(out, skip_existing=skip_existing)
    if out is not None:
        raise UsageError(f"{spec.name} --out is not written by the thin client; {LOCAL_ONLY}")
    return None


class LocalOutputs:
    """One task's `--out` files for one input, made here from the server's answer under the names (and with
    the bytes) its local pipeline writes; atomic writes, never over an input of the batch."""

    suffix: str  # the main output's, as the pipeline's OutputNamer
    params: dict = {}  # what to ask the server for besides the record

    def __init__(self, out, options: dict):
        from cvtool.io.outputs import OutputNamer

        self.out, self.options = out, options
        self.name = OutputNamer(out, self.suffix)

    @classmethod
    def for_out(cls, out, options: dict, saves: dict, skip_existing: bool):
        """The writer for `--out` (None without it; --skip-existing needs it), its saves as keywords."""
        from pathlib import Path

        from cvtool.io.outputs import check_out_dir

        check_out_dir(out, skip_existing=skip_existing)
        return None if out is None else cls(Path(out), options, **saves)

    def check_inputs(self, items):
        return items

    def done(self, path: str) -> bool:
        """--skip-existing: this input's output is there, written by cvtool."""
        return self.name.exists(path)

    def decode(self, data: bytes, path: str):
        """The input's pixels, decoded here as the local run decodes them (the server decoded the same bytes)."""
        from cvtool.io.image import DEFAULT_MAX_PIXELS, decode_image

        return decode_image(data, path, max_pixels=self.options.get("max_pixels") or DEFAULT_MAX_PIXELS)

    def save(self, path: str, data: bytes, record: dict, png: bytes | None, headers: dict) -> list[str]:
        raise NotImplementedError


class ClassifyOutputs(LocalOutputs):
    """OUT/NAME.json: the record without its timing (cvtool.pipelines.classify)."""

    suffix = ".json"

    def save(self, path, data, record, png, headers):
        from cvtool.pipelines.classify import write_record

        return write_record(self.name(path), path, record["task"], record["model"], record["result"])


class DetectOutputs(LocalOutputs):
    """OUT/NAME.detect.jpg drawn from the record's boxes; --save-crops OUT/NAME.cropNNN-LABEL.jpg; --save-txt
    OUT/labels/NAME.txt and OUT/classes.txt (the class list from the server) (cvtool.pipelines.detect)."""

    suffix = ".detect.jpg"

    def __init__(self, out, options, save_crops: bool = False, save_txt: bool = False):
        super().__init__(out, options)
        self.save_crops, self.save_txt = save_crops, save_txt
        self.params = {"with_classes": True} if save_txt else {}
        self._classes_written = False

    def save(self, path, data, record, png, headers):
        from cvtool.io.image import write_image
        from cvtool.io.render import draw_detections

        rgb = self.decode(data, path)
        detections = record["result"]["detections"]
        target = self.name(path)
        write_image(target, draw_detections(rgb, detections))
        base = str(target)[: -len(self.suffix)]
        written = [str(target)]
        if self.save_crops:
            from cvtool.pipelines.detect import write_crops

            written += write_crops(base, rgb, detections, path)
        if self.save_txt:
            written += self._labels(os.path.basename(base), record["result"], path, headers)
        return written

    def _labels(self, stem: str, result: dict, path: str, headers: dict) -> list[str]:
        from cvtool.pipelines.detect import write_labels

        classes = None
        if not self._classes_written:
            try:
                classes = json.loads(_header(headers, CLASSES_HEADER) or "")
            except ValueError:
                raise ServerError("server error: no class list (X-Cvtool-Classes) for --save-txt; an older cvtool "
                                  "serve?") from None
            self._classes_written = True
        return write_labels(self.out, stem, result, path, classes)


class SegmentOutputs(LocalOutputs):
    """OUT/NAME.mask.png and OUT/NAME.overlay.EXT, --save-mask OUT/NAME.mask-LABEL.png, from the class mask the
    server sends (/segment?format=png) and the image decoded here (cvtool.pipelines.segment)."""

    suffix = ".mask.png"
    params = {"format": "png"}

    def __init__(self, out, options, save_mask: bool = False):
        super().__init__(out, options)
        self.save_mask = save_mask

    def save(self, path, data, record, png, headers):
        from cvtool.io.render import class_palette
        from cvtool.pipelines.segment import write_outputs

        rgb = self.decode(data, path)
        return write_outputs(self.name(path), path, rgb, _png_labels(png, rgb.shape[:2]), record["result"],
                             alpha=self.options["alpha"], palette=class_palette(), save_mask=self.save_mask)


def _png_labels(png: bytes | None, size: tuple[int, int]):
    """The class indices of /segment?format=png's palette PNG, checked against the image's size."""
    import io

    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(png or b"")) as image:
            image.load()
            labels = np.asarray(image) if image.mode in ("P", "L") else None
    except (OSError, ValueError):
        labels = None
    if labels is None or labels.shape != tuple(size):
        raise ServerError(f"server error: /segment sent no class mask of the image's size {size[0]}x{size[1]} "
                          "(an older cvtool serve?)")
    return labels


class StylizeOutputs(LocalOutputs):
    """`--out FILE` for one content, else OUT/NAME.stylized.png: the server's stylised pixels (a lossless PNG),
    written as the local run writes them (cvtool.io.image.OneImageOut, the stylize pipelines' writer)."""

    suffix = ".stylized.png"

    def __init__(self, out, options, *, single_file: bool):
        from cvtool.io.image import OneImageOut

        super().__init__(out, options)
        self.image_out = OneImageOut(out, single_file, self.suffix)

    @classmethod
    def for_out(cls, out, options: dict, saves: dict, skip_existing: bool):
        """--out FILE (one content) or a directory; always given (the CLI's default: stylized/)."""
        from pathlib import Path

        from cvtool.io.outputs import check_out_dir
        from cvtool.io.inputs import is_single_file

        single_file = is_single_file(Path(out))
        if not single_file:
            check_out_dir(Path(out))
        return cls(Path(out), options, single_file=single_file)

    def check_inputs(self, items):
        return iter(one_input_for_file(self.out, list(items))) if self.image_out.single_file else items

    def done(self, path: str) -> bool:
        return self.image_out.done(path)

    def save(self, path, data, record, png, headers):
        import cv2
        import numpy as np

        bgr = cv2.imdecode(np.frombuffer(png or b"", np.uint8), cv2.IMREAD_COLOR) if png else None
        if bgr is None:
            raise ServerError("server error: /stylize sent no image")
        return self.image_out.write(path, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


class LandmarksOutputs(LocalOutputs):
    """OUT/NAME.landmarks.jpg drawn from the record's faces; --save-pts OUT/NAME.faceNN.pts
    (cvtool.pipelines.landmarks)."""

    suffix = ".landmarks.jpg"

    def __init__(self, out, options, save_pts: bool = False):
        super().__init__(out, options)
        self.save_pts = save_pts

    def save(self, path, data, record, png, headers):
        from cvtool.io.image import write_image
        from cvtool.io.render import draw_detections
        from cvtool.pipelines.landmarks import as_detections, write_pts

        target = self.name(path)
        write_image(target, draw_detections(self.decode(data, path), as_detections(record["result"])))
        written = [str(target)]
        if self.save_pts:
            written += write_pts(str(target)[: -len(self.suffix)], record["result"], path)
        return written


OUTPUTS = {"classify": ClassifyOutputs, "detect": DetectOutputs, "segment": SegmentOutputs,
           "stylize": StylizeOutputs, "landmarks": LandmarksOutputs}  # each task's `--out` files, as its pipeline writes them


def run_verify(url: str, mode: Mode, images: list[str], *, fmt: str | None, params: dict) -> int:
    """verify-face A B: 0 same person, 1 different, 2 when a face cannot be had (as locally)."""
    from cvtool.console import error_line

    client = Client(url)
    writer = _writer(mode.table, fmt)

    def failed(path: str, reason: str) -> int:
        error_line(f"{path}: {reason}")
        writer.write({"path": path, "error": reason})
        writer.close()
        return EXIT_USAGE

    try:
        files = {"a": (images[0], read_file(images[0])), "b": (images[1], read_file(images[1]))}
    except InputError as exc:
        return failed(exc.path or images[0], exc.reason)
    status, _, body = client.post_files(mode.endpoint, files, params)
    if status != 200:
        reason = input_failure(status, body)
        if reason is None:
            raise_for(status, body, client)
        return failed(_json(body).get("path") or images[0], reason)
    record = json.loads(body)
    writer.write(record)
    writer.close()
    return 0 if record["result"]["same"] else 1


def run_remote(task: str, images: list[str], *, fmt=None, out=None, recursive: bool = False,
               skip_existing: bool = False, options: dict, save: dict | None = None, gallery=None,
               calibrate=None) -> int:
    """What cli.py calls when CVTOOL_SERVER is set: the command's exit code. `options`: the command's values by
    option name, of which the task table's `server` ones are sent (others are not the server's); `save` (or
    `options`): its `needs_out` flags (save_crops, save_txt, save_mask), whose files are written here and which
    need `out`; `gallery`, `calibrate` (or `options`): verify-face's modes."""
    from cvtool import tasks

    spec = tasks.spec(task)
    values = {**(save or {}), **options}
    for name, value in (("gallery", gallery), ("calibrate", calibrate)):
        if value is not None:
            values[name] = value
    fmt = getattr(fmt, "value", fmt)
    mode = MODES.get(spec.name, _one_mode)(spec, list(images or []), values, out)
    params = {**request_params(spec, values), **mode.params}
    if mode.pair:
        return run_verify(server_url(), mode, images, fmt=fmt, params=params)
    saves = {o.name: bool(values.get(o.name)) for o in spec.options if o.needs_out}
    return run_batch(server_url(), spec, mode, images, fmt=fmt, recursive=recursive, params=params, out=out,
                     saves=saves, skip_existing=skip_existing)
