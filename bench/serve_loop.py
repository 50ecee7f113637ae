"""`cvtool serve` against the shell loop it is for, and under concurrent load.

    python bench/serve_loop.py [--calls 20] [--requests 2000] [--clients 8]

1. verify-face in a loop: N `cvtool verify-face A B -f jsonl` processes on real photos
   (../shared/datasets/faces: `--pattern reference`, one reference photo against N others, the loop the
   server's face cache is for; or `neighbours`, each photo against the next in sorted order), and the
   sample astronaut against a mirrored copy N times. Each pair is run once without the server and once
   with CVTOOL_SERVER set, alternately (so other load on the machine falls on both alike); `--passes 2`
   runs the whole loop again (a script re-run: every photo then in the server's face cache). Per pass:
   seconds per call (median and mean), the speedup, the face cache's hits and misses, the load average;
   and whether every record (all but `ms`) and exit code is identical between the two sides.
2. /detect throughput: a random-weight YOLO checkpoint (speed does not depend on the values) on 320 px
   letterboxes of 640x480 JPEGs, from 1 client and from `--clients` concurrent clients (keep-alive-free
   urllib, as the thin client sends): images/s. Two servers run side by side, one batching across requests
   (`--max-batch`, default 8) and one with `--max-batch 1` (each request its own forward pass); they are
   measured in turn, `--rounds` times, in alternating order, so that other load falls on both alike; each
   figure with the load average before and after it, and the batch sizes the server counted (/healthz).
3. Memory: the batching server's RSS after warm-up and after `--requests` more /detect requests.
4. One client's folder: `cvtool detect DIR -f jsonl` (`--folder` JPEGs as in 2) through a batching server, the
   thin client sending one request at a time (CVTOOL_SERVER_IN_FLIGHT=1) or 4 at once (the default),
   alternating, `--rounds` times each: wall seconds of the whole command, images/s, and whether the records
   (all but `ms`) are identical.

Talks to 127.0.0.1 only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FACES = ROOT.parent / "shared" / "datasets" / "faces"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: list[str], env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "cvtool", "serve", "--port", str(port), *args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not come up in 300 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def face_pairs(n: int, tmp: Path, photos_from: str, pattern: str) -> tuple[list[tuple[str, str]], str]:
    photos = sorted(str(p) for p in FACES.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(photos) >= 2 and photos_from == "faces":
        if pattern == "reference":  # the first photo against each of the others (cycling when N is larger)
            others = photos[1:]
            return ([(photos[0], others[i % len(others)]) for i in range(n)],
                    f"{FACES}: {Path(photos[0]).relative_to(FACES)} against each of the next {min(n, len(others))}")
        # neighbours in sorted order: mostly the same person, with a change of person at each folder boundary
        return ([(photos[i % len(photos)], photos[(i + 1) % len(photos)]) for i in range(n)],
                f"{FACES}: each photo against the next in sorted order")
    import cv2

    astronaut = ROOT / "sample_images" / "photos" / "astronaut.jpg"
    mirrored = tmp / "astronaut_mirrored.jpg"
    cv2.imwrite(str(mirrored), cv2.imread(str(astronaut))[:, ::-1])
    return [(str(astronaut), str(mirrored))] * n, "sample_images/photos/astronaut.jpg vs a mirrored copy"


def outcome(stdout: str, code: int):
    """The record as printed, less its `ms`, and the exit code: what must be identical on both sides."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    if not lines:
        return ("no record", code)
    return ({k: v for k, v in lines[0].items() if k != "ms"}, code)


def kind(result) -> str:
    record = result[0]
    if not isinstance(record, dict):
        return "error"
    return "error" if "error" in record else ("same" if record["result"]["same"] else "different")


def per_call(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds), 3), "mean": round(statistics.mean(seconds), 3)}


