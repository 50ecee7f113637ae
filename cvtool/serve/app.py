"""The HTTP API: one endpoint per task over cvtool.api's objects, which hold the models warm.

The endpoints are made from the task table (cvtool.tasks): each task's `server` options are its query parameters
(name, type, default, inclusive bounds and help, as the CLI has them; the OpenAPI schema shows them), one generic
body runs every single-image task, and per-call options reach the loaded object through its `with_options` (a
variant sharing the network). The server's own parameters (name, path, format, with_classes, gallery, path_a,
path_b) are declared here.

Everything a client sends becomes an RGB array (decoded here with the same reader and pixel limit as
the CLI, so a bad file gets the CLI's one-line reason under its own name) and is handed to the task
object; the answer is the object's record (`Result.to_dict()`), the one the CLI prints, with `path`
set to the uploaded file's name or the server path given. No model logic lives here.

Status codes: 200 a record; 422 this input is bad (the CLI's per-input error: an image that cannot be read, an
empty one included, as an upload or as the raw body); 400 the request cannot be honoured (unknown model, weights
not available, a bad option, a malformed body, a client that went away mid-body: the CLI's exit 2); 401 token
missing or wrong; 403 a server path refused; 404 no such endpoint; 405 a method the endpoint does not take; 413
body over --max-bytes (Content-Length or chunked); 500 a bug. Every answer but a record is one JSON object
`{"path", "error"}` with a one-line `error` (`path`: the file at fault, else null), made in one place
(`error_response`). Never a traceback.

/classify, /detect and /segment (untiled) requests for the same loaded variant are batched across requests
(batching.py, `--max-batch`, `--batch-wait-ms`); the other endpoints run each request on its own.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from cvtool import tasks
from cvtool.version import __version__
from cvtool.errors import CvtoolError, InputError, UsageError
from cvtool.serve.batching import Batcher
from cvtool.serve.faces import FaceCache, Upload
from cvtool.serve.registry import Registry
from cvtool.serve.security import Forbidden, TooLarge, confine, token_ok
from cvtool.serve.settings import Settings
from cvtool.tasks.options import CALL, CSV, FLOATS, LOAD, PATH, Option
from cvtool.tasks.spec import TaskSpec
from cvtool.tasks.verify_face import face_indices

TASKS = tuple(tasks.names())
VERIFY_FACE = tasks.spec("verify-face")
RECORD_HEADER = "x-cvtool-record"  # a PNG answer's record (/stylize, /segment?format=png)
CLASSES_HEADER = "x-cvtool-classes"  # /detect?with_classes=true: the model's class list


def log_line(message: str) -> None:
    sys.stderr.write(f"cvtool serve: {message}\n")
    sys.stderr.flush()


# -- errors as responses ---------------------------------------------------------------------------

def error_response(exc: BaseException, request: Request | None = None) -> JSONResponse:
    """The answer to anything a request raised: one JSON object `{"path", "error"}`, a one-line `error` (`path` when
    a file is at fault), the status the module docstring lists; never a traceback. The one place this is decided:
    the app's exception handlers and its logging middleware (for what no handler takes) both answer with it."""
    if isinstance(exc, CvtoolError):
        status = (422 if isinstance(exc, InputError) else 403 if isinstance(exc, Forbidden)
                  else 413 if isinstance(exc, TooLarge) else 400)  # 400: UsageError, WeightsError: cannot run as asked
        headers = {"connection": "close"} if status == 413 else None  # the rest of the body is never read
        return _error(status, exc.reason, exc.path, headers)
    if isinstance(exc, RequestValidationError):  # a query option FastAPI could not take as its type and bounds
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {err.get('msg')}")
        return _error(400, "; ".join(parts))
    if isinstance(exc, ClientDisconnect):  # nobody reads this answer; the log line says what happened
        return _error(400, "the client disconnected before sending the whole request body")
    if isinstance(exc, HTTPException):  # the router's: no such endpoint (404), a method it does not take (405)
        where = f"{request.method} {request.url.path}" if request is not None else "this request"
        if exc.status_code == 404:
            return _error(404, f"no endpoint {where}: see /docs for the API", headers=exc.headers)
        allowed = (exc.headers or {}).get("Allow")
        if exc.status_code == 405 and allowed:
            return _error(405, f"{where}: method not allowed; this endpoint takes {allowed}", headers=exc.headers)
        return _error(exc.status_code, f"{where}: {exc.detail}", headers=exc.headers)
    text = " ".join(str(exc).split())
    return _error(500, f"internal error: {type(exc).__name__}: {text}")


