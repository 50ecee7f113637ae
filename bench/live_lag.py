"""A live stream faster than the model: does the lag between a frame's capture and its record stay bounded?

A real Motion JPEG camera on 127.0.0.1 (tests/mjpeg_camera.py: HTTP multipart at 60 fps, 640x360, each frame
carrying its number, so every lag is measured from the camera's own capture time) is read by
`cvtool.pipelines.video.run_video` into lenet5_digits padded by a sleep to a fixed 100 ms per frame (a 10 fps
model; the point is the reader, not the network). Three runs, figures in bench/results/live_lag.json:

1. newest-frame (the default for a live source) for `--seconds` (default 60): lag percentiles over the whole run
   and over its first and last 10 s, records/s, frames dropped, resident memory over the first and last 10 s;
2. `buffer=True` (every frame) for `--buffer-seconds` (default 15): every frame processed, and how fast the lag
   grows (seconds of lag per second of stream);
3. `--vid-stride 5` on 1280x720 files, Motion JPEG and MPEG-4 Part 2: reading cost per source frame of read() on
   every frame (what cvtool did before), grab() for the skipped ones, and cvtool's FrameSource (PyAV decoding
   only the kept frames of the intra-only Motion JPEG), in turns, best of 3.

Threads: torch 1, OpenCV 1 (set here). `python bench/live_lag.py --seconds 300` for a five-minute run (written to
bench/results/live_lag_300s.json; the default 60 s run to live_lag.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from _results import write_results  # noqa: E402
from mjpeg_camera import MjpegCamera, draw_frame, frame_number  # noqa: E402

SIZE = (640, 360)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    """Resident memory every 0.5 s while a run goes: (seconds since start, MB)."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.start = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.5):
            self.samples.append((time.monotonic() - self.start, rss_mb()))

    def close(self):
        self.stop.set()
        self.thread.join()


def slow_pipeline(model_ms: float):
    from cvtool.models.loading import load_model
    from cvtool.pipelines.classify import ClassifyPipeline

    class Slow(ClassifyPipeline):
        def predict(self, samples):
            start = time.perf_counter()
            results = super().predict(samples)
            left = model_ms / 1000 * len(samples) - (time.perf_counter() - start)
            if left > 0:
                time.sleep(left)
            return results

    return Slow(load_model("lenet5_digits", task="classify"), top_k=1)


def _pct(values, q) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1)


def lag_summary(lags: list[float]) -> dict:
    return {"n": len(lags), "p50_ms": _pct(lags, 50), "p95_ms": _pct(lags, 95), "max_ms": round(max(lags) * 1000, 1)}


def run_stream(pipeline, seconds: float, *, fps: float, buffer: bool | None) -> dict:
    from cvtool.io.video import NO_RECONNECT
    from cvtool.pipelines.video import run_video

    camera = MjpegCamera(fps=fps, size=SIZE)
    sampler = Sampler()
    got = []  # (seconds since the first record, lag s, camera frame number, record)
    records = run_video(pipeline, camera.url, batch_size=1, with_frames=True, buffer=buffer, reconnect=NO_RECONNECT)
    start = None
    try:
        for record, rgb, _, _ in records:
            now = time.monotonic()
            start = now if start is None else start
            if rgb is None:
                raise SystemExit(f"the stream failed: {record}")
            number = frame_number(rgb)
            got.append((now - start, now - camera.captured_at(number), number, record))
            if now - start >= seconds:
                break
    finally:
        records.close()
        sampler.close()
        camera.stop()
    lags = [lag for _, lag, _, _ in got]
    first = [lag for t, lag, _, _ in got if t < 10]
    last = [lag for t, lag, _, _ in got if t >= got[-1][0] - 10]
    numbers = [n for _, _, n, _ in got]
    mem_first = [mb for t, mb in sampler.samples if t < 10]
    mem_last = [mb for t, mb in sampler.samples if t >= sampler.samples[-1][0] - 10]
    figures = {
        "seconds": round(got[-1][0], 1),
        "camera_fps": fps,
        "records": len(got),
        "records_per_s": round(len(got) / max(got[-1][0], 1e-9), 2),
        "camera_frames_spanned": numbers[-1] - numbers[0] + 1,
        "lag_from_capture": lag_summary(lags),
        "lag_first_10s": lag_summary(first),
        "lag_last_10s": lag_summary(last),
        "reported_lag_ms_p50": round(float(np.median([r["lag_ms"] for *_, r in got])), 1),
        "rss_mb_max_first_10s": round(max(mem_first), 1) if mem_first else None,
        "rss_mb_max_last_10s": round(max(mem_last), 1) if mem_last else None,
    }
    if buffer is True:
        figures["every_frame"] = numbers == list(range(numbers[0], numbers[-1] + 1))
        slope = np.polyfit([t for t, *_ in got], lags, 1)[0]
        figures["lag_growth_s_per_s"] = round(float(slope), 3)
    else:
        figures["frames_dropped"] = sum(r["dropped"] for *_, r in got)
        figures["frames_lost_on_the_way"] = figures["camera_frames_spanned"] - len(got) - sum(
            r["dropped"] for *_, r in got[1:])
    return figures


