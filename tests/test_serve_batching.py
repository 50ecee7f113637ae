"""Cross-request batching in `cvtool serve` (cvtool/serve/batching.py): concurrent requests for one model run
as one batch, and every request still gets the record it gets alone; a bad input fails alone; --max-batch 1
runs each request alone. Real server processes on free ports, spoken to over HTTP from threads."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import SAMPLES, save_random_unet

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import test_serve  # noqa: E402
from test_serve import Server, request, without_ms  # noqa: E402

serve_env = test_serve.serve_env  # the fixture: the server's environment (caches, one thread, no CVTOOL_SERVER)

DIGITS = sorted((SAMPLES / "digits").glob("*.png"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    """PNGs of three sizes (as the detector and segmenter see mixed uploads), from the sample photo."""
    import cv2

    photo = cv2.imread(str(SAMPLES / "photos" / "astronaut.jpg"))
    out = {}
    for i, (h, w) in enumerate([(48, 64), (64, 48), (40, 40), (48, 64), (33, 70), (64, 48), (40, 40), (48, 64)]):
        crop = photo[i * 20 : i * 20 + 2 * h : 2, i * 30 : i * 30 + 2 * w : 2]
        out[f"img{i}_{h}x{w}.png"] = cv2.imencode(".png", crop)[1].tobytes()
    return out


@pytest.fixture(scope="module")
def unet(tmp_path_factory) -> Path:
    return save_random_unet(tmp_path_factory.mktemp("unet") / "unet.pt", ["background", "shape"])


@pytest.fixture(scope="module")
def batching_server(serve_env, yolo_checkpoint, unet):
    # a wide window, so that the threads' requests (decoded one by one on a loaded machine) meet in one batch
    srv = Server("--preload", "classify:lenet5_digits", "--preload", f"detect:{yolo_checkpoint}",
                 "--preload", f"segment:{unet}", "--device", "cpu", "--max-batch", "8", "--batch-wait-ms", "300",
                 env=serve_env)
    yield srv
    srv.stop()


def post(url: str, data: bytes, name: str):
    return request(f"{url}&name={name}", data, headers={"Content-Type": "application/octet-stream"})


def together(url: str, uploads: list[tuple[str, bytes]]) -> list:
    """Every upload from its own thread, released at the same moment; answers in upload order."""
    answers: list = [None] * len(uploads)
    start = threading.Barrier(len(uploads))

    def one(i: int) -> None:
        start.wait()
        answers[i] = post(url, uploads[i][1], uploads[i][0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(uploads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def batching(srv: Server) -> dict:
    status, health = request(f"{srv.url}/healthz")
    assert status == 200
    return health["batching"]


def check_batched_equals_alone(srv: Server, url: str, uploads: list[tuple[str, bytes]]) -> dict:
    alone = [post(url, data, name) for name, data in uploads]  # one at a time: each its own batch
    before = batching(srv)
    concurrent = together(url, uploads)
    after = batching(srv)
    assert [status for status, _ in concurrent] == [200] * len(uploads), concurrent
    assert [without_ms(r) for _, r in concurrent] == [without_ms(r) for _, r in alone]
    assert [r["path"] for _, r in concurrent] == [name for name, _ in uploads]
    assert after["requests"] - before["requests"] == len(uploads)
    assert after["batches"] - before["batches"] < len(uploads)  # some requests shared a forward pass
    return after


def test_concurrent_classify_requests_run_as_one_batch_with_the_records_of_single_requests(batching_server):
    uploads = [(path.name, path.read_bytes()) for path in DIGITS[:8]]
    # a lone request does not wait out the 300 ms window: no other request is on its way
    start = time.perf_counter()
    for name, data in uploads:
        assert post(f"{batching_server.url}/classify?model=lenet5_digits", data, name)[0] == 200
    assert time.perf_counter() - start < 0.3 * len(uploads)
    after = check_batched_equals_alone(batching_server, f"{batching_server.url}/classify?model=lenet5_digits&top_k=3",
                                       uploads)
    assert after["largest"] > 1 and after["max_batch"] == 8
    status, models = request(f"{batching_server.url}/models")
    assert models["batching"]["largest"] == after["largest"]


def test_concurrent_detect_and_segment_requests_of_mixed_sizes_give_the_single_records(batching_server, images,
                                                                                      yolo_checkpoint, unet):
    uploads = list(images.items())
    detected = check_batched_equals_alone(batching_server,
                                          f"{batching_server.url}/detect?weights={yolo_checkpoint}&conf=0.05", uploads)
    answers = [post(f"{batching_server.url}/detect?weights={yolo_checkpoint}&conf=0.05", d, n) for n, d in uploads]
    assert any(r["result"]["detections"] for _, r in answers)  # the comparison has boxes to compare
    assert [r["result"]["size"] for _, r in answers] == [[int(s) for s in n.split("_")[1][:-4].split("x")]
                                                          for n, _ in uploads]
    check_batched_equals_alone(batching_server, f"{batching_server.url}/segment?weights={unet}", uploads)
    assert detected["largest"] > 1


def test_a_corrupt_image_among_concurrent_good_ones_fails_alone(batching_server):
    uploads = [(path.name, path.read_bytes()) for path in DIGITS[:7]]
    alone = [post(f"{batching_server.url}/classify?model=lenet5_digits&top_k=2", data, name) for name, data in uploads]
    uploads.insert(3, ("broken.png", b"\x89PNG\r\n\x1a\n this is no png"))
    answers = together(f"{batching_server.url}/classify?model=lenet5_digits&top_k=2", uploads)
    assert answers[3] == (422, {"path": "broken.png", "error": "truncated or corrupt PNG (no IEND chunk)"})
    good = answers[:3] + answers[4:]
    assert [status for status, _ in good] == [200] * 7
    assert [without_ms(r) for _, r in good] == [without_ms(r) for _, r in alone]


def test_max_batch_1_runs_every_request_alone(serve_env):
    srv = Server("--preload", "classify:lenet5_digits", "--max-batch", "1", "--batch-wait-ms", "300", env=serve_env)
    try:
        url = f"{srv.url}/classify?model=lenet5_digits&top_k=3"
        uploads = [(path.name, path.read_bytes()) for path in DIGITS[:8]]
        alone = [post(url, data, name) for name, data in uploads]
        answers = together(url, uploads)
        assert [without_ms(r) for _, r in answers] == [without_ms(r) for _, r in alone]
        stats = batching(srv)
        assert (stats["max_batch"], stats["largest"], stats["requests"], stats["batches"]) == (1, 1, 16, 16)
        assert stats["sizes"] == {"1": 16}
    finally:
        srv.stop()


def test_a_forward_pass_that_fails_is_rerun_per_request_so_only_the_bad_sample_fails():
    """In-process, with the real LeNet-5: a sample the network cannot take (object dtype, but the batch's
    shape) fails its batch's pass; the batcher then runs each request alone, and only that one fails."""
    import cvtool
    from cvtool.serve.batching import Batcher

    clf = cvtool.Classifier("lenet5_digits", top_k=2, device="cpu", backend="torch")  # never a cached export
    import cv2

    rgbs = [cv2.imread(str(path))[..., ::-1].copy() for path in DIGITS[:4]]
    prepared = [clf.prepare(rgb) for rgb in rgbs]
    name, rgb, sample, ms = prepared[2]
    prepared[2] = (name, rgb, sample.astype(object), ms)
    expected = [clf(rgb).to_dict()["result"] for rgb in rgbs]

    async def main():
        batcher = Batcher(max_batch=8, wait_ms=200)
        outcomes = await asyncio.gather(*(batcher.submit(clf, p) for p in prepared), return_exceptions=True)
        await batcher.close()
        return outcomes, batcher.stats()

    outcomes, stats = asyncio.run(main())
    assert isinstance(outcomes[2], Exception)
    assert [o.to_dict()["result"] for i, o in enumerate(outcomes) if i != 2] == expected[:2] + expected[3:]
    assert (stats["requests"], stats["retried_alone"], stats["largest"]) == (4, 4, 4)
    assert stats["sizes"] == {"1": 4, "4": 1}
    assert np.isfinite([o.prob for i, o in enumerate(outcomes) if i != 2]).all()


