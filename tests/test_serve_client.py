"""The thin client's --out (CVTOOL_SERVER): `cvtool stylize --model` and `--out DIR` of classify, detect and segment
sent to a real `cvtool serve` on a free port write, on the client's machine, the files a local run writes: same
names, same bytes (both sides run PyTorch on the CPU with one thread, and the client encodes what it writes with
the local run's own encoders, so nothing is compared with a tolerance), the same records and exit codes; what stays
local says so in one line. Tiny random-weight networks saved here keep it fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT, SAMPLES, jsonl, save_random_unet, save_random_yolo

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import test_serve  # noqa: E402 - after the skips
from test_serve import Server, without_ms  # noqa: E402

serve_env = test_serve.serve_env  # the fixture

MANIFEST = ".cvtool-outputs"  # lists sizes and mtimes: compared by the names it lists


@pytest.fixture(scope="module")
def env(serve_env) -> dict:
    """The server's and the client's environment: test_serve's (caches, one thread, no CVTOOL_SERVER)."""
    return serve_env


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Path:
    """The server's --allow-paths: a YOLO detector, a U-Net and a fast-style network, random weights (seed 0)."""
    import torch

    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.transformer_net import FAST_STYLE_PREPROCESS, TransformerNet

    root = tmp_path_factory.mktemp("nets")
    save_random_yolo(root / "yolo.pt", ["square", "disk"])
    unet = torch.load(save_random_unet(root / "unet.pt", ["background", "shape"]), weights_only=True)
    unet["state_dict"]["head.bias"][1] += 0.097  # about half of the photos' pixels become "shape"
    save_checkpoint(root / "unet.pt", arch="unet", task="segment", state_dict=unet["state_dict"],
                    classes=unet["classes"], preprocess=unet["preprocess"], extra={"arch_kwargs": unet["arch_kwargs"]})
    torch.manual_seed(0)
    save_checkpoint(root / "style.pt", arch="fast_style", task="stylize",
                    state_dict=TransformerNet(width=4).state_dict(), preprocess=FAST_STYLE_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"width": 4}})
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """Small photos: a JPEG, a PNG, another `chelsea` from a subfolder (named with its path's hash), a bad file."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "sub").mkdir()
    chelsea = cv2.resize(cv2.imread(str(SAMPLES / "photos" / "chelsea.jpg")), (90, 60), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(cv2.imread(str(SAMPLES / "photos" / "coffee.jpg")), (72, 48), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(root / "chelsea.jpg"), chelsea)
    cv2.imwrite(str(root / "coffee.png"), coffee)
    cv2.imwrite(str(root / "sub" / "chelsea.jpg"), chelsea[:, ::-1])
    (root / "bad.png").write_bytes(b"not an image")
    return [root / "chelsea.jpg", root / "coffee.png", root / "sub" / "chelsea.jpg", root / "bad.png"]


@pytest.fixture(scope="module")
def server(env, nets):
    srv = Server("--allow-paths", str(nets), env=env)
    yield srv
    srv.stop()


def cvtool(env: dict, *args, server: Server | None = None, importtime: bool = False):
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "cvtool", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**env, "CVTOOL_SERVER": server.url} if server else env)


def files(root: Path) -> dict:
    """Every file under `root` by relative path (a manifest by the names it lists: its sizes and mtimes differ)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(root))
            if path.name == MANIFEST:
                found[rel] = sorted(json.loads(line)["name"] for line in path.read_text().splitlines())
            else:
                found[rel] = path.read_bytes()
    return found


def same_run(local, remote, local_out: Path, remote_out: Path) -> list[dict]:
    """The two runs printed the same records (outputs named under their own --out) with the same exit code and
    error lines, and wrote the same files; the local records."""
    assert remote.returncode == local.returncode, (local.stderr, remote.stderr)
    mine = [without_ms(r) for r in jsonl(local.stdout)]
    theirs = [json.loads(json.dumps(without_ms(r)).replace(str(remote_out), str(local_out)))
              for r in jsonl(remote.stdout)]
    assert theirs == mine
    # stderr: after the first line (the model loaded here / the server used), the same error and summary lines
    lines = lambda run: [line for line in run.stderr.splitlines() if line.startswith("cvtool: ")][1:]  # noqa: E731
    assert lines(remote) == lines(local)
    assert files(remote_out) == files(local_out)
    return jsonl(local.stdout)