def _error(status: int, reason: str, path: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"path": path, "error": reason}, status_code=status, headers=headers)


# -- the request-size limit and the token, and the log line, as ASGI middleware ------------------

class Guard:
    """Token check (every path but /healthz), then the body limit: a Content-Length over --max-bytes is
    answered 413 before anything is read; a body that grows past it while streaming (chunked, or longer than
    its Content-Length) raises TooLarge from the body stream, which the app answers 413 (`error_response`)."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope["path"] != "/healthz" and not token_ok(headers.get("authorization"), self.settings.token):
            return await _send(send, 401, {"path": None, "error": "missing or wrong token: send "
                                           "'Authorization: Bearer TOKEN' (the server's --token / CVTOOL_TOKEN)"},
                               {"www-authenticate": "Bearer"})
        limit = self.settings.max_bytes
        too_large = f"request body over the server's limit of {limit} bytes (--max-bytes)"
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send(send, 413, {"path": None, "error": too_large}, {"connection": "close"})
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge(too_large)
            return message

        await self.app(scope, counted_receive, send)


class Logged:
    """One log line per request (client, method, path as sent, status, time; "client disconnected" when the
    client went away first), and error_response's 500 for an exception no handler of the app took. Plain ASGI:
    FastAPI's @app.middleware("http") (Starlette's BaseHTTPMiddleware) reads the body under a task group, which
    wraps what the body stream raises (TooLarge: a chunked body over --max-bytes) in an ExceptionGroup that no
    handler matches (it was a 500)."""

    def __init__(self, app, log: bool = True):
        self.app, self.log = app, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status, gone = None, False

        async def watched_receive():
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def watched_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except Exception as exc:  # a bug: answered in one line, if no answer had started
            if status is None:
                await error_response(exc)(scope, watched_receive, watched_send)
            else:
                log_line(error_response(exc).body.decode())
        if self.log:
            client = scope["client"][0] if scope.get("client") else "-"
            path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]  # percent-encoded: one line
            log_line(f"{client} {scope['method']} {path} {status or '-'} {(time.perf_counter() - start) * 1000:.1f} ms"
                     + (" (client disconnected)" if gone else ""))


async def _send(send, status: int, body: dict, headers: dict | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


# -- inputs ----------------------------------------------------------------------------------------

@dataclass
class Image:
    data: bytes  # the encoded file
    name: str  # how records and errors name it: the upload's file name, or the server path as given


async def _form(request: Request):
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return None
    if not hasattr(request.state, "form"):
        try:
            request.state.form = await request.form()
        except (CvtoolError, ClientDisconnect):  # a body over --max-bytes; a client gone mid-body
            raise
        except Exception as exc:  # malformed multipart
            raise UsageError(f"could not read the multipart body: {getattr(exc, 'detail', exc)}") from None
    return request.state.form


async def take_image(request: Request, settings: Settings, part: str, path_field: str, *, raw_ok: bool,
                     name: str | None = None) -> Image:
    """The image a request carries: the multipart part `part` (an upload), a server path in `path_field`
    (query or form field; needs --allow-paths), or else the raw body (single-image endpoints). An empty upload
    or raw body is the CLI's empty file: this input is bad (422), not a request without an image (400)."""
    form = await _form(request)
    server_path = request.query_params.get(path_field)
    if form is not None:
        value = form.get(part)
        if isinstance(value, UploadFile):
            data = await value.read()
            return _nonempty(Image(data, value.filename or name or f"<{part}>"))
        if isinstance(value, str) and value:
            raise UsageError(f"'{part}' must be a file upload; a server path goes in '{path_field}'")
        form_path = form.get(path_field)
        if isinstance(form_path, str) and form_path:
            server_path = form_path
    if server_path:
        real = await run_in_threadpool(confine, server_path, settings.allow_paths)
        from cvtool.io.image import _read_bytes

        try:
            data = await run_in_threadpool(_read_bytes, real)
        except InputError as exc:
            raise InputError(exc.reason, server_path) from None
        return Image(data, server_path)
    if raw_ok and form is None:
        return _nonempty(Image(await request.body(), name or "<bytes>"))
    where = f"a multipart file '{part}', a server path '{path_field}'" + (", or the image as the request body"
                                                                          if raw_ok else "")
    raise UsageError(f"no image in the request: send {where}")