def test_a_batch_that_raises_what_asyncio_refuses_answers_and_the_lane_lives_on():
    """A pass raising StopIteration (which an asyncio future refuses) is answered as a RuntimeError, and later
    requests to the same object are still answered: a dead collector would leave them waiting for ever."""
    from cvtool.serve.batching import Batcher

    class Flaky:
        spec = SimpleNamespace(name="classify")
        calls = 0

        def batch_key(self, prepared):
            return None

        def predict_prepared(self, prepared):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise StopIteration("first pass")
            return [f"ok {p}" for p in prepared]

    async def main():
        batcher = Batcher(max_batch=4, wait_ms=0)
        obj = Flaky()
        first = await asyncio.gather(batcher.submit(obj, "a"), return_exceptions=True)
        later = await asyncio.wait_for(batcher.submit(obj, "b"), timeout=10)
        await batcher.close()
        return first[0], later

    first, later = asyncio.run(main())
    assert isinstance(first, RuntimeError) and "StopIteration: first pass" in str(first)
    assert later == "ok b"


def test_the_thin_client_keeps_requests_in_flight_so_one_folder_is_batched(batching_server, serve_env, unet,
                                                                           tmp_path):
    """`cvtool segment DIR` through the server: with CVTOOL_SERVER_IN_FLIGHT=4 (the default) the files of one
    client share forward passes, with 1 each runs alone; the records, their order and the exit code are the
    same, a bad file among them one error record in its place.

    A forward pass here (the U-Net at 384 x 384, one thread) takes tens of milliseconds, longer than the client
    takes to send its next requests, so they are on their way, or queued, when the server forms a batch. (With
    LeNet's sub-millisecond pass each request could be answered before the next one reached the server: a
    batch never waits for requests that are not on their way, and CI once saw every request run alone.)"""
    import subprocess
    import sys

    import cv2

    from conftest import ROOT, jsonl

    folder = tmp_path / "photos"
    folder.mkdir()
    photo = cv2.imread(str(SAMPLES / "photos" / "astronaut.jpg"))
    for i in range(10):
        cv2.imwrite(str(folder / f"crop{i}.png"), photo[i * 12 : i * 12 + 384, i * 10 : i * 10 + 384])
    (folder / "crop4b.png").write_bytes(b"not a png")  # sorts among the good ones
    outcomes = {}
    for in_flight in ("1", "4"):
        before = batching(batching_server)
        run = subprocess.run([sys.executable, "-m", "cvtool", "segment", str(folder), "--weights", str(unet),
                              "-f", "jsonl"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                             env={**serve_env, "CVTOOL_SERVER": batching_server.url,
                                  "CVTOOL_SERVER_IN_FLIGHT": in_flight})
        after = batching(batching_server)
        outcomes[in_flight] = (run.returncode, [without_ms(r) for r in jsonl(run.stdout)],
                               after["requests"] - before["requests"], after["batches"] - before["batches"])
    assert outcomes["1"][:2] == outcomes["4"][:2]
    code, records, requests, batches = outcomes["4"]
    assert code == 1 and [Path(r["path"]).name for r in records] == sorted(p.name for p in folder.iterdir())
    assert "error" in records[5] and all("error" not in r for i, r in enumerate(records) if i != 5)
    assert outcomes["1"][2:] == (10, 10)  # one after another: every request its own pass
    assert requests == 10 and batches < 10  # four on their way at once: some shared a pass
    bad = subprocess.run([sys.executable, "-m", "cvtool", "classify", str(folder), "--model", "lenet5_digits"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**serve_env, "CVTOOL_SERVER": batching_server.url, "CVTOOL_SERVER_IN_FLIGHT": "0"})
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == "cvtool: CVTOOL_SERVER_IN_FLIGHT='0': expected a whole number >= 1"


def test_a_batch_stops_growing_at_max_pixels_and_a_larger_input_runs_alone(unet):
    """In-process, the real U-Net: requests whose inputs would pass --max-batch-pixels together go in the next
    batch (none is lost or reordered); one input larger than the bound runs alone; the records are those of
    single calls."""
    import cvtool
    from cvtool.serve.batching import Batcher

    seg = cvtool.Segmenter(weights=unet, device="cpu")
    rng = np.random.default_rng(0)
    rgbs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    rgbs.insert(2, rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))  # 12,288 pixels: over the bound alone
    prepared = [seg.prepare(rgb) for rgb in rgbs]
    assert [seg.input_pixels(p) for p in prepared] == [4096, 4096, 12288, 4096, 4096, 4096]
    expected = [seg(rgb).to_dict()["result"] for rgb in rgbs]

    async def main():
        batcher = Batcher(max_batch=8, wait_ms=200, max_pixels=3 * 4096)
        outcomes = await asyncio.gather(*(batcher.submit(seg, p) for p in prepared))
        await batcher.close()
        return outcomes, batcher.stats()

    outcomes, stats = asyncio.run(main())
    assert [o.to_dict()["result"] for o in outcomes] == expected
    # queued in order: [64, 64] (the large one does not fit), [large] alone, [64, 64, 64]; none over 3 x 4096
    assert (stats["requests"], stats["batches"], stats["max_pixels"]) == (6, 3, 3 * 4096)
    assert stats["sizes"] == {"1": 1, "2": 1, "3": 1}