def no_torch(run) -> None:
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time")}
    assert "cvtool.serve.client" in imported
    assert not {m for m in imported if m == "torch" or m.startswith(("torch.", "torchvision"))}


def test_detect_out_with_crops_and_labels_is_the_local_runs(env, server, nets, inputs, tmp_path):
    args = ["detect", *inputs, "--weights", nets / "yolo.pt", "--conf", "0.2", "--save-crops", "--save-txt", "-f",
            "jsonl", "--out"]
    local = cvtool(env, *args, tmp_path / "local")
    remote = cvtool(env, *args, tmp_path / "remote", server=server, importtime=True)
    records = same_run(local, remote, tmp_path / "local", tmp_path / "remote")
    assert local.returncode == 1
    assert records[-1] == {"path": str(inputs[-1]), "error": "not an image (unrecognised format)"}
    written = files(tmp_path / "remote")
    assert {"chelsea.detect.jpg", "coffee.detect.jpg", "classes.txt", "labels/chelsea.txt"} <= set(written)
    assert written["classes.txt"] == b"square\ndisk\n"
    assert any(".crop000-" in name for name in written)  # the random detector does find boxes
    assert sum(name.endswith(".detect.jpg") for name in written) == 3  # the second chelsea: chelsea-<hash>.detect.jpg
    no_torch(remote)
    # a re-run with --skip-existing sends only the input without outputs (the bad file, which fails again)
    again = cvtool(env, *args, tmp_path / "remote", "--skip-existing", server=server)
    assert again.returncode == 1 and jsonl(again.stdout) == [records[-1]]
    assert "0 ok, 1 failed, 3 skipped (output exists)" in again.stderr
    assert server.text().count("POST /detect ") == 4 + 1


def test_detect_coco_and_yolo_formats_through_the_server_are_the_local_documents(env, server, nets, inputs, tmp_path):
    """-f coco lists the server's detector's own COCO categories (here ids a checkpoint stored: 7 and 42), -f yolo
    its lines: the bytes a local run prints, the same exit code (the bad file fails)."""
    import torch

    from cvtool.models.checkpoint import COCO_IDS_FIELD, save_checkpoint

    stored = torch.load(nets / "yolo.pt", weights_only=True)
    coco_yolo = nets / "yolo_coco_ids.pt"
    save_checkpoint(coco_yolo, arch="yolo", task="detect", state_dict=stored["state_dict"], classes=stored["classes"],
                    preprocess=stored["preprocess"],
                    extra={"arch_kwargs": stored["arch_kwargs"], COCO_IDS_FIELD: [7, 42]})
    printed = {}
    for fmt in ("coco", "yolo"):
        args = ["detect", *inputs, "--weights", coco_yolo, "--conf", "0.2", "-f", fmt]
        local, remote = cvtool(env, *args), cvtool(env, *args, server=server)
        assert local.returncode == remote.returncode == 1, (local.stderr, remote.stderr)
        assert remote.stdout == local.stdout and local.stdout
        printed[fmt] = local.stdout
    document = json.loads(printed["coco"])
    assert document["categories"] == [{"id": 7, "name": "square"}, {"id": 42, "name": "disk"}]
    assert document["annotations"]  # the random detector does find boxes


def test_segment_out_masks_and_overlays_are_the_local_runs(env, server, nets, inputs, tmp_path):
    args = ["segment", *inputs[:3], "--weights", nets / "unet.pt", "--alpha", "0.3", "--save-mask", "-f", "jsonl",
            "--out"]
    local = cvtool(env, *args, tmp_path / "local")
    remote = cvtool(env, *args, tmp_path / "remote", server=server, importtime=True)
    records = same_run(local, remote, tmp_path / "local", tmp_path / "remote")
    assert local.returncode == 0
    written = files(tmp_path / "remote")
    assert {"chelsea.mask.png", "chelsea.overlay.jpg", "coffee.mask.png", "coffee.overlay.png"} <= set(written)
    assert {c["label"] for r in records for c in r["result"]["classes"]} == {"background", "shape"}
    assert sum(".mask-" in name for name in written) == sum(len(r["result"]["classes"]) for r in records)
    no_torch(remote)