def _nonempty(image: Image) -> Image:
    if not image.data:
        raise InputError("empty file (0 bytes)", image.name)
    return image


def decode(image: Image, max_pixels: int):
    """The CLI's reader on the uploaded bytes: same decoding, same limits, same messages, under the file's name."""
    from cvtool.io.image import decode_image

    return decode_image(image.data, image.name, max_pixels=max_pixels)


# -- the endpoints' parameters, from the task table ------------------------------------------------

LIMIT = "max_pixels"  # a request's pixel limit: it may lower the server's --max-pixels for itself, never raise it
KEY_HEAD = ("model", "weights", "backend")  # a registry key's first fields (cvtool.serve.registry), then the rest
_ANNOTATIONS = {int: int, float: float, str: str, bool: bool, PATH: str, CSV: str, FLOATS: str}
_SERVER_FILE = " On the server: a file given to --preload, or a path under --allow-paths."
_TABLE = object()  # query_parameter's default: the option's own


def query_parameter(option: Option, *, name: str | None = None, default: Any = _TABLE, required: bool = False,
                    description: str | None = None, deprecated: bool = False) -> inspect.Parameter:
    """An option of the task table as a query parameter: its type, default, inclusive bounds (ge/le) and help;
    a float refuses nan and inf as not finite ("conf: Input should be a finite number", where pydantic would
    take them and say only that nan is not <= 1); a comma-separated option arrives as its text."""
    annotation: Any = _ANNOTATIONS[option.type]
    if default is _TABLE:
        default = option.default
    if isinstance(default, (tuple, list)):
        default = ",".join(str(v) for v in default)
    if default is None and annotation is not bool and not required:
        annotation = Optional[annotation]
    bounds: dict[str, Any] = {}
    if option.low is not None:
        bounds["gt" if option.exclusive else "ge"] = option.low
    if option.high is not None:
        bounds["lt" if option.exclusive else "le"] = option.high
    if option.type is float:
        bounds["allow_inf_nan"] = False
    text = description if description is not None else option.help + (_SERVER_FILE if option.type == PATH else "")
    query = Query(... if required else default, description=text or None, deprecated=deprecated or None, **bounds)
    return inspect.Parameter(name or option.name, inspect.Parameter.KEYWORD_ONLY, default=query,
                             annotation=annotation)


