"""The download path end to end through the registry and the CLI, against a loopback HTTP server
(the fetch/cache/hash/offline details themselves are tested in test_weights.py)."""

import hashlib
import http.server
import io
import threading
from pathlib import Path

import pytest
import torch

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


def test_cache_is_under_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert weights.cache_dir() == tmp_path / "hub" / "checkpoints"


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
