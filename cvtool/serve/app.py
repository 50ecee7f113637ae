"""The HTTP API: one endpoint per task over cvtool.api's objects, which hold the models warm.

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

from cvtool.version import __version__
from cvtool.errors import CvtoolError, InputError, UsageError
from cvtool.models.dlib.mmod import DEFAULT_MIN_FACE  # `verify-face --min-face`'s default (NumPy only)
from cvtool.serve.batching import Batcher
from cvtool.serve.faces import FaceCache, Upload
from cvtool.serve.registry import Registry, with_attributes
from cvtool.serve.security import Forbidden, TooLarge, confine, token_ok
from cvtool.serve.settings import Settings

TASKS = ("classify", "detect", "segment", "stylize", "verify-face")


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


# -- the application -------------------------------------------------------------------------------

class Server:
    """The registry plus how each task's objects are built from request options."""

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
        for spec in self.settings.preload:
            self.preload(spec)
        for name, root in self.settings.galleries.items():
            entry = self.entry("verify-face", None, None, DEFAULT_BACKEND, _face_load_options())
            known = self.gallery(entry, name)
            log_line(f"gallery {name}: {len(known.names)} photo(s) of {len(set(known.names))} people from {root}")
        self.ready = True

    # which file a client-given weights/model path means
    def server_file(self, given: str | None, what: str) -> str | None:
        if given is None or given in self.preloaded_weights:
            return given
        return str(confine(given, self.settings.allow_paths, what=what))

    def entry(self, task: str, model: str | None, weights: str | None, backend: str, load_options: tuple = ()):
        key = (task, model, weights, backend, load_options)
        return self.registry.get(key, lambda: self._build(task, model, weights, backend, dict(load_options)))

    def _build(self, task, model, weights, backend, options):
        import cvtool.api as api

        common = {"device": self.settings.device, "backend": backend, "max_pixels": self.settings.max_pixels}
        if task == "classify":
            return api.Classifier(model, weights=weights, **common)
        if task == "detect":
            return api.Detector(model, weights=weights, **common)
        if task == "segment":
            return api.Segmenter(model, weights=weights, **common)
        if task == "stylize":
            return api.Stylizer(model, **common)
        if task == "verify-face":
            return api.FaceVerifier(model, weights=weights, **options, **common)
        raise UsageError(f"unknown task {task!r}; one of {', '.join(TASKS)}")

    def preload(self, spec: str) -> None:
        task, _, target = spec.partition(":")
        if task not in TASKS:
            raise UsageError(f"--preload {spec}: unknown task {task!r}; one of {', '.join(TASKS)} (TASK:MODEL)")
        model, weights = (target or None), None
        if target and (Path(target).suffix in (".pt", ".pth", ".onnx") or "/" in target):
            self.preloaded_weights.add(target)
            model, weights = (target, None) if task == "stylize" else (None, target)
        if task == "stylize" and model is None:
            raise UsageError(f"--preload {spec}: stylize needs a network file (stylize:runs/NAME/best.pt)")
        # the key the CLI's defaults ask for, so that its first call finds it loaded
        if task == "verify-face":
            self.entry(task, model, weights, DEFAULT_BACKEND, _face_load_options())
        else:
            self.entry(task, model, weights, STYLIZE_BACKEND if task == "stylize" else DEFAULT_BACKEND)

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


DEFAULT_BACKEND = "auto"  # the CLI's --backend default (classify, detect, segment, verify-face): cached ONNX, else torch
STYLIZE_BACKEND = "torch"  # stylize's


def _face_load_options(detector: str = "mmod", upsample: int | None = None, threshold: float | None = None,
                       min_face: float = DEFAULT_MIN_FACE) -> tuple:
    return (("detector", detector), ("upsample", upsample), ("threshold", threshold), ("min_face", float(min_face)))


def _csv(text: str | None) -> list[str] | None:
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    return parts or None