def _own(name: str, annotation, default, description: str) -> inspect.Parameter:
    """One of the server's own parameters (not a task option)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=Query(default, description=description))


NAME = _own("name", Optional[str], None, "How the record (and an error) names the image; default: the upload's file "
            "name, else <bytes>")
IMAGE_PATH = _own("path", Optional[str], None, "The image as a server path under --allow-paths, instead of an upload")
WITH_CLASSES = _own("with_classes", bool, False, "Also the model's class list, in the X-Cvtool-Classes header (JSON)")
GALLERY = _own("gallery", str, ..., "A --gallery NAME the server was started with, or a directory under "
               "--allow-paths")
PATH_A = _own("path_a", Optional[str], None, "Image A as a server path under --allow-paths, instead of the upload 'a'")
PATH_B = _own("path_b", Optional[str], None, "Image B as a server path under --allow-paths, instead of the upload 'b'")


# a task endpoint's own parameters besides its task's options and the image's (name, path), and its words;
# a `png` task's endpoint also takes `format`: its default, and what each answer is
EXTRAS = {"detect": (WITH_CLASSES,)}
FORMATS = {"segment": ("json", "json: the record; png: the class mask"),
           "stylize": ("png", "png: the stylised image; json: the record only")}
REQUIRED = {"stylize": ("model",)}  # the server runs feed-forward networks only: /stylize needs one
# verify-face's options that pick a mode (here the endpoint does) or belong to the other one
LEFT_OUT = {"/verify-face": ("gallery", "calibrate"), "/identify": ("gallery", "calibrate", "face_index")}
DOCS = {
    "classify": "Top-k labels for one image: the record of `cvtool classify IMAGE --top-k K -f json`.",
    "detect": "Boxes, labels and scores for one image: the record of `cvtool detect IMAGE -f json`. With "
              "`with_classes=true` the model's class list (index order) comes in the `X-Cvtool-Classes` header as a "
              "JSON list: what `--out DIR --save-txt` writes to DIR/classes.txt.",
    "segment": "A class per pixel for one image: the record of `cvtool segment IMAGE -f json` (class pixel counts). "
               "`format=png`: the class of every pixel as an 8-bit palette PNG (pixel value = class index, the bytes "
               "`--out` writes as NAME.mask.png; --classes applied), its record in the `X-Cvtool-Record` header. "
               "Batched across requests, except with `tile` (one image's tiles per forward pass). `batch_size`, the "
               "old name of `tile_batch`, is still taken (answered with `Deprecation` and `Warning` headers).",
    "stylize": "The stylised image as a PNG (lossless: the pixels `cvtool stylize --model` writes), its record in the "
               "`X-Cvtool-Record` header (JSON); `format=json`: the record only.",
    "/verify-face": "Are the faces in A and B the same person? Multipart files `a` and `b` (or server paths "
                    "`path_a`, `path_b`): the record of `cvtool verify-face A B -f json`. The faces found in each "
                    "photo are remembered by the sha256 of its bytes (see /models `face_cache`), so a reference "
                    "photo sent again is not searched again.",
    "/identify": "Every face in one image named after the nearest known person, or \"unknown\": the record of "
                 "`cvtool verify-face --gallery KNOWN IMAGE -f json`.",
    "/detect/categories": "The detector's COCO categories, `[{\"index\", \"id\", \"name\"}]` by class index: what "
                          "`cvtool detect -f coco` lists (the thin client asks once, before its batch).",
}


def endpoint_options(spec: TaskSpec, path: str | None = None) -> list[Option]:
    """The task table's options an endpoint takes as query parameters: its task's `server` ones."""
    left_out = LEFT_OUT.get(path or spec.endpoint or "", ())
    return [o for o in spec.options.select(route="server") if o.name not in left_out]


def signature(options: list[Option], extras=(), *, settings: Settings, required=()) -> inspect.Signature:
    """A handler's signature, as FastAPI reads it (`__signature__`): the request, the options (a deprecated alias
    beside its option), then the server's own parameters. `max_pixels` defaults to the server's own limit."""
    params = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    for option in options:
        if option.name == LIMIT:
            params.append(query_parameter(option, default=settings.max_pixels, description=option.help + " At most "
                                          "the server's --max-pixels (the default)."))
        else:
            params.append(query_parameter(option, required=option.name in required))
        params += [query_parameter(option, name=alias, default=None, deprecated=True,
                                   description=f"The old name of {option.name} (deprecated): use {option.name}.")
                   for alias in option.aliases]
    return inspect.Signature([*params, *extras])


def renamed(options: list[Option], request: Request, values: dict) -> dict:
    """An old name's value moved to its option (the headers that say so to the client); both given: a 400."""
    headers = {}
    for option in options:
        for alias in option.aliases:
            value = values.pop(alias, None)
            if value is None:
                continue
            if option.name in request.query_params:
                raise UsageError(f"give {option.name} or {alias} (its deprecated name), not both")
            values[option.name] = value
            headers.update({"deprecation": "true", "warning": f'299 - "{alias} is deprecated; use {option.name}"'})
    return headers


