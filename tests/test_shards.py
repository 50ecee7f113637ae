"""--shard K/N splits a batch disjointly and completely with no coordination; --threads and the sharded
default set the compute threads; -f json and -f coco stream their one document."""

from __future__ import annotations

import hashlib
import io
import json
import os
import select
import subprocess
import sys
from collections import Counter

import pytest
from conftest import SAMPLES, invoke_cli, jsonl

from cvtool.io.shards import parse_shard, shard_of
from cvtool.io import shards

DIGITS = SAMPLES / "digits"


def _strip(records):
    return [{k: v for k, v in r.items() if k != "ms"} for r in records]


def test_shard_is_sha1_of_the_normalised_path_and_the_same_in_every_process():
    paths = [f"photos/img_{i:04d}.jpg" for i in range(200)]
    expected = [int.from_bytes(hashlib.sha1(p.encode()).digest()[:8], "big") % 3 for p in paths]
    assert [shard_of(p, 3) for p in paths] == expected
    assert shard_of("./photos/img_0001.jpg", 3) == shard_of("photos/img_0001.jpg", 3)
    code = "import sys; from cvtool.io.shards import shard_of; print([shard_of(p, 3) for p in sys.argv[1:]])"
    for seed in ("1", "2"):  # Python's hash() would differ between these processes
        out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert json.loads(out) == expected


def test_n_shards_of_any_list_are_disjoint_and_complete():
    paths = [f"/data/{i}/x.png" for i in range(1000)]
    parts = [list(shards.select(paths, (k, 4))) for k in range(4)]
    assert sorted(p for part in parts for p in part) == sorted(paths)
    assert all(150 < len(part) < 350 for part in parts), [len(p) for p in parts]  # roughly even
    assert list(shards.select(paths, None)) == paths
    assert list(shards.select(paths, (0, 1))) == paths


@pytest.mark.parametrize("text, message", [
    ("2/2", "--shard 2/2: K must be from 0 to 1"),
    ("1/0", "--shard 1/0: N must be at least 1"),
    ("1", "--shard '1': expected K/N, e.g. 0/4 (shard K of N, K from 0 to N-1)"),
    ("a/b", "--shard 'a/b': expected K/N, e.g. 0/4 (shard K of N, K from 0 to N-1)"),
])
def test_a_bad_shard_is_one_usage_line(text, message):
    with pytest.raises(Exception) as info:
        parse_shard(text)
    assert str(info.value) == message
    result = invoke_cli("classify", str(DIGITS), "--model", "lenet5_digits", "--shard", text)
    assert result.returncode == 2 and result.stderr == f"cvtool: {message}\n" and result.stdout == ""
    assert parse_shard(" 1 / 3 ") == (1, 3)


def test_union_of_two_cli_shards_is_the_unsharded_run(tmp_path):
    args = ["classify", str(DIGITS), str(tmp_path / "missing.png"), "--model", "lenet5_digits", "-k", "2",
            "--device", "cpu", "-f", "jsonl"]
    whole = invoke_cli(*args)
    parts = [invoke_cli(*args, "--shard", f"{k}/2") for k in range(2)]
    assert whole.returncode == 1  # the missing file
    records = [jsonl(p.stdout) for p in parts]
    assert all(records), "each shard got some of the 11 inputs"
    union = records[0] + records[1]
    assert len(union) == len(jsonl(whole.stdout)) == 11
    assert Counter(r["path"] for r in union) == Counter(r["path"] for r in jsonl(whole.stdout))
    assert max(Counter(r["path"] for r in union).values()) == 1  # no path twice
    by_path = {r["path"]: r for r in _strip(jsonl(whole.stdout))}
    assert all(by_path[r["path"]] == r for r in _strip(union))
    # exactly one shard reports the missing file, and only that one exits 1
    assert sorted(p.returncode for p in parts) == [0, 1]


def test_api_run_takes_a_shard():
    import cvtool

    clf = cvtool.Classifier("lenet5_digits", device="cpu", top_k=1)
    whole = [r.path for r in clf.run(DIGITS)]
    halves = [[r.path for r in clf.run(DIGITS, shard=(k, 2))] for k in range(2)]
    assert sorted(halves[0] + halves[1]) == sorted(whole) and not set(halves[0]) & set(halves[1])
    assert halves[0] == [p for p in whole if shard_of(p, 2) == 0]  # input order kept
    with pytest.raises(cvtool.UsageError, match="shard: K must be from 0 to 1"):
        clf.run(DIGITS, shard=(2, 2))


@pytest.fixture
def restore_threads():
    import torch

    import cvtool.device as device

    before, configured = torch.get_num_threads(), device._THREADS
    yield torch
    torch.set_num_threads(before)
    device._THREADS = configured