def face_cache(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/healthz", timeout=30) as response:
        return json.loads(response.read())["face_cache"]


def verify_loop(n: int, env: dict, tmp: Path, photos_from: str, pattern: str, passes: int) -> dict:
    pairs, source = face_pairs(n, tmp, photos_from, pattern)
    proc, url = start_server(["--preload", "verify-face"], env, tmp / "serve-verify.log")
    runs, mismatches, counts = [], [], {"same": 0, "different": 0, "error": 0}
    try:
        for number in range(passes):
            local_s, remote_s = [], []
            load_before, cache_before = os.getloadavg(), face_cache(url)
            for a, b in pairs:
                results = []
                for times, extra in ((local_s, {}), (remote_s, {"CVTOOL_SERVER": url})):
                    start = time.perf_counter()
                    done = subprocess.run([sys.executable, "-m", "cvtool", "verify-face", a, b, "-f", "jsonl"],
                                          capture_output=True, text=True, env={**env, **extra}, cwd=ROOT)
                    times.append(time.perf_counter() - start)
                    results.append(outcome(done.stdout, done.returncode))
                print(f"{Path(b).name}: {local_s[-1]:.2f} s without the server, {remote_s[-1]:.2f} s with it",
                      file=sys.stderr, flush=True)  # a run cut short still says what it measured
                if results[0] != results[1]:
                    mismatches.append([a, b, *map(str, results)])
                if number == 0:
                    counts[kind(results[0])] += 1
            cache = face_cache(url)
            runs.append({
                "pass": number + 1, "local_s_per_call": per_call(local_s), "server_s_per_call": per_call(remote_s),
                "speedup_median": round(statistics.median(local_s) / statistics.median(remote_s), 1),
                "speedup_mean": round(statistics.mean(local_s) / statistics.mean(remote_s), 1),
                "face_cache_hits": cache["hits"] - cache_before["hits"],
                "face_cache_misses": cache["misses"] - cache_before["misses"],
                "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            })
            print(json.dumps(runs[-1]), file=sys.stderr)
        server_rss = rss_mb(proc.pid)
    finally:
        stop(proc)
    return {
        "photos": source, "calls_per_pass": n, "passes": runs,
        "records_identical": not mismatches, "mismatches": mismatches[:5],
        "verdict_counts": counts, "server_rss_mb": round(server_rss, 1),
    }


def yolo_checkpoint(tmp: Path) -> Path:
    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector

    net = YoloDetector(num_classes=2, img_size=320)
    path = tmp / "yolo-random.pt"
    save_checkpoint(path, arch="yolo", task="detect", state_dict=net.state_dict(), classes=["a", "b"],
                    preprocess=YOLO_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"anchors": net.anchors.tolist(), "img_size": 320}})
    return path


def jpegs(count: int) -> list[bytes]:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
        out.append(cv2.imencode(".jpg", image)[1].tobytes())
    return out


def healthz(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/healthz", timeout=30) as response:
        return json.loads(response.read())


def detect_load(env: dict, tmp: Path, clients: int, requests: int, seconds: float, max_batch: int, wait_ms: float,
                rounds: int) -> dict:
    weights = yolo_checkpoint(tmp)
    images = jpegs(16)
    servers: dict[str, tuple] = {}
    for batch in (max_batch, 1):
        label = f"max_batch_{batch}"
        servers[label] = start_server(["--preload", f"detect:{weights}", "--device", "cpu", "--max-batch", str(batch),
                                       "--batch-wait-ms", str(wait_ms)], env, tmp / f"serve-detect-{label}.log")

    def one(url: str, i: int) -> None:
        req = urllib.request.Request(f"{url}/detect?weights={weights}&name=frame.jpg", data=images[i % len(images)],
                                     method="POST", headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=120) as response:
            assert response.status == 200
            response.read()

    def throughput(url: str, workers: int) -> dict:
        before, load_before = healthz(url)["batching"], os.getloadavg()[0]
        count, start = 0, time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            while time.perf_counter() - start < seconds:
                list(pool.map(lambda i: one(url, i), range(count, count + 4 * workers)))
                count += 4 * workers
        rate = count / (time.perf_counter() - start)
        after = healthz(url)["batching"]
        passes = after["batches"] - before["batches"]
        return {"images_per_s": round(rate, 1), "mean_batch": round((after["requests"] - before["requests"]) / passes, 2),
                "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}

    runs: dict[str, dict[str, list]] = {label: {"1": [], str(clients): []} for label in servers}
    try:
        for proc, url in servers.values():
            for i in range(32):  # warm-up: first passes, and every server thread (each grows its allocator arena)
                one(url, i)
            throughput(url, clients)
        for number in range(rounds):  # alternating order, so that a change of load falls on both
            order = list(servers) if number % 2 == 0 else list(servers)[::-1]
            for workers in (1, clients):
                for label in order:
                    runs[label][str(workers)].append(throughput(servers[label][1], workers))
                    print(label, workers, json.dumps(runs[label][str(workers)][-1]), file=sys.stderr)
        proc, url = servers[f"max_batch_{max_batch}"]
        rss = [rss_mb(proc.pid)]
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for quarter in range(4):
                list(pool.map(lambda i: one(url, i), range(quarter * requests // 4, (quarter + 1) * requests // 4)))
                rss.append(rss_mb(proc.pid))
        load_s = time.perf_counter() - start
        counted = {label: healthz(url)["batching"] for label, (_, url) in servers.items()}
    finally:
        for proc, _ in servers.values():
            stop(proc)

    def median_rate(label: str, workers: int) -> float:
        return round(statistics.median(r["images_per_s"] for r in runs[label][str(workers)]), 1)

    batched, alone = f"max_batch_{max_batch}", "max_batch_1"
    return {
        "model": "yolo (random weights), 320 px letterbox of 640x480 JPEGs, device cpu",
        "server_threads": env.get("OMP_NUM_THREADS"), "batch_wait_ms": wait_ms, "seconds_per_figure": seconds,
        "rounds": rounds,
        "images_per_s_median": {label: {"1_client": median_rate(label, 1), f"{clients}_clients":
                                        median_rate(label, clients)} for label in servers},
        f"batching_gain_{clients}_clients": round(median_rate(batched, clients) / median_rate(alone, clients), 2),
        "batching_gain_1_client": round(median_rate(batched, 1) / median_rate(alone, 1), 2),
        f"concurrency_gain_{batched}": round(median_rate(batched, clients) / median_rate(batched, 1), 2),
        f"concurrency_gain_{alone}": round(median_rate(alone, clients) / median_rate(alone, 1), 2),
        "runs": runs, "server_batching_counters": counted,
        "rss_mb_after_warmup_then_each_quarter": [round(r, 1) for r in rss],
        "rss_growth_mb": round(rss[-1] - rss[0], 1), "requests": requests,
        "requests_per_s_under_load": round(requests / load_s, 1),
    }


def client_folder(env: dict, tmp: Path, count: int, max_batch: int, wait_ms: float, rounds: int) -> dict:
    weights = yolo_checkpoint(tmp)
    folder = tmp / "frames"
    folder.mkdir()
    for i, data in enumerate(jpegs(count)):
        (folder / f"frame{i:03d}.jpg").write_bytes(data)
    proc, url = start_server(["--preload", f"detect:{weights}", "--device", "cpu", "--max-batch", str(max_batch),
                              "--batch-wait-ms", str(wait_ms)], env, tmp / "serve-folder.log")
    runs: dict[str, list] = {"1": [], "4": []}
    records: dict[str, list] = {}
    try:
        for number in range(rounds + 1):  # the first round warms up (server threads, page cache) and is not kept
            for in_flight in (("1", "4") if number % 2 == 0 else ("4", "1")):
                before, load = healthz(url)["batching"], os.getloadavg()[0]
                start = time.perf_counter()
                run = subprocess.run([sys.executable, "-m", "cvtool", "detect", str(folder), "--weights", str(weights),
                                      "-f", "jsonl"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                                     env={**env, "CVTOOL_SERVER": url, "CVTOOL_SERVER_IN_FLIGHT": in_flight})
                seconds = time.perf_counter() - start
                if run.returncode != 0:
                    raise SystemExit(f"detect through the server failed: {run.stderr}")
                after = healthz(url)["batching"]
                records[in_flight] = [{k: v for k, v in json.loads(line).items() if k != "ms"}
                                      for line in run.stdout.splitlines()]
                if number:
                    runs[in_flight].append({"seconds": round(seconds, 2), "images_per_s": round(count / seconds, 1),
                                            "mean_batch": round((after["requests"] - before["requests"])
                                                                / max(1, after["batches"] - before["batches"]), 2),
                                            "loadavg_1min_before_after": [round(load, 2),
                                                                          round(os.getloadavg()[0], 2)]})
                    print("folder", in_flight, json.dumps(runs[in_flight][-1]), file=sys.stderr)
    finally:
        stop(proc)
    median = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    return {"images": count, "model": "yolo (random weights), 320 px letterbox of 640x480 JPEGs, device cpu",
            "server_threads": env.get("OMP_NUM_THREADS"), "max_batch": max_batch, "batch_wait_ms": wait_ms,
            "seconds_median": {f"in_flight_{k}": round(v, 2) for k, v in median.items()},
            "images_per_s_median": {f"in_flight_{k}": round(count / v, 1) for k, v in median.items()},
            "gain_4_in_flight": round(median["1"] / median["4"], 2),
            "records_identical": records["1"] == records["4"] and len(records["1"]) == count, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20, help="verify-face calls each way (the issue: 50)")
    parser.add_argument("--requests", type=int, default=2000, help="/detect requests for the memory figure")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15, help="per throughput measurement")
    parser.add_argument("--max-batch", type=int, default=8, help="the batching /detect server's --max-batch "
                        "(measured against --max-batch 1)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="both /detect servers' --batch-wait-ms")
    parser.add_argument("--rounds", type=int, default=2, help="/detect measurements of each server, alternating")
    parser.add_argument("--threads", type=int, default=None, help="the servers' compute threads (OMP_NUM_THREADS; "
                        "default: as the environment says)")
    parser.add_argument("--photos", default="faces,sample", help="faces (../shared/datasets/faces), sample "
                        "(the astronaut vs a mirrored copy), or both")
    parser.add_argument("--pattern", choices=("reference", "neighbours"), default="reference",
                        help="the faces loop: one reference photo against N others, or each photo against the next")
    parser.add_argument("--passes", type=int, default=2, help="times the faces loop is run (2: a re-run, every "
                        "photo in the face cache)")
    parser.add_argument("--skip-verify", action="store_true", help="keep the verify-face figures of the last run")
    parser.add_argument("--skip-detect", action="store_true", help="keep the /detect figures of the last run")
    parser.add_argument("--folder", type=int, default=64, help="JPEGs in the one-client folder (0: skip it)")
    args = parser.parse_args()
    env = {**os.environ, "CVTOOL_NO_PROGRESS": "1"}
    env.pop("CVTOOL_SERVER", None)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    figures: dict = {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        for photos in ([] if args.skip_verify else args.photos.split(",")):
            passes = args.passes if photos == "faces" else 1  # the sample loop repeats one pair anyway
            figures[f"verify_face_loop_{photos}"] = verify_loop(args.calls, env, Path(tmp), photos, args.pattern,
                                                                passes)
            print(json.dumps(figures[f"verify_face_loop_{photos}"]), file=sys.stderr)
        if not args.skip_detect:
            figures["detect_load"] = detect_load(env, Path(tmp), args.clients, args.requests, args.seconds,
                                                 args.max_batch, args.batch_wait_ms, args.rounds)
        if args.folder:
            figures["client_folder"] = client_folder(env, Path(tmp), args.folder, args.max_batch, args.batch_wait_ms,
                                                     args.rounds)
    write_results("serve_loop", {**earlier(figures), **figures})


def earlier(figures: dict) -> dict:
    """The sections of the last recorded run that this one skipped, each marked with that run's date and
    command (so a re-measurement of one part does not erase the other)."""
    try:
        last = json.loads((RESULTS / "serve_loop.json").read_text())
    except (OSError, ValueError):
        return {}
    kept = {}
    for name, section in last.get("figures", {}).items():
        if name not in figures and isinstance(section, dict):
            kept[name] = {**section, "from_earlier_run": section.get("from_earlier_run")
                          or {"date": last.get("date"), "command": last.get("command")}}
    return kept


if __name__ == "__main__":
    main()