def _key_options(spec: TaskSpec) -> list[Option]:
    """The options whose values decide what is loaded (a registry key): the LOAD ones; the pixel limit is the
    server's (the request's is applied at decoding)."""
    return [o for o in spec.options.select(stage=LOAD, route="server") if o.name != LIMIT]


def _call_values(spec: TaskSpec, values: dict) -> dict:
    """A request's per-call options (`with_options`'), lists where the table's are comma-separated."""
    return {o.name: o.parse_text(values[o.name]) for o in spec.options.select(stage=CALL, route="server")
            if o.name in values and o.name != LIMIT}


def _with_options(obj, options: dict):
    return obj.with_options(**options)


# -- the application -------------------------------------------------------------------------------

class Server:
    """The registry plus how each task's objects are built from request options (the task table's)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = Registry(settings.memory_budget, on_event=log_line if settings.log else None)
        self.galleries: dict[tuple, Any] = {}
        self.faces = FaceCache(settings.face_cache)
        self.batcher = Batcher(settings.max_batch, settings.batch_wait_ms, settings.max_batch_pixels)
        self._gallery_lock = threading.Lock()
        self.preloaded_weights: set[str] = set()
        self.started = time.time()
        self.ready = False

    def load_all(self) -> None:
        """--preload and --gallery, before the first request is taken."""
        for text in self.settings.preload:
            self.preload(text)
        for name, root in self.settings.galleries.items():
            entry = self.entry(VERIFY_FACE.name, {})  # the verifier the CLI's defaults ask for
            known = self.gallery(entry, name)
            log_line(f"gallery {name}: {len(known.names)} photo(s) of {len(set(known.names))} people from {root}")
        self.ready = True

    # which file a client-given weights/model path means
    def server_file(self, given: str | None, what: str) -> str | None:
        if given is None or given in self.preloaded_weights:
            return given
        return str(confine(given, self.settings.allow_paths, what=what))

    def entry(self, task: str, values: dict):
        """The registry's entry for the options in `values` that decide what loads (the table's defaults for those
        not given); a file option confined to --allow-paths unless preloaded."""
        spec = tasks.spec(task)
        options: dict[str, Any] = {}
        for option in _key_options(spec):
            value = option.parse_text(values.get(option.name, option.default))
            if option.type == PATH:
                value = self.server_file(value, option.name)
            elif option.type is float and value is not None:
                value = float(value)
            options[option.name] = value
        key = (spec.name, *(options.get(name) for name in KEY_HEAD),
               tuple((k, v) for k, v in options.items() if k not in KEY_HEAD))
        return self.registry.get(key, lambda: self._build(spec, options))

    def task_object(self, task: str, values: dict):
        """The loaded object for a request, its per-call options applied (`with_options`: a variant sharing the
        network, made once per distinct values)."""
        entry = self.entry(task, values)
        return self.registry.variant(entry, _call_values(tasks.spec(task), values), _with_options)

    def _build(self, spec: TaskSpec, options: dict):
        return spec.api_class()(**options, device=self.settings.device, max_pixels=self.settings.max_pixels)

    def preload(self, text: str) -> None:
        """--preload TASK[:MODEL]: a model name, or a weights file (the network file, for a task whose model is one),
        loaded under the key the CLI's defaults ask for, so that its first call finds it loaded."""
        task, _, target = text.partition(":")
        if task not in TASKS:
            raise UsageError(f"--preload {text}: unknown task {task!r}; one of {', '.join(TASKS)} (TASK:MODEL)")
        spec = tasks.spec(task)
        names = spec.options.names(route="server")
        values: dict[str, Any] = {}
        if target:
            is_file = Path(target).suffix in (".pt", ".pth", ".onnx") or "/" in target
            name = "weights" if is_file and "weights" in names else "model"
            if spec.options[name].type == PATH:
                self.preloaded_weights.add(target)
            values[name] = target
        if spec.options["model"].type == PATH and "model" not in values:
            raise UsageError(f"--preload {text}: {task} needs a network file ({task}:runs/NAME/best.pt)")
        self.entry(task, values)

    def gallery(self, verifier_entry, name_or_path: str):
        """A gallery by --gallery NAME, or a server directory (confined); loaded once per verifier."""
        root = self.settings.galleries.get(name_or_path)
        if root is None:
            root = str(confine(name_or_path, self.settings.allow_paths, what="gallery"))
        key = (verifier_entry.key, root)
        with self._gallery_lock:
            known = self.galleries.get(key)
            if known is None:
                known = verifier_entry.obj.gallery(root, warn=log_line if self.settings.log else None)
                self.galleries[key] = known
        return known


