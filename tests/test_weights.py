"""cvtool.models.weights against a real loopback HTTP server: cache, hash checks, progress, offline, mirror."""

import hashlib
import io
import os
import socket

import pytest
import torch
from loopback import LoopbackServer

from cvtool.errors import WeightsError
from cvtool.models import weights

HUB_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def _tiny_checkpoint() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(4, 2).state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache under tmp_path, via TORCH_HOME as a user would set it; no offline or mirror settings."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("CVTOOL_OFFLINE", raising=False)
    monkeypatch.delenv("CVTOOL_WEIGHTS_MIRROR", raising=False)
    assert weights.cache_dir() == tmp_path / "torch" / "hub" / "checkpoints"
    return weights.cache_dir()


@pytest.fixture
def server():
    srv = LoopbackServer()
    srv.data = _tiny_checkpoint()
    srv.name = f"tiny-{hashlib.sha256(srv.data).hexdigest()[:8]}.pth"  # torch.hub style: name-<sha256 prefix>.ext
    srv.files[srv.name] = srv.data
    yield srv
    srv.close()


def _contents(directory) -> list[str]:
    """Every entry, dotfiles (temp files) included; [] when the folder was never created."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


# -- small pieces -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, offline", [("1", True), ("TRUE", True), ("yes", True), ("On", True),
                                            ("0", False), ("no", False), ("", False)])
def test_is_offline_reads_the_environment(monkeypatch, value, offline):
    monkeypatch.setenv("CVTOOL_OFFLINE", value)
    assert weights.is_offline() is offline


def test_resolve_url_uses_the_mirror_only_when_set(monkeypatch):
    monkeypatch.delenv("CVTOOL_WEIGHTS_MIRROR", raising=False)
    assert weights.resolve_url(HUB_URL) == HUB_URL
    monkeypatch.setenv("CVTOOL_WEIGHTS_MIRROR", "http://mirror.internal/torch/")
    assert weights.resolve_url(HUB_URL) == "http://mirror.internal/torch/resnet18-f37072fd.pth"


def test_cached_path_is_the_published_file_name(cache):
    assert weights.cached_path(HUB_URL) == cache / "resnet18-f37072fd.pth"


@pytest.mark.parametrize("name, prefix", [(HUB_URL, "f37072fd"), ("vgg16_features-amdegroot-88682ab5.pth", "88682ab5"),
                                          ("lenet5.pt", None), ("odd-.pth", None)])
def test_expected_hash_prefix_follows_torch_hub(name, prefix):
    assert weights.expected_hash_prefix(name) == prefix


def test_sha256_file_streams_over_chunks(tmp_path):
    data = bytes(range(256)) * 10_000  # 2.5 MiB: several 1 MiB chunks
    (tmp_path / "blob").write_bytes(data)
    assert weights.sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


# -- fetch ------------------------------------------------------------------------------------------


def test_first_fetch_downloads_and_second_is_a_cache_hit(cache, server):
    url = f"{server.url}/models/{server.name}"
    path = weights.fetch(url, progress=False)
    assert path == cache / server.name and path.read_bytes() == server.data
    assert server.requests == [f"/models/{server.name}"]
    assert _contents(cache) == [server.name]  # no temp file left beside it
    assert weights.fetch(url, progress=False) == path
    assert len(server.requests) == 1


def test_progress_bar_goes_to_stderr_only(cache, server, capfd):
    weights.fetch(f"{server.url}/{server.name}", progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert f"downloading {server.name}" in err


@pytest.fixture
def hash_reads(monkeypatch):
    """Names of the files whose bytes were hashed (cvtool.cache.sha256_file, the one place that reads them)."""
    import cvtool.cache

    reads, real = [], cvtool.cache.sha256_file

    def counting(path):
        reads.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(cvtool.cache, "sha256_file", counting)
    return reads


def test_a_cache_hit_that_does_not_match_its_hash_is_refused(cache, server):
    """Whatever lies under the published name (here: another valid state_dict) is checked before use."""
    cache.mkdir(parents=True)
    torch.manual_seed(5)
    torch.save(torch.nn.Linear(4, 2).state_dict(), cache / server.name)
    actual = hashlib.sha256((cache / server.name).read_bytes()).hexdigest()
    url = f"{server.url}/{server.name}"
    for offline in (True, False):
        with pytest.raises(WeightsError) as info:
            weights.fetch(url, offline=offline)
        assert _one_line(info) == (
            f"{cache / server.name}: corrupt: sha256 {actual[:12]}… does not match the published {server.name[5:13]}…; "
            "delete it and the next run downloads it again (or pass --weights FILE)"
        )
    assert server.requests == []
    (cache / server.name).unlink()
    assert weights.fetch(url, progress=False).read_bytes() == server.data  # as the message says


def test_a_cached_file_is_hashed_once_per_version(cache, server, hash_reads):
    url = f"{server.url}/{server.name}"
    path = weights.fetch(url, progress=False)
    assert hash_reads == []  # hashed as it streamed in
    assert weights.fetch(url) == path and hash_reads == []
    copy = cache.parent / "copy.pth"
    copy.write_bytes(server.data)
    path.unlink()
    os.replace(copy, path)  # the same bytes put there by hand: a new file, so hashed once
    assert weights.fetch(url) == path and hash_reads == [server.name]
    assert weights.fetch(url) == path and weights.fetch(url) == path and hash_reads == [server.name]
    assert weights.verify(path, url=url) is True and hash_reads == [server.name] * 2  # verify always re-reads


def test_a_rewrite_in_place_with_the_old_mtime_is_still_caught(cache, server):
    url = f"{server.url}/{server.name}"
    path = weights.fetch(url, progress=False)
    weights.fetch(url)  # verdict remembered
    stat = path.stat()
    with open(path, "r+b") as handle:  # flip bytes, keep size and mtime
        handle.seek(len(server.data) // 2)
        handle.write(b"\xff\xfe\xfd\xfc")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(WeightsError, match="corrupt: sha256 "):
        weights.fetch(url)


def test_an_empty_cached_file_is_downloaded_again(cache, server):
    cache.mkdir(parents=True)
    (cache / server.name).write_bytes(b"")
    assert weights.fetch(f"{server.url}/{server.name}", progress=False).read_bytes() == server.data
    assert len(server.requests) == 1


def test_corrupt_download_is_rejected_and_nothing_lands_in_the_cache(cache, server):
    server.files[server.name] = b"a different file under the hashed name"
    with pytest.raises(WeightsError) as info:
        weights.fetch(f"{server.url}/{server.name}", progress=False)
    message = _one_line(info)
    assert message.startswith(f"downloaded {server.name} is corrupt: sha256 ")
    assert f"does not match expected {server.name[5:13]}…; try again or pass --weights FILE" in message
    assert _contents(cache) == []


def test_explicit_sha256_is_checked_in_full(cache, server):
    good = hashlib.sha256(server.data).hexdigest()
    with pytest.raises(WeightsError, match="is corrupt") as info:
        weights.fetch(f"{server.url}/{server.name}", sha256="0" * 64, progress=False)
    assert good[:12] in _one_line(info)
    assert _contents(cache) == []
    assert weights.fetch(f"{server.url}/{server.name}", sha256=good.upper(), progress=False).read_bytes() == server.data


def test_refused_connection_says_where_to_put_the_file(cache):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed on leaving: nothing listens there
    url = f"http://127.0.0.1:{port}/resnet18-f37072fd.pth"
    with pytest.raises(WeightsError) as info:
        weights.fetch(url, progress=False)
    assert _one_line(info) == (
        f"cannot download resnet18-f37072fd.pth from {url} (Connection refused); put the file in {cache}/ "
        "or pass --weights FILE (set CVTOOL_OFFLINE=1 to never try the network)"
    )
    assert _contents(cache) == []


def test_http_404_is_one_line(cache, server):
    url = f"{server.url}/missing-0123abcd.pth"
    with pytest.raises(WeightsError) as info:
        weights.fetch(url, progress=False)
    message = _one_line(info)
    assert message.startswith(f"cannot download missing-0123abcd.pth from {url} (HTTP 404 Not Found); ")
    assert f"put the file in {cache}/ or pass --weights FILE" in message
    assert _contents(cache) == []


def test_a_connection_dropped_mid_file_never_lands_in_the_cache(cache, server):
    server.files["nohash.pth"] = server.data  # no hash in the name: only the length can tell
    server.declared["nohash.pth"] = len(server.data) * 2
    with pytest.raises(WeightsError) as info:
        weights.fetch(f"{server.url}/nohash.pth", progress=False)
    assert f"(connection closed after {len(server.data)} of {len(server.data) * 2} bytes)" in _one_line(info)
    assert _contents(cache) == []


def test_a_silent_host_times_out(cache, monkeypatch):
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 0.3)
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/slow-0123abcd.pth"
        with pytest.raises(WeightsError) as info:
            weights.fetch(url, progress=False)
    assert "(timed out after 0.3 s waiting for the server)" in _one_line(info)
    assert _contents(cache) == []


def test_offline_by_environment_never_touches_the_network(cache, server, monkeypatch):
    monkeypatch.setenv("CVTOOL_OFFLINE", "1")
    url = f"{server.url}/{server.name}"
    with pytest.raises(WeightsError) as info:
        weights.fetch(url)
    assert _one_line(info) == (
        f"weights file {server.name} is not in the cache and cvtool is offline; download {url} and put it in "
        f"{cache}/, or pass --weights FILE"
    )
    assert server.requests == []
    assert weights.fetch(url, offline=False, progress=False).read_bytes() == server.data  # the argument wins


def test_offline_by_argument_never_touches_the_network(cache, server):
    url = f"{server.url}/{server.name}"
    with pytest.raises(WeightsError, match="is not in the cache and cvtool is offline"):
        weights.fetch(url, offline=True)
    assert server.requests == [] and _contents(cache) == []
    weights.fetch(url, progress=False)
    assert weights.fetch(url, offline=True) == cache / server.name  # offline still serves the cache


def test_mirror_serves_the_same_file_name(cache, server, monkeypatch):
    monkeypatch.setenv("CVTOOL_WEIGHTS_MIRROR", f"{server.url}/mirror/")
    path = weights.fetch(f"https://download.example.invalid/models/{server.name}", progress=False)
    assert path == cache / server.name and path.read_bytes() == server.data
    assert server.requests == [f"/mirror/{server.name}"]


# -- verify -----------------------------------------------------------------------------------------


def test_verify_true_false_and_none(cache, server):
    url = f"{server.url}/{server.name}"
    path = weights.fetch(url, progress=False)
    assert weights.verify(path, url=url) is True
    assert weights.verify(path, sha256=hashlib.sha256(server.data).hexdigest()) is True
    assert weights.verify(path) is None
    assert weights.verify(path, url=f"{server.url}/plain.pth") is None
    path.write_bytes(b"bit rot")
    assert weights.verify(path, url=url) is False
