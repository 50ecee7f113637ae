"""The options every task shares, written once: how its model loads, and how a batch of inputs runs."""

from __future__ import annotations

from dataclasses import replace

from cvtool.tasks.options import LOAD, PATH, RUN, Option

DEFAULT_MAX_PIXELS = 100_000_000  # cvtool.io.image reads its limit from here

BACKEND_HELP = ("auto (the ONNX export an earlier --backend onnxruntime run cached for these weights, on the CPU, "
                "without importing torch; else torch), torch, or onnxruntime (exported on the fly into the cache). A "
                ".onnx file from `cvtool export` as the weights always runs on onnxruntime.")

WEIGHTS = Option("weights", PATH, None, "A weights file: a cvtool checkpoint or a plain state_dict (then --model "
                 "names it).", stage=LOAD, short="-w")
DEVICE = Option("device", str, "auto", "auto, cpu, cuda or cuda:N.", stage=LOAD, server=False)
BACKEND = Option("backend", str, "auto", BACKEND_HELP, stage=LOAD)
MAX_PIXELS = Option("max_pixels", int, DEFAULT_MAX_PIXELS, "Refuse larger images (decompression bombs).", low=1)
THREADS = Option("threads", int, None, "Compute threads (PyTorch, OpenCV, onnxruntime). Default: cores / N with "
                 "--shard K/N, else the libraries' own; 0: the libraries' own.", low=0, stage=LOAD, metavar="N",
                 server=False)
HALF = Option("half", bool, False, "Half precision (autocast): fp16 on CUDA and MPS, bf16 on a CPU with bfloat16 "
              "instructions (refused on other CPUs). Agreement with fp32: README, GPUs.", stage=LOAD, server=False)

FULL_DECODE = Option("full_decode", bool, True, "Decode every JPEG in full (a record is then the same from the CLI, "
                     "the API and the server). --no-full-decode: in a batch (files, folders; not with --out for detect "
                     "and segment) a JPEG at least twice the network's input is decoded 2, 4 or 8 times smaller by "
                     "libjpeg (DCT scaling): faster, pixels slightly different (README, Reduced decoding); records stay "
                     "in the photo's own pixels.", server=False)

BATCH_SIZE = Option("batch_size", int, 16, "Images (or video frames) per forward pass.", low=1, stage=RUN,
                    short="-b", server=False)
WORKERS = Option("workers", int, None, "Threads decoding and preprocessing images [default: 2 on the CPU; one per "
                 "core, up to 8, on a GPU].", low=1, stage=RUN, server=False, show_default=False)
OUT = Option("out", PATH, None, "Directory for per-image outputs (created if missing).", stage=RUN, short="-o",
             server=False)
RECURSIVE = Option("recursive", bool, False, "Descend into subdirectories of directory inputs.", stage=RUN,
                   short="-r", server=False)
SKIP_EXISTING = Option("skip_existing", bool, False, "With --out: skip inputs whose output already exists.",
                       stage=RUN, server=False)
VID_STRIDE = Option("vid_stride", int, 1, "Videos and cameras: process every Nth frame (the others are grabbed, "
                    "never converted to pixels).", low=1, stage=RUN, server=False)
BUFFER = Option("buffer", bool, None, "Cameras and streams (cam:N, rtsp://, rtmp://, .m3u8, .mjpg) are read newest-"
                "frame by default: the frames a slower model has no time for are dropped, so results keep up with "
                "real time (each record has `dropped` and `lag_ms`). --buffer: every frame instead, queued (results "
                "fall behind a stream faster than the model). --no-buffer on a video file: read it at its own frame "
                "rate, as a live stream, dropping frames likewise.", stage=RUN, server=False, show_default=False)
SHARD = Option("shard", str, None, "Only shard K of N of the inputs (a hash of each path): N processes or machines "
               "split one input list, disjointly and completely, with no coordination.", stage=RUN, metavar="K/N",
               server=False)
RECORDS = Option("records", PATH, None, "Append each record to this JSON Lines journal as it is produced; a rerun "
                 "skips the inputs it records as done (errors are retried).", stage=RUN, metavar="FILE", server=False)


def model_option(help: str, *, type=str) -> Option:
    """The --model option: a registry name (or a file, for stylize), loaded once."""
    return Option("model", type, None, help, stage=LOAD, short="-m")


def with_default(option: Option, default, **changes) -> Option:
    """A shared option with this task's own default (and help, where it says more)."""
    return replace(option, default=default, **changes)


LOADING = (WEIGHTS, DEVICE, BACKEND, MAX_PIXELS, THREADS, HALF)
BATCH = (BATCH_SIZE, OUT, RECURSIVE, SKIP_EXISTING, WORKERS, VID_STRIDE, BUFFER, SHARD, RECORDS)


IMAGES_HELP = ("Image or video files, directories, glob patterns, http(s):// URLs, rtsp:// streams, cam:N (camera N), "
               "or - for stdin (one piped image, or paths one per line).")