def test_segment_threshold_through_the_server_is_the_local_runs(env, server, nets, inputs, tmp_path):
    args = ["segment", *inputs[:2], "--weights", nets / "unet.pt", "--threshold", "0.45", "-f", "jsonl", "--out"]
    local = cvtool(env, *args, tmp_path / "local")
    records = same_run(local, cvtool(env, *args, tmp_path / "remote", server=server), tmp_path / "local",
                       tmp_path / "remote")
    plain = jsonl(cvtool(env, *args[:-5], "-f", "jsonl", server=server).stdout)
    assert [r["result"] for r in records] != [r["result"] for r in plain]  # the threshold reached the server


def test_classify_out_json_is_the_local_runs(env, server, tmp_path):
    digits = sorted((SAMPLES / "digits").glob("*.png"))[:3]
    args = ["classify", *digits, "--model", "lenet5_digits", "-k", "2", "-f", "jsonl", "--out"]
    local = cvtool(env, *args, tmp_path / "local")
    remote = cvtool(env, *args, tmp_path / "remote", server=server)
    same_run(local, remote, tmp_path / "local", tmp_path / "remote")
    assert local.returncode == 0 and len(files(tmp_path / "remote")) == 4  # three NAME.json and the manifest


def test_stylize_model_through_the_server_writes_the_local_images(env, server, nets, inputs, tmp_path):
    args = ["stylize", *inputs, "--model", nets / "style.pt", "-f", "jsonl", "--out"]
    local = cvtool(env, *args, tmp_path / "local")
    remote = cvtool(env, *args, tmp_path / "remote", server=server, importtime=True)
    records = same_run(local, remote, tmp_path / "local", tmp_path / "remote")
    assert local.returncode == 1 and records[0]["model"] == "fast_style" and records[0]["result"] == {"size": [60, 90]}
    assert sorted(files(tmp_path / "remote")) == sorted([MANIFEST, "chelsea.stylized.png", "coffee.stylized.png",
                                                         next(n for n in files(tmp_path / "local") if n.startswith(
                                                             "chelsea-"))])
    no_torch(remote)
    # one content, --out FILE: encoded by its suffix here (a JPEG), as locally; the table's columns too
    for name in ("local", "remote"):
        (tmp_path / f"one_{name}").mkdir()
    args = ["stylize", inputs[1], "--model", nets / "style.pt", "-f", "csv", "--out"]
    local = cvtool(env, *args, tmp_path / "one_local" / "styled.jpg")
    remote = cvtool(env, *args, tmp_path / "one_remote" / "styled.jpg", server=server)
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert remote.stdout.replace("one_remote", "one_local") == local.stdout and "height,width" in local.stdout
    assert (tmp_path / "one_remote" / "styled.jpg").read_bytes() == (tmp_path / "one_local" / "styled.jpg").read_bytes()


def test_stylize_refusals_are_the_local_lines(env, server, nets, inputs, tmp_path):
    # --out FILE with two contents: the local line, before anything is sent
    args = ["stylize", *inputs[:2], "--model", nets / "style.pt", "--out", tmp_path / "x.png"]
    local, remote = cvtool(env, *args), cvtool(env, *args, server=server)
    assert local.returncode == remote.returncode == 2
    assert remote.stderr.strip() == local.stderr.strip().splitlines()[-1] == (
        f"cvtool: --out {tmp_path / 'x.png'} is a file but 2 inputs were given; pass a directory")
    # an input is never overwritten: the same error line and exit 1
    content = tmp_path / "content.png"
    content.write_bytes(inputs[1].read_bytes())
    args = ["stylize", content, "--model", nets / "style.pt", "--out", content]
    local, remote = cvtool(env, *args), cvtool(env, *args, server=server)
    assert local.returncode == remote.returncode == 1
    line = f"cvtool: {content}: output {content} would overwrite the input; choose another --out"
    assert line in local.stderr.splitlines() and line in remote.stderr.splitlines()
    assert content.read_bytes() == inputs[1].read_bytes()
    # Gatys et al.'s optimisation stays local, in one line
    remote = cvtool(env, "stylize", inputs[0], inputs[1], server=server)
    assert remote.returncode == 2 and remote.stdout == ""
    assert remote.stderr.splitlines() == [
        "cvtool: stylize CONTENT STYLE (Gatys et al.'s optimisation, minutes of gradient steps) is not sent to the "
        "server, which runs --model networks only; unset CVTOOL_SERVER to run it locally"]