def test_threads_option_sets_torch_opencv_and_onnxruntime_threads(restore_threads):
    import cv2

    from cvtool.device import configured_threads, cpu_count, default_threads

    torch = restore_threads
    result = invoke_cli("classify", str(DIGITS / "digit_3.png"), "--model", "lenet5_digits", "--threads", "3")
    assert result.returncode == 0, result.stderr
    assert torch.get_num_threads() == 3 and cv2.getNumThreads() == 3 and configured_threads() == 3
    result = invoke_cli("classify", str(DIGITS / "digit_3.png"), "--model", "lenet5_digits", "--shard", "0/2")
    assert result.returncode in (0, 1)  # the one image may be in the other shard
    assert torch.get_num_threads() == max(1, cpu_count() // 2)
    assert default_threads(None, None) is None and default_threads(0, (0, 4)) is None
    assert default_threads(5, (0, 4)) == 5 and default_threads(None, (1, 10_000)) == 1
    import cvtool

    cvtool.Classifier("lenet5_digits", device="cpu", threads=1)
    assert torch.get_num_threads() == 1


def test_threads_set_before_torch_is_imported_size_its_pool_when_it_is():
    """The onnxruntime path sets --threads without importing torch; torch imported afterwards has that pool."""
    code = ("import sys; from cvtool.device import set_threads; set_threads(1); assert 'torch' not in sys.modules; "
            "import torch; print(torch.get_num_threads())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})  # --threads wins over the environment
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_threads_reach_onnxruntime_sessions(restore_threads, tmp_path):
    pytest.importorskip("onnxruntime")
    import cvtool

    clf = cvtool.Classifier("lenet5_digits", device="cpu", backend="onnxruntime", threads=1)
    assert clf.loaded.module.session.get_session_options().intra_op_num_threads == 1


# -- -f json and -f coco stream ---------------------------------------------------------------------

@pytest.mark.parametrize("inputs", [[], ["digit_1.png"], ["digit_1.png", "missing.png", "digit_2.png", "digit_7.png"]])
def test_json_output_is_one_valid_document_for_none_one_and_many_records(inputs, tmp_path):
    listed = "".join(f"{DIGITS / name}\n" for name in inputs)
    result = invoke_cli("classify", "-", "--model", "lenet5_digits", "-k", "1", "-f", "json", stdin=listed)
    records = json.loads(result.stdout)
    assert [r["path"] for r in records] == [str(DIGITS / name) for name in inputs]
    assert ("error" in records[1]) if len(inputs) > 1 else True
    as_lines = invoke_cli("classify", "-", "--model", "lenet5_digits", "-k", "1", "-f", "jsonl", stdin=listed)
    assert _strip(records) == _strip(jsonl(as_lines.stdout))


def test_json_reaches_stdout_before_the_batch_ends():
    """Paths come from stdin, which stays open: the batch cannot have ended when the first record arrives."""
    proc = subprocess.Popen([sys.executable, "-m", "cvtool", "classify", "-", "--model", "lenet5_digits", "-k", "1",
                             "-f", "json", "-b", "1", "--workers", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout.fileno()
    seen = b""
    try:
        proc.stdin.write(b"".join(f"{DIGITS / f'digit_{i}.png'}\n".encode() for i in range(4)))
        proc.stdin.flush()
        while b"\n  }" not in seen:  # the first record's closing brace
            ready, _, _ = select.select([out], [], [], 120)
            assert ready, f"no complete record within 120 s while stdin is open; got {seen!r}"
            chunk = os.read(out, 65536)
            assert chunk, "stdout closed early"
            seen += chunk
        assert proc.poll() is None  # still running: waiting for more paths
        text = seen.decode()
        first = json.loads(text[text.index("{"):text.index("\n  }") + 4])
        assert first["path"] == str(DIGITS / "digit_0.png") and first["result"]["top_k"][0]["label"] == "0"
        proc.stdin.close()
        while chunk := os.read(out, 65536):
            seen += chunk
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert [r["path"] for r in json.loads(seen)] == [str(DIGITS / f"digit_{i}.png") for i in range(4)]


def _coco_all_at_once(records, categories):
    """What the writer printed before it streamed: one json.dump of the whole document."""
    images, annotations, cats = [], [], dict(categories or {})
    for record in records:
        if "error" in record:
            continue
        h, w = record["result"]["size"]
        images.append({"id": len(images) + 1, "file_name": record["path"], "width": w, "height": h})
        for det in record["result"]["detections"]:
            x1, y1, x2, y2 = det["box"]
            cat = cats.setdefault(det["index"], {"id": det["index"] + 1, "name": det["label"]})
            annotations.append({"id": len(annotations) + 1, "image_id": len(images), "category_id": cat["id"],
                                "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                                "area": round((x2 - x1) * (y2 - y1), 2), "score": det["score"], "iscrowd": 0})
    cats = sorted(({"id": c["id"], "name": c["name"]} for c in cats.values()), key=lambda c: c["id"])
    return json.dumps({"images": images, "annotations": annotations, "categories": cats}) + "\n"


def _det(index, label, box=(1.0, 2.0, 5.5, 9.0)):
    return {"box": list(box), "index": index, "label": label, "score": 0.9}


@pytest.mark.parametrize("records", [
    [],
    [{"path": "bad.png", "error": "not an image"}],
    [{"path": "a.jpg", "result": {"size": [10, 20], "detections": []}}],
    [{"path": "a.jpg", "result": {"size": [10, 20], "detections": [_det(0, "cat"), _det(2, "dog")]}},
     {"path": "b.png", "error": "x"},
     {"path": "c.jpg", "result": {"size": [30, 40], "detections": [_det(2, "dog", (0.0, 0.0, 3.0, 4.0))]}}],
])
def test_coco_streams_the_same_document(records):
    from cvtool.pipelines.detect import CocoWriter

    for categories in (None, {0: {"id": 1, "name": "cat"}, 7: {"id": 8, "name": "bird"}}):
        stream = io.StringIO()
        writer = CocoWriter(stream, [], None, categories=categories)
        first_image_out = None
        for record in records:
            writer.write(record)
            if first_image_out is None and "error" not in record:
                first_image_out = stream.getvalue()
        if first_image_out is not None:  # the first image entry is out before the batch ends
            assert first_image_out.startswith('{"images": [{"id": 1, "file_name": "a.jpg"')
        writer.close()
        assert stream.getvalue() == _coco_all_at_once(records, categories)
        json.loads(stream.getvalue())
