"""A long video through `cvtool detect` and `cvtool segment`: is memory flat from start to end?

Generates a 1280x720 video of moving shapes (default one minute at 25 fps) in a temp folder, runs the
real CLI on it in a subprocess with --out (so the annotated video is written too), samples the
process's resident memory every 0.1 s from /proc, and times every per-frame record as it arrives.
It reports frames/s and peak RSS over the first and the last 10 s of records: with frames streamed
the two peaks match however long the video is. Random weights (fixed seed) for our YOLO-style
detector at its default size (width 16, 320 px letterbox) and a U-Net; speed, not accuracy, is the
point. Writes bench/results/video_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402

from cvtool.bench import timed  # noqa: E402


def make_video(path: Path, seconds: float, fps: float, size=(1280, 720)) -> int:
    """Moving squares, discs and a sweeping bar over a gradient; returns the frame count."""
    w, h = size
    rng = np.random.default_rng(0)
    background = np.tile(np.linspace(40, 200, w, dtype=np.uint8), (h, 1))[..., None].repeat(3, axis=2)
    shapes = [(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-12, 12), rng.uniform(-8, 8), rng.integers(40, 160),
               tuple(int(c) for c in rng.integers(0, 256, 3)), i % 2) for i in range(8)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    frames = int(round(seconds * fps))
    for t in range(frames):
        frame = background.copy()
        cv2.rectangle(frame, ((t * 9) % w, 0), ((t * 9) % w + 30, h), (255, 255, 255), -1)
        for x, y, dx, dy, s, colour, disc in shapes:
            cx, cy = int((x + dx * t) % w), int((y + dy * t) % h)
            if disc:
                cv2.circle(frame, (cx, cy), int(s) // 2, colour, -1)
            else:
                cv2.rectangle(frame, (cx, cy), (cx + int(s), cy + int(s)), colour, -1)
        writer.write(frame)
    writer.release()
    return frames


def checkpoints(root: Path, unet_width: int) -> dict[str, Path]:
    import torch

    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.unet import UNET_PREPROCESS, UNet
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector

    torch.manual_seed(0)
    yolo = YoloDetector(num_classes=1)  # the defaults: width 16, 320 px
    save_checkpoint(root / "yolo.pt", arch="yolo", task="detect", state_dict=yolo.state_dict(), classes=["object"],
                    preprocess=YOLO_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"anchors": yolo.anchors.tolist(), "width": 16, "img_size": 320}})
    unet = UNet(num_classes=2, in_channels=1, width=unet_width, depth=4)
    save_checkpoint(root / "unet.pt", arch="unet", task="segment", state_dict=unet.state_dict(),
                    classes=["background", "shape"], preprocess=UNET_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"width": unet_width, "depth": 4, "in_channels": 1}})
    return {"detect": root / "yolo.pt", "segment": root / "unet.pt"}


def _rss_mb(pid: int) -> tuple[float, float] | None:
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (FileNotFoundError, KeyError, ProcessLookupError):
        return None


def run(command: list[str], window: float) -> dict:
    """Run `command` (a cvtool call printing JSON Lines), sampling its RSS; figures for both ends of the run."""
    clock = timed()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "CVTOOL_NO_PROGRESS": "1"})
    samples: list[tuple[float, float]] = []
    hwm = [0.0]

    def sample() -> None:
        while process.poll() is None:
            got = _rss_mb(process.pid)
            if got:
                samples.append((clock.elapsed, got[0]))
                hwm[0] = max(hwm[0], got[1])
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    arrivals, frames, errors = [], [], []
    for line in process.stdout:
        record = json.loads(line)
        if "error" in record:
            errors.append(record)
            continue
        arrivals.append(clock.elapsed)
        frames.append(record["frame"])
    stderr = process.stderr.read()
    process.wait()
    sampler.join()
    if process.returncode != 0 or errors or not arrivals:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {errors[:1]} {stderr[-500:]}")
    first, last = arrivals[0], arrivals[-1]

    def window_figures(lo: float, hi: float) -> dict:
        count = sum(lo < t <= hi for t in arrivals)
        peak = max((rss for t, rss in samples if lo <= t <= hi), default=float("nan"))
        return {"from_s": round(lo, 1), "to_s": round(hi, 1), "frames": count,
                "frames_per_s": round(count / (hi - lo), 2), "peak_rss_mb": round(peak, 1)}

    return {
        "command": " ".join(command[command.index("cvtool"):]),
        "records": len(arrivals),
        "frame_indices_ok": frames == sorted(frames) and len(set(frames)) == len(frames),
        "wall_s": round(clock.elapsed, 1),
        "first_record_at_s": round(first, 1),  # interpreter start, imports, model load
        "frames_per_s_overall": round((len(arrivals) - 1) / (last - first), 2) if last > first else None,
        "first_10s": window_figures(first - 1e-9, first + window),
        "last_10s": window_figures(last - window, last),
        "peak_rss_mb_whole_run": round(hwm[0], 1),
        "rss_after_first_record_mb": {"min": round(min(r for t, r in samples if t >= first), 1),
                                      "max": round(max(r for t, r in samples if t >= first), 1)},
    }


def image_peak_rss(command: list[str], video: Path, out: Path) -> float:
    """The same command on one frame saved as a PNG: the memory floor a video run is compared with."""
    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    capture.release()
    image = video.with_name("frame0.png")
    cv2.imwrite(str(image), frame)
    swapped = [str(image) if c == str(video) else str(out) if c.startswith(str(video.parent / "out-")) else c
               for c in command]
    probe = "import resource, runpy, sys; sys.argv = ['cvtool', *sys.argv[1:]]\n" \
            "try:\n    runpy.run_module('cvtool', run_name='__main__')\n" \
            "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", probe, *swapped[3:]], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"image run failed: {done.stderr[-500:]}")
    return round(int(done.stderr.strip().splitlines()[-1]) / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the generated video")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--detect-stride", type=int, default=1)
    parser.add_argument("--segment-stride", type=int, default=10, help="U-Net at 1280x720 is slow on 2 CPU cores")
    parser.add_argument("--unet-width", type=int, default=8)
    parser.add_argument("--window", type=float, default=10.0, help="seconds of records at each end")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cvtool-video-bench-") as tmp:
        root = Path(tmp)
        video = root / "shapes_720p.mp4"
        with timed() as generating:
            frames = make_video(video, args.seconds, args.fps)
        generated_s = generating.seconds
        weights = checkpoints(root, args.unet_width)
        figures = {"video": {"size": [720, 1280], "fps": args.fps, "frames": frames, "seconds": args.seconds,
                             "generate_s": round(generated_s, 1)},
                   "load_average_before": [round(v, 2) for v in os.getloadavg()]}
        for task, stride, extra in (("detect", args.detect_stride, ["--max-det", "20"]),
                                    ("segment", args.segment_stride, [])):
            out = root / f"out-{task}"
            command = [sys.executable, "-m", "cvtool", "-q", task, str(video), "--weights", str(weights[task]),
                       "--vid-stride", str(stride), "--out", str(out), "-f", "jsonl", *extra]
            result = run(command, args.window)
            capture = cv2.VideoCapture(str(out / f"shapes_720p.{task}.mp4"))
            result["output_video"] = {"frames": int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
                                      "fps": round(capture.get(cv2.CAP_PROP_FPS), 3),
                                      "size": [int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                                               int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))]}
            capture.release()
            result["vid_stride"] = stride
            result["one_frame_as_image_peak_rss_mb"] = image_peak_rss(command, video, root / f"img-{task}")
            result["model"] = ("yolo, width 16, 320 px letterbox, random weights, --max-det 20" if task == "detect"
                               else f"unet, width {args.unet_width}, depth 4, grey input at 1280x720, random weights")
            figures[task] = result
            print(f"{task}: {json.dumps(result)}", file=sys.stderr)
        figures["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    write_results("video_run", figures)


if __name__ == "__main__":
    main()