def _numbered_video(path: Path, frames: int, fourcc: str, size=(1280, 720)) -> Path:
    """Numbered frames over noise-textured stripes (so each frame is a realistic amount of JPEG / MPEG-4 data)."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (size[1] // 2, size[0], 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30.0, size)
    for i in range(frames):
        frame = draw_frame(i, size)
        frame[size[1] // 2:] = np.roll(texture, 4 * i, axis=1)
        writer.write(frame)
    writer.release()
    return path


def stride_cost(stride: int, rounds: int = 3, frames: int = 150) -> list[dict]:
    """ms per source frame of a 1280x720 file with --vid-stride `stride`, three readers in turns: read() of every
    frame (cvtool before: decode + convert all), grab() for the skipped ones (OpenCV decodes them, converts only
    the kept), and cvtool's FrameSource (the same on a non-intra file; on Motion JPEG, PyAV decodes only the kept)."""
    from cvtool.io.video import FrameSource, IntraOnlyCapture, iter_frames

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for fourcc, suffix in (("MJPG", ".avi"), ("mp4v", ".mp4")):
            path = _numbered_video(Path(tmp) / f"clip{suffix}", frames, fourcc)

            def read_all() -> int:
                capture, kept, index = cv2.VideoCapture(str(path)), 0, 0
                while True:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    if index % stride == 0:
                        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                        kept += 1
                    index += 1
                capture.release()
                return kept

            def grab_skipped() -> int:
                capture = cv2.VideoCapture(str(path))
                kept = sum(1 for _ in iter_frames(capture, stride))
                capture.release()
                return kept

            def frame_source() -> int:
                source, kept = FrameSource(path, stride=stride), 0
                while source.grab():
                    if source.index % stride == 0:
                        source.retrieve()
                        kept += 1
                source.release()
                return kept

            readers = {"read_every_frame": read_all, "opencv_grab_skipped": grab_skipped, "cvtool": frame_source}
            times: dict[str, list[float]] = {name: [] for name in readers}
            for _ in range(rounds):
                for name, fn in readers.items():
                    start = time.perf_counter()
                    kept = fn()
                    times[name].append((time.perf_counter() - start) * 1000 / frames)
                    assert kept == -(-frames // stride), (name, kept)
            probe = FrameSource(path, stride=stride)
            backend = "pyav_intra_only" if isinstance(probe.capture, IntraOnlyCapture) else "opencv"
            probe.release()
            best = {name: round(min(v), 3) for name, v in times.items()}
            out.append({"codec": fourcc, "size": [1280, 720], "frames": frames, "stride": stride,
                        "cvtool_reader": backend, "ms_per_source_frame_best_of": rounds, "ms_per_source_frame": best,
                        "cvtool_speedup_vs_read_every_frame": round(best["read_every_frame"] / best["cvtool"], 2)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="newest-frame run length")
    parser.add_argument("--buffer-seconds", type=float, default=15.0, help="buffer=True run length")
    parser.add_argument("--fps", type=float, default=60.0, help="camera frame rate")
    parser.add_argument("--model-ms", type=float, default=100.0, help="the model's fixed cost per frame")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    pipeline = slow_pipeline(args.model_ms)
    figures = {
        "model": f"lenet5_digits padded by a sleep to {args.model_ms:g} ms per frame",
        "camera": f"MJPEG over HTTP on 127.0.0.1, {SIZE[0]}x{SIZE[1]}, {args.fps:g} fps (tests/mjpeg_camera.py)",
        "lag": "record received by the caller minus the camera's capture time of the frame",
        "newest_frame": run_stream(pipeline, args.seconds, fps=args.fps, buffer=None),
        "buffer": run_stream(pipeline, args.buffer_seconds, fps=args.fps, buffer=True),
        "vid_stride": stride_cost(5),
        "threads": {"torch": torch.get_num_threads(), "opencv": cv2.getNumThreads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }
    write_results("live_lag" if args.seconds == 60 else f"live_lag_{args.seconds:g}s", figures)


if __name__ == "__main__":
    main()