def _limit(server: Server, max_pixels: int | None) -> int:
    """A client may lower the pixel limit for its request, never raise it above the server's."""
    return min(max_pixels, server.settings.max_pixels) if max_pixels else server.settings.max_pixels


def create_app(settings: Settings, server: Server | None = None) -> FastAPI:
    """The FastAPI application (without the token/size guard: see `asgi_app`). `server` may come preloaded."""
    server = server or Server(settings)

    async def lifespan(app):
        if not server.ready:
            try:
                await run_in_threadpool(server.load_all)
            except CvtoolError as exc:  # a worker process of --workers N: say why in one line and stop
                log_line(str(exc))
                raise SystemExit(2) from None
        log_line(f"ready on http://{settings.host}:{settings.port} (docs at /docs)")
        yield
        await server.batcher.close()

    app = FastAPI(title="cvtool serve", version=__version__, lifespan=lifespan,
                  description="cvtool's models kept warm. Each endpoint takes one image (a multipart upload, the raw "
                              "request body, or a server path under --allow-paths) and answers the JSON record "
                              "`cvtool TASK --format json` prints for it. Where `--out` needs pixels a record does not "
                              "hold (/stylize's image, /segment?format=png's class mask), the answer is a lossless PNG "
                              "of them and the record travels in the `X-Cvtool-Record` header (JSON, ASCII); "
                              "/detect?with_classes=true adds the model's class list in `X-Cvtool-Classes` (JSON), "
                              "for `--save-txt`'s classes.txt. The CLI's thin client (CVTOOL_SERVER) writes its "
                              "--out files from these on its own machine, as a local run writes them. Each task's "
                              "query options are its CLI options (the task table, cvtool.tasks): same names (with "
                              "underscores), defaults and ranges.\n\n"
                              "Batching: /classify, /detect and /segment requests for the same model and options "
                              "that arrive within `--batch-wait-ms` of each other go through the network as one "
                              "batch of up to `--max-batch` (1: each alone); each answer is the record the request "
                              "gets alone, and a bad input fails only its own request. Run one request at a time: "
                              "/segment with `tile` (one image's tiles per pass), /stylize (one image per pass, at "
                              "its own size), /verify-face and /identify (the face detector takes one photo at a "
                              "time). /healthz and /models count the batches (`batching`).")
    app.state.server = server
    # python-multipart logs a line of its own for a malformed body: the 400 answer and the log line say it
    logging.getLogger("python_multipart").setLevel(logging.ERROR)

    async def _answer_error(request, exc):
        return error_response(exc, request)

    # FastAPI's own answers to these ({"detail": ...}) would not be the one-line shape every client reads
    for kind in (CvtoolError, RequestValidationError, HTTPException, ClientDisconnect):
        app.add_exception_handler(kind, _answer_error)
    app.add_middleware(Logged, log=settings.log)

    async def answer(fn, *args) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(fn, *args))

    async def batched(task: str, request: Request, make_obj, max_pixels: int, name: str | None):
        """The request's image, and the task object's Result for it, run in a batch with other requests for the
        same object: received, decoded and preprocessed first, in a worker thread (a bad file fails here,
        alone), then queued (batches of `task` wait for requests still on their way here)."""
        with server.batcher.coming(task):
            image = await take_image(request, settings, "file", "path", raw_ok=True, name=name)

            def prepare():
                obj = make_obj()
                return obj, obj.prepare(decode(image, max_pixels))

            obj, prepared = await run_in_threadpool(prepare)
        return image, obj, await server.batcher.submit(obj, prepared)

    def named(result, image: Image) -> dict:
        record = result.to_dict()
        record["path"] = image.name
        return record

    def handler(name: str, fn, sig: inspect.Signature, doc: str):
        """`fn(request, values)` as a FastAPI endpoint whose parameters are `sig`'s."""
        async def endpoint(request: Request, **values):
            return await fn(request, values)

        endpoint.__name__ = name
        endpoint.__doc__ = doc
        endpoint.__signature__ = sig  # type: ignore[attr-defined]
        return endpoint

    @app.get("/healthz")
    async def healthz():
        """Liveness: always 200 while the server runs (no token needed)."""
        return {"status": "ok", "version": __version__, "loaded": len(server.registry.describe()),
                "uptime_s": round(time.time() - server.started, 1), "face_cache": server.faces.stats(),
                "batching": server.batcher.stats()}

    @app.get("/models")
    async def models():
        """The loaded models (LRU order, oldest first), their estimated memory, and the budget."""
        return {"loaded": server.registry.describe(), "used_bytes": server.registry.used_bytes,
                "budget_bytes": server.registry.budget_bytes, "galleries": sorted(settings.galleries),
                "face_cache": server.faces.stats(), "batching": server.batcher.stats()}

    def task_endpoint(spec: TaskSpec):
        """One image in, its record out (a `png` task's pixels with `format=png`); batched across requests where
        the task is `batched` (not with `tile`: one image's tiles per forward pass)."""
        options = endpoint_options(spec)

        async def run(request: Request, values: dict) -> Response:
            headers = renamed(options, request, values)
            try:
                response = await run_task(request, values)
            except CvtoolError as exc:
                if not headers:
                    raise
                response = error_response(exc, request)
            response.headers.update(headers)
            return response

        async def run_task(request: Request, values: dict) -> Response:
            fmt = values.get("format", "json")
            if fmt not in ("png", "json"):
                raise UsageError(f"format {fmt!r}: png or json")
            limit, name = _limit(server, values.get(LIMIT)), values.get("name")

            def variant():
                return server.task_object(spec.name, values)

            if spec.batched and values.get("tile") is None:
                image, obj, result = await batched(spec.name, request, variant, limit, name)
            else:  # one request at a time (tiled: one image's tiles per forward pass)
                image = await take_image(request, settings, "file", "path", raw_ok=True, name=name)

                def work():
                    obj = variant()
                    return obj, obj(decode(image, limit))

                obj, result = await run_in_threadpool(work)
            record, png = named(result, image), None
            if fmt == "png":
                png = await run_in_threadpool(result.png)  # SegmentResult / StylizeResult
            headers = {CLASSES_HEADER: json.dumps(list(obj.classes))} if values.get("with_classes") else None
            return _record_answer(record, png, headers)

        extras = EXTRAS.get(spec.name, ())
        if spec.png:
            default, description = FORMATS[spec.name]
            extras = (*extras, _own("format", str, default, description))
        sig = signature(options, (*extras, NAME, IMAGE_PATH), settings=settings, required=REQUIRED.get(spec.name, ()))
        # a task without words of its own here is described by its task table's summary
        app.post(spec.endpoint)(handler(spec.name.replace("-", "_"), run, sig, DOCS.get(spec.name, spec.summary)))

    for spec in tasks.specs():
        if spec.endpoint is not None and spec is not VERIFY_FACE:
            task_endpoint(spec)

    detect = tasks.spec("detect")

    async def detect_categories(request: Request, values: dict):
        def work():
            entry = server.entry(detect.name, values)
            return {"categories": [{"index": i, **c} for i, c in entry.obj.coco_categories.items()]}

        return await answer(work)

    app.get("/detect/categories")(handler("detect_categories", detect_categories,  # what loads the detector
                                          signature(_key_options(detect), settings=settings),
                                          DOCS["/detect/categories"]))

    async def verify_face(request: Request, values: dict):
        a = await take_image(request, settings, "a", "path_a", raw_ok=False)
        b = await take_image(request, settings, "b", "path_b", raw_ok=False)
        index_a, index_b = face_indices(values.get("face_index"), where="face_index")

        def work():
            from cvtool.serve import faces

            entry = server.entry(VERIFY_FACE.name, values)
            # the local CLI's verify over the cache: each image is decoded (a first, then b) only when its
            # bytes are new, and named in the record and any error as the client named it
            return faces.verify(entry.obj, server.faces, entry.key, Upload(a.data, a.name), Upload(b.data, b.name),
                                index_a=index_a, index_b=index_b, max_pixels=_limit(server, values.get(LIMIT)))

        return await answer(work)

    async def identify(request: Request, values: dict):
        image = await take_image(request, settings, "file", "path", raw_ok=True, name=values.get("name"))

        def work():
            entry = server.entry(VERIFY_FACE.name, values)
            known = server.gallery(entry, values["gallery"])
            return named(entry.obj.identify(decode(image, _limit(server, values.get(LIMIT))), known), image)

        return await answer(work)

    for path, fn, extras in (("/verify-face", verify_face, (PATH_A, PATH_B)),
                             ("/identify", identify, (GALLERY, NAME, IMAGE_PATH))):
        sig = signature(endpoint_options(VERIFY_FACE, path), extras, settings=settings)
        app.post(path)(handler(path.strip("/").replace("-", "_"), fn, sig, DOCS[path]))

    return app


