"""http(s) URLs as inputs, against a real HTTP server on 127.0.0.1 (tests/loopback.py): the result of a
URL is the result of the same file on disk; 404, a slow server, an oversized body, HTML instead of an
image, offline, a refused connection are each one line naming the URL; a resolver that never answers
costs seconds, not minutes (weights downloads included)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import ROOT, SAMPLES, invoke_cli, jsonl, run_cli
from loopback import LoopbackServer

from cvtool.errors import InputError, WeightsError
from cvtool.io import remote

DIGIT = SAMPLES / "digits" / "digit_3.png"
LENET = ("--model", "lenet5_digits", "--format", "jsonl", "--top-k", "3")


@pytest.fixture
def server():
    srv = LoopbackServer()
    srv.files["digit.png"] = DIGIT.read_bytes()
    yield srv
    srv.close()


def _strip_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("path", "ms")}


def _one_error(result, url: str) -> str:
    """The batch's only record is an error for `url`; stderr says it on one line; exit 1."""
    assert result.returncode == 1, result.stderr
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == [url]
    reason = records[0]["error"]
    assert f"cvtool: {url}: {reason}\n" in result.stderr
    assert "Traceback" not in result.stderr
    return reason


def test_an_image_url_gives_the_same_record_as_the_file_on_disk(server):
    url = f"{server.url}/digit.png"
    result = invoke_cli("classify", url, str(DIGIT), *LENET)
    assert result.returncode == 0, result.stderr
    from_url, from_disk = jsonl(result.stdout)
    assert from_url["path"] == url and from_disk["path"] == str(DIGIT)
    assert _strip_timing(from_url) == _strip_timing(from_disk)
    assert from_url["result"]["top_k"][0]["label"] == "3"
    assert server.requests == ["/digit.png"]


def test_a_query_string_is_part_of_the_url_not_of_the_suffix(server):
    url = f"{server.url}/digit.png?size=large&sig=abc"
    result = invoke_cli("classify", url, *LENET)
    assert result.returncode == 0, result.stderr
    assert jsonl(result.stdout)[0]["path"] == url


def test_404_is_one_line(server):
    url = f"{server.url}/missing.png"
    assert _one_error(invoke_cli("classify", url, *LENET), url) == "cannot download: HTTP 404 Not Found"


def test_a_refused_connection_is_one_line():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.png"
    assert _one_error(invoke_cli("classify", url, *LENET), url) == "cannot download: Connection refused"


def test_a_slow_server_hits_the_read_timeout(server, monkeypatch):
    monkeypatch.setenv("CVTOOL_READ_TIMEOUT", "0.5")
    server.delays["digit.png"] = 30
    url = f"{server.url}/digit.png"
    start = time.monotonic()
    reason = _one_error(invoke_cli("classify", url, *LENET), url)
    assert time.monotonic() - start < 10
    assert reason == "cannot download: timed out after 0.5 s waiting for the server"


def test_an_oversized_body_is_refused_before_and_while_reading(server, monkeypatch):
    monkeypatch.setenv("CVTOOL_MAX_BYTES", "1000")
    server.files["big.jpg"] = (SAMPLES / "photos" / "coffee.jpg").read_bytes()
    size = len(server.files["big.jpg"])
    url = f"{server.url}/big.jpg"
    assert _one_error(invoke_cli("classify", url, *LENET), url) == (
        f"larger than the limit of 1000 bytes (the server says {size} bytes); raise it with CVTOOL_MAX_BYTES")
    server.declared["big.jpg"] = None  # no Content-Length: counted as it arrives
    assert _one_error(invoke_cli("classify", url, *LENET), url) == (
        "larger than the limit of 1000 bytes; raise it with CVTOOL_MAX_BYTES")


def test_html_instead_of_an_image_is_named_by_what_the_server_sent(server):
    server.files["photo.jpg"] = b"<!doctype html><html><body>Please log in</body></html>"
    server.content_types["photo.jpg"] = "text/html; charset=utf-8"
    url = f"{server.url}/photo.jpg"
    assert _one_error(invoke_cli("classify", url, *LENET), url) == "not an image (the server sent text/html)"
    server.content_types["photo.jpg"] = "image/jpeg"  # a server that lies: the bytes decide
    assert _one_error(invoke_cli("classify", url, *LENET), url) == (
        "not an image (the server says image/jpeg, but the first bytes are no image format)")


def test_a_truncated_download_is_one_line(server):
    server.declared["digit.png"] = len(server.files["digit.png"]) + 500
    url = f"{server.url}/digit.png"
    size = len(server.files["digit.png"])
    assert _one_error(invoke_cli("classify", url, *LENET), url) == (
        f"cannot download: connection closed after {size} of {size + 500} bytes")


