"""The download path end to end through the registry and the CLI, against a loopback HTTP server
(the fetch/cache/hash/offline details themselves are tested in test_weights.py)."""

import hashlib
import io
import json
import time

import pytest
import torch
from conftest import SAMPLES, run_cli
from loopback import LoopbackServer

from cvtool.models import weights

DIGIT = SAMPLES / "digits" / "digit_3.png"


@pytest.fixture
def server():
    srv = LoopbackServer()
    yield srv
    srv.close()


def test_cache_is_under_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert weights.cache_dir() == tmp_path / "hub" / "checkpoints"


def _expected_top3(state_dict: dict, classes: list[str]) -> list[tuple[str, float]]:
    """What `classify -k 3` must print, computed here from the same weights and image."""
    from cvtool.io.image import read_image
    from cvtool.models.lenet import LENET_PREPROCESS, LeNet5

    model = LeNet5(num_classes=3).eval()
    model.load_state_dict(state_dict)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(LENET_PREPROCESS(read_image(DIGIT)))[None]), dim=1)[0]
    order = probs.argsort(descending=True).tolist()
    return [(classes[i], probs[i].item()) for i in order]


def test_models_pull_and_classify_through_the_registry(server):
    """A registry entry whose weights live on the loopback host: pull, then use, then verify."""
    from typer.testing import CliRunner

    from cvtool.cli import app
    from cvtool.models.lenet import LENET_PREPROCESS, LeNet5
    from cvtool.models.registry import DownloadedWeights, ModelEntry, register, unregister

    torch.manual_seed(1)
    state = LeNet5(num_classes=3).state_dict()
    state["classifier.3.weight"] = state["classifier.3.weight"] * 20  # spread the three probabilities well apart
    buffer = io.BytesIO()
    torch.save(state, buffer)
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
        assert offline.exit_code == 2 and server.requests == []  # README: 2 = weights missing
        pulled = runner.invoke(app, ["models", "pull", "test_lenet3"])
        assert pulled.exit_code == 0 and server.requests == [f"/{name}"]
        result = runner.invoke(app, ["classify", str(DIGIT), "-m", "test_lenet3", "-f", "jsonl", "-k", "3"],
                               env={"CVTOOL_OFFLINE": "1"})
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert len(records) == 1
        assert records[0]["weights_sha256"] == hashlib.sha256(data).hexdigest()
        got = [(entry["label"], entry["prob"]) for entry in records[0]["result"]["top_k"]]
        expected = _expected_top3(state, ["a", "b", "c"])
        assert [label for label, _ in got] == [label for label, _ in expected]
        assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=2e-6)
        assert expected[0][1] - expected[1][1] > 0.05  # a real ranking, not a near-tie
        assert runner.invoke(app, ["models", "verify", "test_lenet3"]).exit_code == 0
        weights.cached_path(name).write_bytes(b"corrupted on disk")
        assert runner.invoke(app, ["models", "verify", "test_lenet3"]).exit_code == 1
    finally:
        unregister("test_lenet3")


def test_a_state_dict_dropped_under_the_published_name_is_refused_at_load():
    """The offline message asks for resnet18-f37072fd.pth in the cache; any other file under that name
    (here a valid but random state_dict) stops the command with one line, exit 2, before it is loaded."""
    cached = weights.cache_dir() / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4, 2).state_dict(), cached)
    actual = hashlib.sha256(cached.read_bytes()).hexdigest()
    result = run_cli("--offline", "classify", str(DIGIT), "-m", "resnet18")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"cvtool: {cached}: corrupt: sha256 {actual[:12]}… does not match the published f37072fd…; "
        "delete it and run `cvtool models pull resnet18` (or pass --weights FILE)\n"
    )


def test_models_verify_with_nothing_cached_says_so():
    from typer.testing import CliRunner

    from cvtool.cli import app

    result = CliRunner().invoke(app, ["models", "verify"])
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr == (
        f"cvtool: nothing to verify: no model weights are cached in {weights.cache_dir()}/ "
        "(`cvtool models pull NAME` fetches them)\n"
    )


def test_a_verified_download_is_not_read_again_on_load(server, monkeypatch):
    """First load of a ~45 MB cached file hashes it; the second reuses the remembered verdict."""
    import cvtool.cache

    data = bytes(range(256)) * (45 * 4096)  # 45 MiB
    name = f"big-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    path = weights.cache_dir() / name
    path.parent.mkdir(parents=True)
    path.write_bytes(data)  # put there by hand: never hashed by cvtool yet
    reads, real = [], cvtool.cache.sha256_file
    monkeypatch.setattr(cvtool.cache, "sha256_file", lambda p: reads.append(p) or real(p))
    url = f"{server.url}/{name}"
    start = time.perf_counter()
    assert weights.fetch(url, offline=True) == path
    first = time.perf_counter() - start
    start = time.perf_counter()
    assert weights.fetch(url, offline=True) == path
    second = time.perf_counter() - start
    assert len(reads) == 1 and server.requests == []
    assert second < first
    print(f"first load check {first * 1e3:.1f} ms, second {second * 1e3:.2f} ms")