def _record_answer(record: dict, png: bytes | None, headers: dict | None = None) -> Response:
    """The record as JSON, or the PNG with the record in the X-Cvtool-Record header (JSON, ASCII-escaped)."""
    if png is None:
        return JSONResponse(record, headers=headers)
    return Response(png, media_type="image/png", headers={**(headers or {}), RECORD_HEADER: json.dumps(record)})


def asgi_app(settings: Settings, server: Server | None = None):
    """What uvicorn runs: the application behind the token and body-size guard."""
    return Guard(create_app(settings, server), settings)


def app_from_env():
    """For `--workers N`: each uvicorn worker process builds its app from the settings in CVTOOL_SERVE_SETTINGS."""
    import os

    return asgi_app(Settings.from_json(os.environ["CVTOOL_SERVE_SETTINGS"]))


def serve(settings: Settings, *, workers: int = 1) -> None:
    """Run until SIGTERM/SIGINT; uvicorn then stops accepting and lets in-flight requests finish."""
    import os

    import uvicorn

    from cvtool.serve.security import check_binding

    check_binding(settings.host, settings.token)
    config = dict(host=settings.host, port=settings.port, access_log=False, log_level="warning",
                  timeout_graceful_shutdown=60, lifespan="on")
    if workers > 1:  # each worker process loads its own models (in its lifespan)
        os.environ["CVTOOL_SERVE_SETTINGS"] = settings.to_json()
        uvicorn.run("cvtool.serve.app:app_from_env", factory=True, workers=workers, **config)
        return
    server = Server(settings)
    server.load_all()  # a model that cannot be had stops the command here, in one line (exit 2)
    uvicorn.run(asgi_app(settings, server), **config)