def test_offline_refuses_a_url_at_once_without_touching_the_network(server, monkeypatch):
    url = f"{server.url}/digit.png"
    result = run_cli("--offline", "classify", url, str(DIGIT), *LENET)
    assert result.returncode == 1, result.stderr
    bad, good = jsonl(result.stdout)
    assert bad == {"path": url, "error": remote.OFFLINE_REASON}
    assert good["result"]["top_k"][0]["label"] == "3"
    assert server.requests == []
    monkeypatch.setenv("CVTOOL_OFFLINE", "1")  # the library refuses too, not only the input expansion
    with pytest.raises(InputError, match="offline"):
        remote.fetch_bytes(url)
    assert server.requests == []


def test_an_unsupported_scheme_is_one_line():
    url = "ftp://example.com/a.png"
    assert _one_error(invoke_cli("classify", url, *LENET), url) == (
        "unsupported URL scheme 'ftp' (http, https, rtsp and rtmp are read)")


def _video(path, frames=6, size=(32, 24), fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 40 * i % 256, np.uint8)
        cv2.circle(frame, (4 + 4 * i, size[1] // 2), 5, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def test_a_video_url_is_downloaded_and_gives_the_local_files_records(server, tmp_path):
    clip = _video(tmp_path / "clip.mp4")
    server.files["clip.mp4"] = clip.read_bytes()
    url = f"{server.url}/clip.mp4?token=1"
    result = invoke_cli("classify", url, str(clip), *LENET)
    assert result.returncode == 0, result.stderr
    records = jsonl(result.stdout)
    remote_frames = [r for r in records if r["path"] == url]
    local_frames = [r for r in records if r["path"] == str(clip)]
    assert len(remote_frames) == len(local_frames) == 6
    assert [_strip_timing(r) for r in remote_frames] == [_strip_timing(r) for r in local_frames]
    assert not [p for p in os.listdir(tmp_path) if p.startswith("cvtool-url-")]


def test_html_instead_of_a_video_is_one_line(server):
    server.files["clip.mp4"] = b"<html>expired link</html>"
    server.content_types["clip.mp4"] = "text/html"
    url = f"{server.url}/clip.mp4"
    assert _one_error(invoke_cli("classify", url, *LENET), url) == "not a video (the server sent text/html)"


def test_a_live_stream_that_does_not_answer_fails_in_bounded_time(monkeypatch):
    monkeypatch.setenv("CVTOOL_CONNECT_TIMEOUT", "1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"rtsp://127.0.0.1:{port}/live"
    start = time.monotonic()
    reason = _one_error(invoke_cli("classify", url, *LENET), url)
    assert time.monotonic() - start < 15
    assert reason.startswith("cannot open the stream (no answer within 1 s, refused, or not a video FFmpeg can read)")


@pytest.fixture
def silent_resolver(monkeypatch):
    """A resolver that never answers (until the test ends), as on a machine whose DNS server is down."""
    release = threading.Event()
    asked: list[str] = []

    def hang(host, *args, **kwargs):
        asked.append(host)
        release.wait(60)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    yield asked
    release.set()


def test_a_dns_lookup_that_never_answers_costs_seconds_for_urls(silent_resolver, monkeypatch):
    monkeypatch.setenv("CVTOOL_CONNECT_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        remote.fetch_bytes("http://images.example/a.png")
    assert time.monotonic() - start < 3
    assert str(info.value) == "http://images.example/a.png: cannot download: DNS lookup of images.example timed out after 0.5 s"
    assert silent_resolver == ["images.example"]


def test_a_dns_lookup_that_never_answers_costs_seconds_for_weights(silent_resolver, monkeypatch):
    from cvtool.models import weights

    monkeypatch.setenv("CVTOOL_CONNECT_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        weights.fetch("http://weights.example/net-0123abcd.pth", progress=False)
    assert time.monotonic() - start < 3
    assert "cannot download net-0123abcd.pth from http://weights.example/net-0123abcd.pth (DNS lookup of " \
           "weights.example timed out after 0.5 s)" in str(info.value)


def test_cvtool_detect_without_dns_says_so_within_seconds_at_the_default_timeout(tmp_path):
    """The issue's case end to end: `cvtool detect img.jpg`, weights not cached, DNS down. The default
    connect timeout (5 s) bounds the lookup; the rest is starting Python and importing torch."""
    script = ("import socket, sys, time\n"
              "def hang(*a, **k):\n    time.sleep(600)\n"
              "socket.getaddrinfo = hang\n"
              "from cvtool.cli import main\nsys.argv = ['cvtool'] + sys.argv[1:]\nmain()\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script, "detect", str(SAMPLES / "photos" / "coffee.jpg")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "CVTOOL_WEIGHTS_MIRROR": "http://weights-mirror.example/"})
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot download" in line]
    assert len(lines) == 1 and "(DNS lookup of weights-mirror.example timed out after 5 s)" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 40, elapsed  # was about 90 s with the system resolver's own retries


def test_bad_limits_in_the_environment_are_a_usage_error(monkeypatch):
    from cvtool.errors import UsageError

    monkeypatch.setenv("CVTOOL_READ_TIMEOUT", "soon")
    with pytest.raises(UsageError, match=r"CVTOOL_READ_TIMEOUT='soon' is not a positive number"):
        remote.read_timeout()
    assert remote.connect_timeout() == 5.0 and remote.max_bytes() == 500_000_000