def test_videos_stay_local_and_save_flags_need_out(env, server, nets, inputs, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 16)
    remote = cvtool(env, "detect", clip, inputs[0], "--weights", nets / "yolo.pt", "-f", "jsonl", "--out",
                    tmp_path / "out", server=server)
    assert remote.returncode == 1
    assert f"cvtool: {clip}: videos and cameras are not sent to the server; unset CVTOOL_SERVER to run it locally" \
        in remote.stderr.splitlines()
    assert [r["path"] for r in jsonl(remote.stdout)] == [str(clip), str(inputs[0])]
    for flag, task in (("--save-crops", "detect"), ("--save-txt", "detect"), ("--save-mask", "segment")):
        remote = cvtool(env, task, inputs[0], flag, server=server)
        assert remote.returncode == 2 and remote.stderr.strip() == f"cvtool: {flag} needs --out DIR"
    remote = cvtool(env, "classify", inputs[0], "--skip-existing", server=server)
    assert remote.returncode == 2 and remote.stderr.strip() == "cvtool: --skip-existing needs --out DIR"


def test_client_prints_stylize_model_with_the_task_tables_feed_forward_columns():
    from cvtool import tasks
    from cvtool.serve import client

    spec = tasks.spec("stylize")
    mode = client.MODES[spec.name](spec, ["c.jpg"], {"model": "style.pt"}, None)
    assert mode.endpoint == "/stylize" and mode.table is spec.tables["feed_forward"]
    assert mode.table.columns == ("height", "width") and mode.table.rows({"size": [3, 5]}) == [[3, 5]]


def test_segment_png_answer_is_the_mask_with_the_record_in_a_header(server, nets, inputs):
    import io
    import urllib.request

    from PIL import Image

    url = f"{server.url}/segment?weights={nets / 'unet.pt'}&format=png&name=c.png"
    req = urllib.request.Request(url, data=inputs[1].read_bytes(), method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=120) as response:
        assert response.headers["content-type"] == "image/png"
        record = json.loads(response.headers["x-cvtool-record"])
        mask = np.asarray(Image.open(io.BytesIO(response.read())))
    assert record["path"] == "c.png" and record["result"]["size"] == list(mask.shape) == [48, 72]
    counts = {c["index"]: c["pixels"] for c in record["result"]["classes"]}
    assert counts == {int(i): int(n) for i, n in zip(*np.unique(mask, return_counts=True))}


def _default_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _tgkill():
    """glibc's tgkill (a signal to one thread of another process), or None where there is none."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True), "tgkill", None)


@pytest.mark.parametrize("to_thread", ["process", "request thread"])
def test_ctrl_c_stops_the_thin_client_at_once_with_requests_on_their_way(env, tmp_path, to_thread):
    """A server that takes its time: Ctrl-C ends the client at once (exit 130, one line), without waiting for
    the requests it has on their way (up to CVTOOL_SERVER_TIMEOUT each). The kernel may hand the signal to any
    thread; "request thread" sends it to one that waits on the server, not to the main one (which once waited
    until the request ended: this test's flaky failure under load)."""
    import signal
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    tgkill = _tgkill()
    if to_thread == "request thread" and tgkill is None:
        pytest.skip("needs Linux's tgkill to signal one thread of another process")

    arrived = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            arrived.set()
            time.sleep(20)
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    slow = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        digits = sorted((SAMPLES / "digits").glob("*.png"))[:3]
        proc = subprocess.Popen([sys.executable, "-m", "cvtool", "classify", *map(str, digits), "-f", "jsonl"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**env, "CVTOOL_SERVER": f"http://127.0.0.1:{slow.server_address[1]}"},
                                # SIGINT as a terminal's Ctrl-C finds it, whatever this test process inherited or
                                # an earlier test left (ignored or blocked, which exec keeps: in the full suite the
                                # signal once reached no handler at all)
                                preexec_fn=_default_sigint)
        assert arrived.wait(30)
        start = time.perf_counter()
        if to_thread == "process":
            proc.send_signal(signal.SIGINT)
        else:
            others = [int(tid) for tid in os.listdir(f"/proc/{proc.pid}/task") if int(tid) != proc.pid]
            assert others and tgkill(proc.pid, others[-1], signal.SIGINT) == 0
        _, stderr = proc.communicate(timeout=15)
        assert time.perf_counter() - start < 5
        assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "cvtool: interrupted"
    finally:
        slow.shutdown()
        slow.server_close()