def test_a_request_whose_size_cannot_be_had_fails_alone_and_the_lane_lives_on():
    """A request whose size cannot be had (the task object's input_pixels raises) is answered with that error,
    alone, first in its batch or not: the others of its batch are served, nothing is left waiting."""
    from cvtool.serve.batching import Batcher

    class Odd:
        spec = SimpleNamespace(name="classify")

        def batch_key(self, prepared):
            return None

        def input_pixels(self, prepared):
            if prepared == "bad":
                raise ValueError("no size")
            return 1

        def predict_prepared(self, prepared):
            return [f"ok {p}" for p in prepared]

    async def main():
        batcher = Batcher(max_batch=4, wait_ms=200, max_pixels=10)
        obj = Odd()
        together = asyncio.gather(*(batcher.submit(obj, p) for p in ("a", "bad", "b")), return_exceptions=True)
        first = await asyncio.wait_for(together, timeout=10)
        alone = await asyncio.wait_for(asyncio.gather(batcher.submit(obj, "bad"), return_exceptions=True), timeout=10)
        later = await asyncio.wait_for(batcher.submit(obj, "good"), timeout=10)
        await batcher.close()
        return first, alone[0], later, batcher.stats()

    first, alone, later, stats = asyncio.run(main())
    assert first[0] == "ok a" and first[2] == "ok b"  # the others of its batch are served
    assert isinstance(first[1], ValueError) and str(first[1]) == "no size"
    assert isinstance(alone, ValueError) and str(alone) == "no size"
    assert later == "ok good" and stats["requests"] == 3  # a, b together, then good