def _finite(default, **bounds):
    """A float query option within `bounds`; nan and inf are refused as not finite ("conf: Input should be a
    finite number"), where pydantic would take them as floats and say only that nan is not <= 1."""
    return Query(default, allow_inf_nan=False, **bounds)


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
                              "--out files from these on its own machine, as a local run writes them.\n\n"
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

    @app.post("/classify")
    async def classify(request: Request, model: Optional[str] = None, weights: Optional[str] = None,
                       top_k: int = Query(5, ge=1), backend: str = DEFAULT_BACKEND,
                       max_pixels: Optional[int] = Query(None, ge=1),
                       name: Optional[str] = None, path: Optional[str] = None):
        """Top-k labels for one image: the record of `cvtool classify IMAGE --top-k K -f json`."""
        def variant():
            entry = server.entry("classify", model, server.server_file(weights, "weights"), backend)
            return server.registry.variant(entry, {"top_k": top_k}, _same_or(with_attributes))

        image, _, result = await batched("classify", request, variant, _limit(server, max_pixels), name)
        return JSONResponse(named(result, image))

    @app.post("/detect")
    async def detect(request: Request, model: Optional[str] = None, weights: Optional[str] = None,
                     conf: Optional[float] = _finite(None, ge=0, le=1), iou: float = _finite(0.45, ge=0, le=1),
                     classes: Optional[str] = None, max_det: int = Query(300, ge=1), keypoints: bool = False,
                     backend: str = DEFAULT_BACKEND, max_pixels: Optional[int] = Query(None, ge=1),
                     with_classes: bool = Query(False, description="Also the model's class list, in the "
                                                "X-Cvtool-Classes header (JSON)"),
                     name: Optional[str] = None, path: Optional[str] = None):
        """Boxes, labels and scores for one image: the record of `cvtool detect IMAGE -f json`. With
        `with_classes=true` the model's class list (index order) comes in the `X-Cvtool-Classes` header as a
        JSON list: what `--out DIR --save-txt` writes to DIR/classes.txt."""
        def variant():
            from cvtool.api import default_conf

            entry = server.entry("detect", model, server.server_file(weights, "weights"), backend)
            options = {"conf": conf if conf is not None else default_conf(entry.obj.loaded), "iou": iou,
                       "keep_classes": _csv(classes), "max_det": max_det, "keypoints": keypoints}
            return server.registry.variant(entry, options, _same_or(with_attributes))

        image, obj, result = await batched("detect", request, variant, _limit(server, max_pixels), name)
        headers = {"x-cvtool-classes": json.dumps(list(obj.classes))} if with_classes else None
        return JSONResponse(named(result, image), headers=headers)

    @app.get("/detect/categories")
    async def detect_categories(model: Optional[str] = None, weights: Optional[str] = None,
                                backend: str = DEFAULT_BACKEND):
        """The detector's COCO categories, `[{"index", "id", "name"}]` by class index: what `cvtool detect -f
        coco` lists (the thin client asks once, before its batch)."""
        def work():
            entry = server.entry("detect", model, server.server_file(weights, "weights"), backend)
            return {"categories": [{"index": i, **c} for i, c in entry.obj.coco_categories.items()]}

        return await answer(work)

    @app.post("/segment")
    async def segment(request: Request, model: Optional[str] = None, weights: Optional[str] = None,
                      alpha: float = _finite(0.5, ge=0, le=1), classes: Optional[str] = None,
                      tile: Optional[int] = Query(None, ge=16), overlap: int = Query(32, ge=0),
                      batch_size: int = Query(4, ge=1), backend: str = DEFAULT_BACKEND,
                      max_pixels: Optional[int] = Query(None, ge=1),
                      threshold: Optional[float] = _finite(None, gt=0, lt=1, description="Two-class models: "
                                                         "class 1's probability threshold (default: the model's)"),
                      format: str = Query("json", description="json: the record; png: the class mask"),
                      name: Optional[str] = None, path: Optional[str] = None):
        """A class per pixel for one image: the record of `cvtool segment IMAGE -f json` (class pixel counts).
        `format=png`: the class of every pixel as an 8-bit palette PNG (pixel value = class index, the bytes
        `--out` writes as NAME.mask.png; --classes applied), its record in the `X-Cvtool-Record` header.
        Batched across requests, except with `tile` (one image's tiles per forward pass)."""
        if format not in ("png", "json"):
            raise UsageError(f"format {format!r}: png or json")

        def variant():
            entry = server.entry("segment", model, server.server_file(weights, "weights"), backend)
            options = {"alpha": alpha, "keep_classes": _csv(classes), "tile": tile, "overlap": overlap,
                       "tile_batch": batch_size, "threshold": threshold}
            return server.registry.variant(entry, options, _same_or(with_attributes))

        def answer_of(result, image: Image) -> tuple[dict, bytes | None]:
            if format == "json":
                return named(result, image), None
            from cvtool.io.render import indexed_png

            return named(result, image), indexed_png(result.mask)

        if tile is None:
            image, _, result = await batched("segment", request, variant, _limit(server, max_pixels), name)
            record, png = await run_in_threadpool(answer_of, result, image)
        else:  # tiled: one image's tiles per forward pass, nothing to batch across requests
            image = await take_image(request, settings, "file", "path", raw_ok=True, name=name)
            record, png = await run_in_threadpool(
                lambda: answer_of(variant()(decode(image, _limit(server, max_pixels))), image))
        return _record_answer(record, png)

    @app.post("/stylize")
    async def stylize(request: Request, model: str = Query(..., description="A feed-forward network from `cvtool "
                                                             "train style` (preloaded, or a path under --allow-paths)"),
                      size: Optional[int] = Query(None, ge=16), tile: Optional[int] = Query(None, ge=16),
                      overlap: int = Query(32, ge=0), backend: str = STYLIZE_BACKEND, format: str = "png",
                      max_pixels: Optional[int] = Query(None, ge=1), name: Optional[str] = None,
                      path: Optional[str] = None):
        """The stylised image as a PNG (lossless: the pixels `cvtool stylize --model` writes), its record in the
        `X-Cvtool-Record` header (JSON); `format=json`: the record only."""
        if format not in ("png", "json"):
            raise UsageError(f"format {format!r}: png or json")
        image = await take_image(request, settings, "file", "path", raw_ok=True, name=name)

        def work():
            import cv2

            entry = server.entry("stylize", server.server_file(model, "model"), None, backend)
            obj = server.registry.variant(entry, {"size": size, "tile": tile, "overlap": overlap},
                                          _same_or(with_attributes))
            result = obj(decode(image, _limit(server, max_pixels)))
            record = named(result, image)
            if format == "json":
                return record, None
            ok, png = cv2.imencode(".png", result.stylized[..., ::-1])
            return record, png.tobytes()

        record, png = await run_in_threadpool(work)
        return _record_answer(record, png)

    @app.post("/verify-face")
    async def verify_face(request: Request, model: Optional[str] = None, weights: Optional[str] = None,
                          threshold: Optional[float] = _finite(None, ge=0), detector: str = "mmod",
                          upsample: Optional[int] = Query(None, ge=0, le=3),
                          min_face: float = _finite(DEFAULT_MIN_FACE, ge=8), face_index: Optional[str] = None,
                          backend: str = DEFAULT_BACKEND, max_pixels: Optional[int] = Query(None, ge=1),
                          path_a: Optional[str] = None, path_b: Optional[str] = None):
        """Are the faces in A and B the same person? Multipart files `a` and `b` (or server paths `path_a`,
        `path_b`): the record of `cvtool verify-face A B -f json`. The faces found in each photo are
        remembered by the sha256 of its bytes (see /models `face_cache`), so a reference photo sent again
        is not searched again."""
        a = await take_image(request, settings, "a", "path_a", raw_ok=False)
        b = await take_image(request, settings, "b", "path_b", raw_ok=False)
        index_a, index_b = _face_indices(face_index)

        def work():
            from cvtool.serve import faces

            entry = server.entry("verify-face", model, server.server_file(weights, "weights"), backend,
                                 _face_load_options(detector, upsample, threshold, min_face))
            # the local CLI's verify over the cache: each image is decoded (a first, then b) only when its
            # bytes are new, and named in the record and any error as the client named it
            return faces.verify(entry.obj, server.faces, entry.key, Upload(a.data, a.name), Upload(b.data, b.name),
                                index_a=index_a, index_b=index_b, max_pixels=_limit(server, max_pixels))

        return await answer(work)

    @app.post("/identify")
    async def identify(request: Request, gallery: str = Query(..., description="A --gallery NAME the server was "
                                                              "started with, or a directory under --allow-paths"),
                       model: Optional[str] = None, weights: Optional[str] = None,
                       threshold: Optional[float] = _finite(None, ge=0), detector: str = "mmod",
                       upsample: Optional[int] = Query(None, ge=0, le=3),
                       min_face: float = _finite(DEFAULT_MIN_FACE, ge=8), backend: str = DEFAULT_BACKEND,
                       max_pixels: Optional[int] = Query(None, ge=1), name: Optional[str] = None,
                       path: Optional[str] = None):
        """Every face in one image named after the nearest known person, or "unknown": the record of
        `cvtool verify-face --gallery KNOWN IMAGE -f json`."""
        image = await take_image(request, settings, "file", "path", raw_ok=True, name=name)

        def work():
            entry = server.entry("verify-face", model, server.server_file(weights, "weights"), backend,
                                 _face_load_options(detector, upsample, threshold, min_face))
            known = server.gallery(entry, gallery)
            return named(entry.obj.identify(decode(image, _limit(server, max_pixels)), known), image)

        return await answer(work)

    return app


def _record_answer(record: dict, png: bytes | None) -> Response:
    """The record as JSON, or the PNG with the record in the X-Cvtool-Record header (JSON, ASCII-escaped)."""
    if png is None:
        return JSONResponse(record)
    return Response(png, media_type="image/png", headers={"x-cvtool-record": json.dumps(record)})


def _same_or(make):
    """Variant maker that hands back the object itself when the options are what it has already."""
    def maker(obj, options):
        if all(getattr(obj, k, object()) == v for k, v in options.items()):
            return obj
        return make(obj, options)
    return maker


def _face_indices(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) not in (1, 2) or not all(p.isascii() and p.isdigit() and len(p) < 10 for p in parts):
        raise UsageError(f"face_index {text!r}: expected N or N,M (face numbers from 0)")
    return int(parts[0]), int(parts[-1])


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
