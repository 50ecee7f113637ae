"""The real download path (cache, progress, hash check, offline, mirror) against a loopback HTTP server."""

import hashlib
import http.server
import io
import socket
import threading
from pathlib import Path

import pytest
import torch

from cvtool.errors import WeightsError
from cvtool.models import weights


class _Server:
    """Serves `files` (name -> bytes) on 127.0.0.1 and counts requests per name."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                name = self.path.rsplit("/", 1)[-1]
                outer.requests.append(name)
                body = outer.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _tiny_checkpoint() -> tuple[str, bytes]:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(4, 2).state_dict(), buffer)
    data = buffer.getvalue()
    return f"tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth", data


@pytest.fixture
def server():
    name, data = _tiny_checkpoint()
    srv = _Server({name: data, "corrupt-deadbeef.pth": data})
    srv.name, srv.data = name, data
    yield srv
    srv.close()


def test_first_fetch_downloads_into_the_cache_second_is_a_cache_hit(server, capfd):
    url = f"{server.url}/{server.name}"
    path = weights.fetch(url, progress=True)
    assert path == weights.cache_dir() / server.name and path.read_bytes() == server.data
    assert server.requests == [server.name]
    out, err = capfd.readouterr()
    assert out == "" and server.name in err  # the progress bar is on stderr only
    assert weights.fetch(url) == path
    assert server.requests == [server.name]  # no second request
    assert weights.verify(path, url=url) is True


def test_cache_is_under_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert weights.cache_dir() == tmp_path / "hub" / "checkpoints"


def test_corrupt_download_is_rejected_and_nothing_lands_in_the_cache(server):
    with pytest.raises(WeightsError, match=r"downloaded corrupt-deadbeef.pth is corrupt: sha256 .* does not match"):
        weights.fetch(f"{server.url}/corrupt-deadbeef.pth", progress=False)
    assert list(weights.cache_dir().iterdir()) == []


def test_explicit_sha256_is_checked_in_full(server):
    with pytest.raises(WeightsError, match="is corrupt"):
        weights.fetch(f"{server.url}/{server.name}", sha256="0" * 64, progress=False)
    assert not weights.cached_path(server.name).exists()


def test_refused_connection_says_where_to_put_the_file():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(WeightsError) as info:
        weights.fetch(f"http://127.0.0.1:{port}/resnet18-f37072fd.pth", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "cannot download resnet18-f37072fd.pth" in message and "refused" in message.lower()
    assert str(weights.cache_dir()) in message and "--weights FILE" in message
    assert list(weights.cache_dir().iterdir()) == []


def test_http_404_is_one_line(server):
    with pytest.raises(WeightsError, match=r"HTTP 404"):
        weights.fetch(f"{server.url}/missing-0123abcd.pth", progress=False)


def test_offline_never_touches_the_network(server, monkeypatch):
    monkeypatch.setenv("CVTOOL_OFFLINE", "1")
    with pytest.raises(WeightsError, match="is not in the cache and cvtool is offline"):
        weights.fetch(f"{server.url}/{server.name}")
    with pytest.raises(WeightsError, match="offline"):
        weights.fetch(f"{server.url}/{server.name}", offline=True)
    assert server.requests == []


def test_mirror_serves_the_same_file_name(server, monkeypatch):
    monkeypatch.setenv("CVTOOL_WEIGHTS_MIRROR", server.url + "/")
    path = weights.fetch(f"https://download.example.invalid/models/{server.name}", progress=False)
    assert path.read_bytes() == server.data and server.requests == [server.name]


def test_verify_detects_a_file_changed_after_download(server):
    url = f"{server.url}/{server.name}"
    path = weights.fetch(url, progress=False)
    path.write_bytes(b"bit rot")
    assert weights.verify(path, url=url) is False
    assert weights.verify(path) is None


def test_models_pull_and_classify_through_the_registry(server, tmp_path):
    """A registry entry whose weights live on the loopback host: pull, then use, then verify."""
    from typer.testing import CliRunner

    from cvtool.cli import app
    from cvtool.models.lenet import LENET_PREPROCESS, LeNet5
    from cvtool.models.registry import DownloadedWeights, ModelEntry, register, unregister

    torch.manual_seed(1)
    buffer = io.BytesIO()
    torch.save(LeNet5(num_classes=3).state_dict(), buffer)
    data = buffer.getvalue()
    name = f"lenet3-{hashlib.sha256(data).hexdigest()[:10]}.pt"
    server.files[name] = data
    register(ModelEntry(
        name="test_lenet3", task="classify", family="lenet", builder=LeNet5,
        preprocess=lambda: LENET_PREPROCESS, classes=lambda: ["a", "b", "c"],
        weights=DownloadedWeights(url=f"{server.url}/{name}"), build_kwargs={"num_classes": 3},
    ))
    try:
        runner = CliRunner()
        offline = runner.invoke(app, ["models", "pull", "test_lenet3"], env={"CVTOOL_OFFLINE": "1"})
        assert offline.exit_code == 1 and server.requests == []
        pulled = runner.invoke(app, ["models", "pull", "test_lenet3"])
        assert pulled.exit_code == 0 and server.requests == [name]
        digit = Path(__file__).parent.parent / "sample_images" / "digits" / "digit_3.png"
        result = runner.invoke(app, ["classify", str(digit), "-m", "test_lenet3", "-f", "jsonl", "-k", "3"],
                               env={"CVTOOL_OFFLINE": "1"})
        assert result.exit_code == 0, result.output
        assert '"label": "a"' in result.stdout or '"label": "b"' in result.stdout
        assert runner.invoke(app, ["models", "verify", "test_lenet3"]).exit_code == 0
        weights.cached_path(name).write_bytes(b"corrupted on disk")
        assert runner.invoke(app, ["models", "verify", "test_lenet3"]).exit_code == 1
    finally:
        unregister("test_lenet3")
