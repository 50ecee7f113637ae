"""H.264 (PyAV, libx264 CRF 23 veryfast) vs mp4v (OpenCV) for annotated videos: file size, ms per frame,
and a decode check by a second reader.

Generates the frames of a 1280x720 clip of moving shapes (bench/video_run.py's generator, default 10 s at
25 fps) in memory once, writes them with cvtool.io.video.AtomicVideoWriter in each codec (the writer
`cvtool detect --out` uses), then reads each file back with OpenCV's FFmpeg and with PyAV: frame count,
fps, codec, and the mean absolute difference to the frames written (what the compression cost). Times
only the writer (encode + mux), best of `--repeats`. Writes bench/results/video_codecs.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _results import write_results  # noqa: E402
from video_run import make_video  # noqa: E402

from cvtool.io.video import AtomicVideoWriter, h264_available  # noqa: E402


def frames_of(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def read_back(path: Path, originals: list[np.ndarray]) -> dict:
    import av

    capture = cv2.VideoCapture(str(path))
    cv_fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    cv_frames = frames_of(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec, pyav_fps = stream.codec_context.name, float(stream.average_rate)
        pyav_frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    diff = [float(np.abs(a.astype(np.int16) - b).mean()) for a, b in zip(pyav_frames, originals)]
    agree = [float(np.abs(a.astype(np.int16) - b).mean()) for a, b in zip(pyav_frames, cv_frames)]
    return {"codec": codec, "opencv_frames": len(cv_frames), "pyav_frames": len(pyav_frames),
            "opencv_fps": round(cv_fps, 4), "pyav_fps": round(pyav_fps, 4),
            "mean_abs_diff_to_source": round(float(np.mean(diff)), 3),
            "mean_abs_diff_opencv_vs_pyav": round(float(np.mean(agree)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not h264_available():
        sys.exit("PyAV with libx264 is needed: pip install -e '.[video]'")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "source.avi"
        make_video(source, args.seconds, args.fps)  # frames generated once, decoded into memory
        originals = frames_of(source)
        h, w = originals[0].shape[:2]
        figures = {"clip": {"width": w, "height": h, "fps": args.fps, "frames": len(originals)}}
        for codec in ("h264", "mp4v"):
            target = tmp / f"out-{codec}.mp4"
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                writer = AtomicVideoWriter(target, args.fps, (w, h), codec=codec)
                for frame in originals:
                    writer.write(frame)
                writer.close()
                best = min(best, time.perf_counter() - start)
            size = os.path.getsize(target)
            figures[codec] = {"ms_per_frame": round(best * 1000 / len(originals), 2),
                              "bytes": size, "kbit_per_s": round(size * 8 / 1000 / args.seconds, 1),
                              **read_back(target, originals)}
        figures["h264_size_vs_mp4v"] = round(figures["h264"]["bytes"] / figures["mp4v"]["bytes"], 3)
        figures["h264_time_vs_mp4v"] = round(figures["h264"]["ms_per_frame"] / figures["mp4v"]["ms_per_frame"], 2)
    write_results("video_codecs", figures)


if __name__ == "__main__":
    main()
