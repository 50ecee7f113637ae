"""The `cvtool` command: option parsing and printing only; the work is in cvtool.pipelines.

Heavy imports (torch, torchvision, cv2) happen inside the commands, so `cvtool --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from cvtool.version import __version__
from cvtool.errors import UsageError
from cvtool.io.outputs import check_out_dir
from cvtool.console import (
    SETTINGS,
    BatchSummary,
    TrainProgress,
    drive,
    error_line,
    exits_cleanly,
    info,
    print_report,
    StepProgress,
)
from cvtool.serve.settings import DEFAULTS as SERVE, Settings as ServeSettings, size_text  # standard library only

app = typer.Typer(
    name="cvtool",
    help="Computer vision from the command line: classify, detect, segment, verify faces and stylize images with "
    "pretrained or your own models, and train those models. Results on stdout, progress and errors on stderr.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="List, download ahead of time, and verify model weights.",
    epilog="Example: cvtool models --task classify --format json",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models_app, name="models")
train_app = typer.Typer(
    help="Train models on your own data; the checkpoints load with --weights in the other commands.",
    epilog="Example: cvtool train classify digits/ --arch lenet5 --epochs 30",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(train_app, name="train")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class DetectFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    coco = "coco"
    yolo = "yolo"


class ListFormat(str, Enum):
    table = "table"
    json = "json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cvtool {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or log lines on stderr; errors still print."),
    offline: bool = typer.Option(
        False, "--offline", help="Never touch the network; weights must be cached already. Same as CVTOOL_OFFLINE=1."
    ),
    server: Optional[str] = typer.Option(None, "--server", metavar="URL", help="Send classify, detect, segment, "
                                         "stylize --model and verify-face to a running `cvtool serve`. Same as "
                                         "CVTOOL_SERVER=URL."),
) -> None:
    SETTINGS.debug, SETTINGS.quiet = debug, quiet
    if offline:
        os.environ["CVTOOL_OFFLINE"] = "1"
    if server:
        os.environ["CVTOOL_SERVER"] = server


# Options shared by every batch command.
IMAGES_ARG = typer.Argument(..., metavar="IMAGES...", show_default=False, help="Image or video files, directories, "
                            "glob patterns, http(s):// URLs, rtsp:// streams, cam:N (camera N), or - for stdin (one "
                            "piped image, or paths one per line).")
WEIGHTS_OPT = typer.Option(
    None, "--weights", "-w", help="A weights file: a cvtool checkpoint or a plain state_dict (then --model names it)."
)
DEVICE_OPT = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
BATCH_OPT = typer.Option(16, "--batch-size", "-b", min=1, help="Images (or video frames) per forward pass.")
WORKERS_OPT = typer.Option(None, "--workers", min=1, help="Threads decoding and preprocessing images "
                           "[default: 2 on the CPU; one per core, up to 8, on a GPU].", show_default=False)
FORMAT_OPT = typer.Option(None, "--format", "-f", help="Output on stdout. Default: table on a terminal, jsonl otherwise.")
OUT_OPT = typer.Option(None, "--out", "-o", help="Directory for per-image outputs (created if missing).")
RECURSIVE_OPT = typer.Option(False, "--recursive", "-r", help="Descend into subdirectories of directory inputs.")
SKIP_OPT = typer.Option(False, "--skip-existing", help="With --out: skip inputs whose output already exists.")
MAX_PIXELS_OPT = typer.Option(100_000_000, "--max-pixels", min=1, help="Refuse larger images (decompression bombs).")
BACKEND_OPT = typer.Option("auto", "--backend", help="auto (the ONNX export an earlier --backend onnxruntime run "
                           "cached for these weights, on the CPU, without importing torch; else torch), torch, or "
                           "onnxruntime (exported on the fly into the cache). A .onnx file from `cvtool export` as "
                           "the weights always runs on onnxruntime.")
VID_STRIDE_OPT = typer.Option(1, "--vid-stride", min=1, help="Videos and cameras: process every Nth frame.")
SHARD_OPT = typer.Option(None, "--shard", metavar="K/N", help="Only shard K of N of the inputs (a hash of each path): "
                         "N processes or machines split one input list, disjointly and completely, with no coordination.")
RECORDS_OPT = typer.Option(None, "--records", metavar="FILE", help="Append each record to this JSON Lines journal as "
                           "it is produced; a rerun skips the inputs it records as done (errors are retried).")
THRESHOLD_OPT = typer.Option(None, "--threshold", min=0.0, max=1.0,
                             help="Two-class models: the threshold on class 1's probability; below 0.5 the argmax's "
                                  "cells grow into the pixels above it, never into each other (default: the "
                                  "checkpoint's, chosen on validation by `train segment`; else the argmax).")
HALF_OPT = typer.Option(False, "--half", help="Half precision (autocast): fp16 on CUDA and MPS, bf16 on a CPU with "
                        "bfloat16 instructions (refused on other CPUs). Agreement with fp32: README, GPUs.")
THREADS_OPT = typer.Option(None, "--threads", min=0, metavar="N", help="Compute threads (PyTorch, OpenCV, onnxruntime). Default: "
                           "cores / N with --shard K/N, else the libraries' own; 0: the libraries' own.")
CPU_BF16_OPT = typer.Option(False, "--cpu-bf16", help="On the CPU: train in bf16 mixed precision with channels-last "
                            "tensors (measured 1.4-2.4x as fast) on a CPU with bfloat16 instructions (refused on others); "
                            "results differ from float32's. CUDA always trains in mixed precision.")
VAL_EVERY_OPT = typer.Option(1, "--val-every", min=1, metavar="N", help="Validate after every N-th epoch and after "
                             "the last (best.pt is picked among those): a long run spends its time training.")
EMA_OPT = typer.Option(0.0, "--ema", min=0.0, help="Validate and save a moving average of the weights with this decay "
                       "(e.g. 0.99; 0: off).")
RESUME_OPT = typer.Option(None, "--resume", help="Continue the run in this directory from last.pt.")
DEVICES_OPT = typer.Option(1, "--devices", min=1, help="Data-parallel: launch N processes on this machine (torchrun; "
                           "--batch-size is the global batch). Under torchrun, leave it out.")
SYNC_BN_OPT = typer.Option(False, "--sync-bn", help="Data-parallel: batch-norm statistics over the global batch "
                           "(SyncBatchNorm on CUDA, all-reduced on the CPU).")
LOADER_WORKERS_OPT = typer.Option(None, "--workers", min=0, help="DataLoader worker processes (default: min(4, cores - "
                                  "1) on CUDA, 0 on the CPU).")


def _input_items(images: list[str], recursive: bool, out: Optional[Path] = None):
    """Expand inputs (cvtool.io.inputs.expand_inputs): items, and their count when known (for the progress bar)."""
    from cvtool.io.inputs import expand_inputs

    return expand_inputs(images, recursive=recursive, stdin=sys.stdin, out_dir=out,
                         on_previous_outputs=lambda n: info(f"{n} previous cvtool output(s) in --out not taken as inputs"))


@app.command(
    epilog="Example: cvtool classify photos/ --model resnet50 --top-k 3 --format jsonl > labels.jsonl",
)
def classify(
    images: List[str] = IMAGES_ARG,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (see `cvtool models`). Default: resnet18."),
    weights: Optional[Path] = WEIGHTS_OPT,
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Labels to report per image."),
    batch_size: int = BATCH_OPT,
    device: str = DEVICE_OPT,
    fmt: Optional[OutputFormat] = FORMAT_OPT,
    out: Optional[Path] = OUT_OPT,
    recursive: bool = RECURSIVE_OPT,
    skip_existing: bool = SKIP_OPT,
    workers: Optional[int] = WORKERS_OPT,
    max_pixels: int = MAX_PIXELS_OPT,
    vid_stride: int = VID_STRIDE_OPT,
    backend: str = BACKEND_OPT,
    shard: Optional[str] = SHARD_OPT,
    records: Optional[Path] = RECORDS_OPT,
    threads: Optional[int] = THREADS_OPT,
    half: bool = HALF_OPT,
) -> None:
    """Classify images: top-k labels with probabilities, one record per image (per frame of a video)."""
    shard_of = _scale(shard, records, threads)
    if _server():
        _remote("classify", images, fmt=fmt, out=out, recursive=recursive, skip_existing=skip_existing, options=dict(
            model=model, weights=weights, top_k=top_k, backend=backend, max_pixels=max_pixels))
    with exits_cleanly():
        check_out_dir(out, skip_existing=skip_existing)
        from cvtool.api import Classifier

        task = Classifier(model, weights=weights, top_k=top_k, device=device, backend=backend, max_pixels=max_pixels,
                          half=half, **_loading())
        info(task.describe())
        code = _run_batch(task, images, recursive=recursive, out=out, skip_existing=skip_existing,
                          batch_size=batch_size, workers=workers, fmt=fmt, vid_stride=vid_stride, shard=shard_of,
                          records=records)
    raise typer.Exit(code)


def _server() -> Optional[str]:
    """The `cvtool serve` to send work to (CVTOOL_SERVER or --server), if any."""
    return os.environ.get("CVTOOL_SERVER") or None


def _remote(task: str, images: list[str], **kwargs) -> None:
    """Run the command as a thin client of the server (cvtool.serve.client: no torch); exits with its code."""
    with exits_cleanly():
        from cvtool.serve import client

        code = client.run_remote(task, images, **kwargs)
    raise typer.Exit(code)


def _loading() -> dict:
    """How the API objects load models from the CLI: progress bars unless --quiet, and a note when exporting."""
    return {"progress": not SETTINGS.quiet, "on_export": lambda path: info(f"exporting to ONNX once, into {path}")}


def _run_batch(task, images, *, recursive, out, skip_existing, batch_size, workers, fmt, vid_stride=1,
               shard=None, records=None, **run_options) -> int:
    """Stream inputs through an API object's `run` into the chosen writer; the exit code for the batch."""
    from cvtool.io.journal import Journal
    from cvtool.io.records import make_writer
    from cvtool.io.shards import select

    items, total = _input_items(images, recursive, out)
    if shard is not None:  # only this shard's inputs (counted for the progress bar when the list is known)
        items = select(items, shard)
        if total is not None:
            items = list(items)
            total = len(items)
    journal = Journal(records) if records is not None else None
    summary = BatchSummary()
    recorded = 0

    def skipped(path: str) -> None:
        nonlocal recorded
        if journal is not None and journal.done(path):
            recorded += 1
        else:
            summary.skipped += 1

    try:
        results = task.run(items, out=out, batch_size=batch_size, workers=workers, skip_existing=skip_existing,
                           vid_stride=vid_stride, on_skip=skipped, records=journal, **run_options)
        writer = make_writer(fmt.value if fmt else None, task.columns, task.rows, extra_formats=task.extra_formats)
        try:
            drive((result.record for result in results), writer, total=total, summary=summary)
        finally:  # on Ctrl-C or a closed stdout, close the pipeline now: a half-written video is removed, not kept
            results.close()
    finally:
        if journal is not None:
            journal.close()
    if recorded:
        info(f"{recorded} skipped (done in {records})")
    return summary.exit_code


def _scale(shard: Optional[str], records: Optional[Path], threads: Optional[int]):
    """--shard K/N parsed, and this process's compute threads set (--threads, or its share of the cores when
    sharded), before anything loads. Returns (K, N) or None."""
    with exits_cleanly():
        from cvtool.io.shards import parse_shard

        parsed = parse_shard(shard) if shard is not None else None
        if _server():
            if parsed is not None or records is not None:
                raise UsageError("--shard and --records run the batch on this machine; they are not sent to a cvtool "
                                 "serve (drop --server / CVTOOL_SERVER)")
            return parsed
        from cvtool.device import default_threads, set_threads

        set_threads(default_threads(threads, parsed))
    return parsed


@app.command(
    epilog="Example: cvtool detect street.jpg --model fasterrcnn_resnet50_fpn_v2 --classes person,car --out boxes/",
)
def detect(
    images: List[str] = IMAGES_ARG,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (see `cvtool models --task detect`). "
                                        "Default: fasterrcnn_resnet50_fpn_v2."),
    weights: Optional[Path] = WEIGHTS_OPT,
    conf: Optional[float] = typer.Option(None, "--conf", min=0.0, max=1.0, help="Minimum score of a box "
                                         "(default 0.25; 0 for --model face, whose scores are margins)."),
    iou: float = typer.Option(0.45, "--iou", min=0.0, max=1.0, help="Per-class non-max suppression IoU threshold."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated classes to keep, e.g. person,car."),
    max_det: int = typer.Option(300, "--max-det", min=1, help="At most this many boxes per image."),
    keypoints: bool = typer.Option(False, "--keypoints", help="Keypoint models: write and draw the landmarks "
                                   "(17 body points, or 68 face points with --model face)."),
    save_crops: bool = typer.Option(False, "--save-crops", help="With --out: also one JPEG per box (per video frame: "
                                    "NAME.fNNNNNN.cropNNN-LABEL.jpg)."),
    save_txt: bool = typer.Option(False, "--save-txt", help="With --out: OUT/labels/NAME.txt per image (YOLO: class cx cy "
                                  "w h score, fractions) and OUT/classes.txt, the layout `cvtool train detect` reads."),
    out: Optional[Path] = OUT_OPT,
    fmt: Optional[DetectFormat] = typer.Option(None, "--format", "-f", help="table, json, jsonl, csv, coco or yolo."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = DEVICE_OPT,
    recursive: bool = RECURSIVE_OPT,
    skip_existing: bool = SKIP_OPT,
    workers: Optional[int] = WORKERS_OPT,
    max_pixels: int = MAX_PIXELS_OPT,
    vid_stride: int = VID_STRIDE_OPT,
    backend: str = BACKEND_OPT,
    shard: Optional[str] = SHARD_OPT,
    records: Optional[Path] = RECORDS_OPT,
    threads: Optional[int] = THREADS_OPT,
    half: bool = HALF_OPT,
) -> None:
    """Detect objects: boxes in the input's own pixel coordinates, labels and scores; annotated images (or
    videos) with --out."""
    shard_of = _scale(shard, records, threads)
    if _server():
        _remote("detect", images, fmt=fmt, out=out, recursive=recursive, skip_existing=skip_existing,
                save=dict(save_crops=save_crops, save_txt=save_txt), options=dict(
            model=model, weights=weights, conf=conf, iou=iou, classes=classes, max_det=max_det, keypoints=keypoints,
            backend=backend, max_pixels=max_pixels))
    with exits_cleanly():
        if save_crops and out is None:
            raise UsageError("--save-crops needs --out DIR")
        if save_txt and out is None:
            raise UsageError("--save-txt needs --out DIR")
        check_out_dir(out, skip_existing=skip_existing)
        from cvtool.api import Detector

        task = Detector(model, weights=weights, conf=conf, iou=iou, classes=_csv(classes or "") or None,
                        max_det=max_det, keypoints=keypoints, save_crops=save_crops, save_txt=save_txt, device=device,
                        backend=backend,
                        max_pixels=max_pixels, half=half, **_loading())
        info(task.describe())
        code = _run_batch(task, images, recursive=recursive, out=out, skip_existing=skip_existing,
                          batch_size=batch_size, workers=workers, fmt=fmt, vid_stride=vid_stride, shard=shard_of,
                          records=records)
    raise typer.Exit(code)


@app.command(
    epilog="Example: cvtool segment street.jpg --model deeplabv3_resnet50 --out masks/ --classes person,car",
)
def segment(
    images: List[str] = IMAGES_ARG,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (see `cvtool models --task segment`). "
                                        "Default: deeplabv3_resnet50."),
    weights: Optional[Path] = WEIGHTS_OPT,
    out: Optional[Path] = OUT_OPT,
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Overlay opacity of the class colours."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated classes to keep; others become background."),
    save_mask: bool = typer.Option(False, "--save-mask", help="With --out: also one black/white PNG per class found "
                                   "(per video frame: NAME.fNNNNNN.mask-LABEL.png)."),
    tile: Optional[int] = typer.Option(None, "--tile", min=16, help="Run in TILE x TILE tiles (large images, bounded memory)."),
    overlap: int = typer.Option(32, "--overlap", min=0, help="Overlap between tiles, blended linearly."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1, help="Tiles per forward pass (with --tile); "
                                   "video frames per batch."),
    threshold: Optional[float] = THRESHOLD_OPT,
    device: str = DEVICE_OPT,
    fmt: Optional[OutputFormat] = FORMAT_OPT,
    recursive: bool = RECURSIVE_OPT,
    skip_existing: bool = SKIP_OPT,
    workers: Optional[int] = WORKERS_OPT,
    max_pixels: int = MAX_PIXELS_OPT,
    vid_stride: int = VID_STRIDE_OPT,
    backend: str = BACKEND_OPT,
    shard: Optional[str] = SHARD_OPT,
    records: Optional[Path] = RECORDS_OPT,
    threads: Optional[int] = THREADS_OPT,
    half: bool = HALF_OPT,
) -> None:
    """Segment images: a class per pixel; with --out an indexed mask PNG and a colour overlay per image (an
    overlaid video per video)."""
    shard_of = _scale(shard, records, threads)
    if _server():
        _remote("segment", images, fmt=fmt, out=out, recursive=recursive, skip_existing=skip_existing,
                save=dict(save_mask=save_mask), options=dict(
            model=model, weights=weights, alpha=alpha, classes=classes, tile=tile, overlap=overlap,
            batch_size=batch_size, backend=backend, max_pixels=max_pixels, threshold=threshold))
    with exits_cleanly():
        if save_mask and out is None:
            raise UsageError("--save-mask needs --out DIR")
        check_out_dir(out, skip_existing=skip_existing)
        from cvtool.api import Segmenter

        task = Segmenter(model, weights=weights, alpha=alpha, classes=_csv(classes or "") or None, save_mask=save_mask,
                         tile=tile, overlap=overlap, tile_batch=batch_size, device=device, backend=backend,
                         max_pixels=max_pixels, half=half, threshold=threshold, **_loading())
        info(task.describe())
        code = _run_batch(task, images, recursive=recursive, out=out, skip_existing=skip_existing,
                          batch_size=batch_size, workers=workers, fmt=fmt, vid_stride=vid_stride, shard=shard_of,
                          records=records)
    raise typer.Exit(code)


@app.command(
    epilog="Example: cvtool stylize photo.jpg starry_night.jpg --size 512 --steps 300 --out photo_starry.png",
)
def stylize(
    images: List[str] = typer.Argument(..., metavar="CONTENT [STYLE...]", show_default=False,
                                       help="A content image then style image(s); with --style, all are contents."),
    style: Optional[List[Path]] = typer.Option(None, "--style", "-s", help="Style image (repeatable)."),
    out: Path = typer.Option(Path("stylized"), "--out", "-o", help="Output image file (one content) or directory."),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="Longer side of the result, in pixels "
                                       "(default 512; with --model, the input's own size)."),
    steps: int = typer.Option(300, "--steps", min=1, help="Optimisation steps."),
    content_weight: float = typer.Option(1.0, "--content-weight", help="alpha: weight of the content cost."),
    style_weight: float = typer.Option(1e4, "--style-weight", help="beta: weight of the style cost."),
    tv_weight: float = typer.Option(0.0, "--tv-weight", help="Weight of the total-variation (smoothness) term."),
    content_layer: str = typer.Option("relu4_2", "--content-layer"),
    style_layers: str = typer.Option(",".join(("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")), "--style-layers"),
    style_layer_weights: Optional[str] = typer.Option(None, "--style-layer-weights", help="Comma-separated, one per layer."),
    init: str = typer.Option("content", "--init", help="content, noise or style."),
    optimizer: str = typer.Option("lbfgs", "--optimizer", help="lbfgs or adam."),
    lr: float = typer.Option(0.02, "--lr", help="Adam's step size (pixels in [0, 1])."),
    pool: str = typer.Option("max", "--pool", help="max, or avg (Gatys et al.'s choice)."),
    preserve_color: bool = typer.Option(False, "--preserve-color", help="Keep the content's colours."),
    style_blend: Optional[str] = typer.Option(None, "--style-blend", help="Weights of several styles, e.g. 0.7,0.3."),
    scales: int = typer.Option(1, "--scales", min=1, max=5, help="Coarse-to-fine passes (large outputs)."),
    seed: int = typer.Option(0, "--seed"),
    save_every: Optional[int] = typer.Option(None, "--save-every", min=1, help="Also write the image every N steps."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A network from `cvtool train style`: "
                                         "one forward pass per image, or per frame of a video input."),
    tile: Optional[int] = typer.Option(None, "--tile", min=16, help="With --model: tiles for large images."),
    overlap: int = typer.Option(32, "--overlap", min=0, help="With --tile: overlap, blended linearly."),
    vid_stride: int = VID_STRIDE_OPT,
    backend: str = typer.Option("torch", "--backend", help="With --model: torch, or onnxruntime (or a .onnx --model)."),
    vgg: str = typer.Option("vgg19", "--vgg", help="Feature network: vgg19 or vgg16 (ImageNet weights)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="The VGG's weights file, instead of the download."),
    device: str = DEVICE_OPT,
    fmt: Optional[OutputFormat] = FORMAT_OPT,
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip contents whose output already exists."),
    shard: Optional[str] = SHARD_OPT,
    records: Optional[Path] = RECORDS_OPT,
    threads: Optional[int] = THREADS_OPT,
    half: bool = HALF_OPT,
) -> None:
    """Neural style transfer (Gatys et al.): optimise an image to keep the content and take on the style."""
    shard_of = _scale(shard, records, threads)
    if _server():
        _remote("stylize", images, fmt=fmt, out=out, skip_existing=skip_existing, options=dict(
            model=model, size=size, tile=tile, overlap=overlap, backend=backend))
    with exits_cleanly():
        from cvtool.api import Stylizer

        if model is not None:  # feed-forward: every positional is a content image or video
            task = Stylizer(model, size=size, tile=tile, overlap=overlap, device=device, backend=backend,
                            half=half, **_loading())
            info(task.describe())
            code = _run_batch(task, images, recursive=False, out=out, skip_existing=skip_existing, batch_size=1,
                              workers=1, fmt=fmt, vid_stride=vid_stride, shard=shard_of, records=records)
            raise typer.Exit(code)
        contents, styles = (images, [str(p) for p in style]) if style else (images[:1], images[1:])
        if not styles:
            raise UsageError("give a style image: cvtool stylize CONTENT STYLE, or --style STYLE")
        with StepProgress() as progress:
            task = Stylizer(
                style=styles, vgg=vgg, weights=weights, size=size, device=device, backend=backend, on_step=progress,
                steps=steps, content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight,
                content_layer=content_layer, style_layers=tuple(_csv(style_layers)), init=init, optimizer=optimizer,
                style_layer_weights=tuple(map(float, _csv(style_layer_weights))) if style_layer_weights else None,
                lr=lr, pool=pool, preserve_color=preserve_color, scales=scales, seed=seed,
                style_blend=tuple(map(float, _csv(style_blend))) if style_blend else None, half=half, **_loading(),
            )
            info(task.describe())
            code = _run_batch(task, contents, recursive=False, out=out, skip_existing=skip_existing, batch_size=1,
                              workers=1, fmt=fmt, save_every=save_every, shard=shard_of, records=records)
    raise typer.Exit(code)


@app.command(
    "verify-face",
    epilog="Examples: cvtool verify-face id_photo.jpg selfie.jpg  (exit 0 same person, 1 different, 2 error) | "
           "cvtool verify-face --gallery known/ party/*.jpg --out named/ | cvtool verify-face --calibrate pairs.csv",
)
def verify_face(
    images: List[str] = typer.Argument(None, metavar="A B | IMAGES...", show_default=False,
                                       help="Two images to compare; with --gallery, images whose faces to name."),
    gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help="Known people: KNOWN/name.jpg or KNOWN/name/*.jpg."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="A CSV of path_a,path_b,same: fit the threshold."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", min=0.0,
                                              help="Same person below this distance (default: the model's, 0.6 for dlib)."),
    face_index: Optional[str] = typer.Option(None, "--face-index", help="Which face when several: N for both images, "
                                             "or N,M; numbered from 0, left to right."),
    detector: str = typer.Option("mmod", "--detector", help="mmod (dlib's CNN, accurate) or haar (OpenCV, fast)."),
    upsample: Optional[int] = typer.Option(None, "--upsample", min=0, max=3, help="mmod: enlarge images N times "
                                           "(default: as --min-face asks, within a pixel budget)."),
    min_face: float = typer.Option(40, "--min-face", min=8, help="mmod: the smallest face to find, in pixels of the "
                                   "photo (the image is scaled so it reaches the detector's ~80 px)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Face embedder (default dlib_face_resnet)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="An embedder checkpoint from `cvtool train face`."),
    out: Optional[Path] = OUT_OPT,
    fmt: Optional[OutputFormat] = FORMAT_OPT,
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1, help="Images per pass (with --gallery)."),
    device: str = DEVICE_OPT,
    backend: str = typer.Option("auto", "--backend", help="auto (the ONNX exports an earlier run cached, no torch; "
                                "else exported now), onnxruntime (detector CNN and embedder), or torch."),
    vid_stride: int = VID_STRIDE_OPT,
    recursive: bool = RECURSIVE_OPT,
    skip_existing: bool = SKIP_OPT,
    workers: Optional[int] = WORKERS_OPT,
    max_pixels: int = MAX_PIXELS_OPT,
    shard: Optional[str] = SHARD_OPT,
    records: Optional[Path] = RECORDS_OPT,
    threads: Optional[int] = THREADS_OPT,
    half: bool = HALF_OPT,
) -> None:
    """Face verification (are A and B the same person?), one-shot identification against a gallery, and
    threshold calibration; each verdict shows the distance, the threshold, the detector and the model."""
    images = images or []
    shard_of = _scale(shard, records, threads)
    if _server():
        _remote("verify-face", images, fmt=fmt, out=out, recursive=recursive, gallery=gallery, calibrate=calibrate,
                options=dict(model=model, weights=weights, threshold=threshold, detector=detector, upsample=upsample,
                             min_face=min_face, face_index=face_index, backend=backend, max_pixels=max_pixels))
    with exits_cleanly():
        modes = sum(x is not None for x in (gallery, calibrate))
        if modes > 1:
            raise UsageError("--gallery and --calibrate are separate modes; use one")
        if calibrate is not None and images:
            raise UsageError("--calibrate reads its image pairs from the CSV; drop the positional images")
        if gallery is None and calibrate is None and len(images) != 2:
            raise UsageError(f"give two images to compare (got {len(images)}), or --gallery KNOWN IMAGES...")
        if gallery is not None and not images:
            raise UsageError("--gallery needs images whose faces to name")
        if gallery is None and (shard_of is not None or records is not None):
            raise UsageError("--shard and --records are for --gallery batches")
        check_out_dir(out, skip_existing=skip_existing)
        indices = _face_indices(face_index)
        from cvtool.api import FaceVerifier

        verifier = FaceVerifier(model, weights=weights, detector=detector, upsample=upsample, min_face=min_face,
                                threshold=threshold,
                                device=device, backend=backend, max_pixels=max_pixels, half=half, **_loading())
        info(verifier.describe())
        if calibrate is not None:
            report = verifier.calibrate(calibrate)
            for failed in report["failed"]:
                error_line(f"{failed['error']} (pair skipped)")
            for warning in report["warnings"]:
                error_line(f"warning: {warning}")
            _print_calibration(report, as_json=fmt is not None and fmt.value in ("json", "jsonl"))
            raise typer.Exit(0)
        if gallery is not None:
            known = verifier.gallery(gallery, warn=error_line)
            info(f"gallery: {len(known.names)} photo(s) of {len(set(known.names))} people, threshold "
                 f"{verifier.threshold}")
            code = _run_batch(verifier, images, recursive=recursive, out=out, skip_existing=skip_existing,
                              batch_size=batch_size, workers=workers, fmt=fmt, vid_stride=vid_stride, gallery=known,
                              shard=shard_of, records=records)
            raise typer.Exit(code)
        code = _verify_pair(verifier, images, indices, out, fmt)
    raise typer.Exit(code)


def _face_indices(text: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    if text is None:
        return None, None
    parts = _csv(text)
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise UsageError(f"--face-index {text!r}: expected N or N,M (face numbers from 0)")
    values = [int(p) for p in parts]
    return (values[0], values[-1])


def _verify_pair(verifier, images: list[str], indices, out: Optional[Path], fmt) -> int:
    """0 same person, 1 different; a face that cannot be had is an error (2), never a guess."""
    from cvtool.errors import EXIT_USAGE, InputError
    from cvtool.io.records import make_writer
    from cvtool.pipelines.face import VERIFY_COLUMNS, verify_rows

    writer = make_writer(fmt.value if fmt else None, VERIFY_COLUMNS, verify_rows)
    try:
        result = verifier.verify(images[0], images[1], index_a=indices[0], index_b=indices[1])
    except InputError as exc:
        error_line(str(exc))
        writer.write({"path": exc.path or images[0], "error": exc.reason})
        writer.close()
        return EXIT_USAGE
    record = result.record
    if out is not None:
        record["outputs"] = verifier.save_pair(result, out)
    writer.write(record)
    writer.close()
    return 0 if result.same else 1


def _print_calibration(report: dict, *, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(report))
        return
    r = report["result"]
    auc = "n/a (needs same and different pairs)" if r["roc_auc"] is None else f"{r['roc_auc']:.4f}"
    print(f"pairs measured: {r['pairs']} (skipped {r['pairs_failed']}); detector {r['detector']}, model {report['model']}")
    if r["threshold"] is not None:
        print(f"best threshold: {r['threshold']:.4f}  accuracy {r['accuracy']:.2%}  ROC AUC {auc}")
    print(f"current threshold {r['current_threshold']:.4f}: accuracy {r['current_accuracy']:.2%}")
    if r["threshold"] is not None:
        print(f"use it: cvtool verify-face A B --threshold {r['threshold']:.4f}")





def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command(
    "export",
    epilog="Example: cvtool export runs/digits/best.pt --dynamic-batch --out digits.onnx",
)
def export_cmd(
    target: str = typer.Argument(..., metavar="MODEL|CHECKPOINT", help="A model name (its default weights, or "
                                 "--weights FILE) or a checkpoint from `cvtool train`."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (the only format so far)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Weights for MODEL instead of its default "
                                           "ones: a cvtool checkpoint or a plain state_dict of that architecture."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Any batch size (default: batch 1)."),
    opset: Optional[int] = typer.Option(None, "--opset", min=7, help="ONNX opset (default: the exporter's)."),
    img_size: Optional[int] = typer.Option(None, "--img-size", min=8, help="Fixed input size. Default: the model's "
                                           "own (classifiers, YOLO); any size for U-Net, segmenters, style networks."),
    tolerance: float = typer.Option(1e-4, "--tolerance", min=0.0, help="Largest onnxruntime-vs-PyTorch difference "
                                    "allowed, as a fraction of the output's scale."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The .onnx file (default: beside the checkpoint, "
                                       "or NAME.onnx here)."),
    half: bool = typer.Option(False, "--half", help="fp16 weights and activations (float32 in and out); refused "
                              "below the task's agreement bar with PyTorch."),
    int8: bool = typer.Option(False, "--int8", help="INT8 (onnxruntime static quantisation) calibrated on "
                              "--calibration; refused below the task's agreement bar with PyTorch."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", metavar="DIR", help="Images to calibrate "
                                               "--int8 on (up to 64) and to check --half/--int8 against PyTorch."),
) -> None:
    """Export a model to ONNX, checked on the spot: onnxruntime must reproduce PyTorch within --tolerance
    (--half/--int8: agree with it by the task's measure: classify top-1 >= 0.95, segment pixels >= 0.95, detect
    box IoU >= 0.80, face embedding distance <= 0.06)."""
    with exits_cleanly():
        if fmt != "onnx":
            raise UsageError(f"unknown --format {fmt!r}; onnx is the only export format")
        from cvtool.api import export_onnx

        report = export_onnx(target, out, weights=weights, img_size=img_size, dynamic_batch=dynamic_batch,
                             opset=opset, tolerance=tolerance, half=half, int8=int8, calibration=calibration,
                             on_start=info)
        if "agreement" in report:
            a = report["agreement"]
            typer.echo(f"{report['path']}: {report['precision']} {a['measure']} with PyTorch {a['value']:.4f} on "
                       f"{a['inputs']} inputs (bar {a['bar']:g}); {report['bytes'] / 1e6:.2f} MB "
                       f"(fp32 {report['fp32_bytes'] / 1e6:.2f} MB)")
            return
        typer.echo(f"{report['path']}: onnxruntime matches PyTorch, max abs diff {report['max_abs_diff']:.3g} "
                   f"({report['relative']:.3g} of the output scale; tolerance {tolerance:g}); opset {report['opset']}, "
                   f"{report['exporter']} exporter, {report['bytes'] / 1e6:.1f} MB")


@app.command(
    "bench",
    epilog="Example: cvtool bench mobilenet_v3_small yolo --batch-size 1,8 --backend torch,onnxruntime",
)
def bench_cmd(
    targets: Optional[List[str]] = typer.Argument(None, metavar="[TASK|MODEL...]", help="Model names, or tasks "
                                                  "(classify, detect, segment, stylize: their bench model). "
                                                  "Default: one model per task."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    batch_size: str = typer.Option("1", "--batch-size", "-b", help="Batch size(s), comma-separated: 1,8."),
    img_size: Optional[int] = typer.Option(None, "--img-size", min=8, help="Input side. Default: the model's own; "
                                           "256 for models that take any size."),
    backend: str = typer.Option("torch,onnxruntime", "--backend", help="torch, onnxruntime, or both (comma-separated)."),
    iters: int = typer.Option(20, "--iters", "-n", min=1, help="Timed forward passes per measurement."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed passes first."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for both backends "
                                          "(default: PyTorch's, one per core)."),
    fmt: Optional[ListFormat] = typer.Option(None, "--format", "-f", help="table or json (default: table on a terminal)."),
) -> None:
    """Time forward passes: ms per image (median, IQR), images/s and peak memory, PyTorch and onnxruntime side by side."""
    with exits_cleanly():
        from cvtool import bench

        try:
            sizes = [int(b) for b in _csv(batch_size)]
        except ValueError:
            raise UsageError(f"--batch-size {batch_size!r}: give whole numbers, e.g. 1,8") from None
        if not sizes or min(sizes) < 1:
            raise UsageError(f"--batch-size {batch_size!r}: give whole numbers of at least 1")
        report = bench.run_bench(targets or None, backends=_csv(backend), batch_sizes=sizes, img_size=img_size,
                                 device=device, iters=iters, warmup=warmup, threads=threads, on_case=info)
        if _wants_json(fmt):
            import json

            typer.echo(json.dumps(report, indent=2))
        else:
            bench.print_table(report)


@train_app.command(
    "classify",
    epilog="Example: cvtool train classify digits/ --arch lenet5 --epochs 30 --out runs/digits",
)
def train_classify(
    data: Optional[str] = typer.Argument(
        None, help="ImageFolder directory (one folder per class), CSV of path,label, or MNIST IDX files."
    ),
    arch: str = typer.Option("resnet18", "--arch", "-a", help="Any classifier of `cvtool models --task classify`."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Epochs to train (default 10)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (cosine schedule)."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adam or sgd."),
    img_size: Optional[int] = typer.Option(None, "--img-size", min=8, help="Input size (default: the model's own)."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation data (same layouts as DATA)."),
    val_split: float = typer.Option(0.1, "--val-split", help="Without --val: fraction of each class held out."),
    pretrained: bool = typer.Option(False, "--pretrained/--no-pretrained", help="Fine-tune from the model's weights."),
    hflip: bool = typer.Option(False, "--hflip", help="Augment with horizontal flips (off: they change digits/text)."),
    ema: float = EMA_OPT,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/classify-ARCH-TIME)."),
    resume: Optional[Path] = RESUME_OPT,
    eval_only: bool = typer.Option(False, "--eval-only", help="Only evaluate --weights on DATA."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="With --eval-only: the checkpoint to evaluate."),
    device: str = DEVICE_OPT,
    devices: int = DEVICES_OPT,
    sync_bn: bool = SYNC_BN_OPT,
    cpu_bf16: bool = CPU_BF16_OPT,
    val_every: int = VAL_EVERY_OPT,
    seed: int = typer.Option(0, "--seed", help="Seeds shuffling, augmentation and initialisation."),
    workers: Optional[int] = LOADER_WORKERS_OPT,
    fmt: Optional[ListFormat] = typer.Option(None, "--format", "-f", help="Final report: table or json."),
) -> None:
    """Train a classifier; writes best.pt, last.pt, metrics.csv, curves.png, confusion.png, summary.json."""
    with exits_cleanly():
        _relaunch(devices, device, cpu_bf16, val_every)
        from cvtool import train

        if eval_only:
            if weights is None or data is None:
                raise UsageError("--eval-only needs DATA and --weights FILE")
            report = train.evaluate_classifier(weights, data, device=device, on_skip=_skipping)
            print_report(report, as_json=_wants_json(fmt))
            raise typer.Exit(0)
        summary = _fit(train.classify, data, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, optimizer=optimizer, img_size=img_size, val=val, val_split=val_split,
                       pretrained=pretrained, hflip=hflip, out=out, resume=resume, device=device, seed=seed,
                       workers=workers, progress=not SETTINGS.quiet, sync_bn=sync_bn, cpu_bf16=cpu_bf16,
                       val_every=val_every, ema=ema)
        info(f"best val accuracy {summary['best_val_accuracy']:.4f} (epoch {summary['best_epoch']}); "
             f"{summary['skipped_files']} file(s) skipped; {summary['run_dir']}/best.pt")
        print_report(summary["val_report"], as_json=_wants_json(fmt))


@train_app.command(
    "detect",
    epilog="Example: cvtool train detect raccoon/ --arch yolo --epochs 60 --img-size 320 --out runs/raccoon",
)
def train_detect(
    data: Optional[str] = typer.Argument(None, help="images/ + annotations/ (VOC XML) or labels/ (YOLO), or COCO .json."),
    arch: str = typer.Option("yolo", "--arch", "-a", help="yolo (the YOLO-style detector of cvtool)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Epochs (default 50)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    lr: float = typer.Option(5e-3, "--lr"),
    weight_decay: float = typer.Option(5e-4, "--weight-decay"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adam or sgd."),
    img_size: int = typer.Option(320, "--img-size", min=64, help="Letterboxed training size (a multiple of 32)."),
    anchors: int = typer.Option(3, "--anchors", min=1, max=9, help="Anchor shapes, chosen by k-means on the boxes."),
    width: int = typer.Option(16, "--width", min=4, help="Channels of the first layer (doubled per stage)."),
    hflip: bool = typer.Option(True, "--hflip/--no-hflip", help="Augment with horizontal flips."),
    backbone: str = typer.Option("csp", "--backbone", help="csp (from scratch), resnet18 or mobilenet_v3_small."),
    pretrained: bool = typer.Option(False, "--pretrained/--no-pretrained",
                                    help="Start the torchvision backbone from its ImageNet weights."),
    mosaic: float = typer.Option(0.5, "--mosaic", min=0.0, max=1.0, help="Probability of a 2x2 mosaic per image."),
    close_mosaic: int = typer.Option(0, "--close-mosaic", min=0, help="Train the last N epochs without mosaics."),
    ema: float = EMA_OPT,
    val: Optional[str] = typer.Option(None, "--val", help="Validation data (same layouts)."),
    val_split: float = typer.Option(0.2, "--val-split", help="Without --val: fraction of images held out."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/detect-yolo-TIME)."),
    resume: Optional[Path] = RESUME_OPT,
    device: str = DEVICE_OPT,
    devices: int = DEVICES_OPT,
    sync_bn: bool = SYNC_BN_OPT,
    cpu_bf16: bool = CPU_BF16_OPT,
    val_every: int = VAL_EVERY_OPT,
    seed: int = typer.Option(0, "--seed"),
    workers: Optional[int] = LOADER_WORKERS_OPT,
) -> None:
    """Train the YOLO-style detector; writes best.pt (by mAP@0.5:0.95), last.pt, metrics.csv, curves.png, pr_curve.png."""
    with exits_cleanly():
        _relaunch(devices, device, cpu_bf16, val_every)
        from cvtool import train

        summary = _fit(train.detect, data, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, optimizer=optimizer, img_size=img_size, anchors=anchors, width=width, hflip=hflip,
                       backbone=backbone, pretrained=pretrained, mosaic=mosaic, close_mosaic=close_mosaic, ema=ema,
                       val=val, val_split=val_split, out=out,
                       resume=resume, device=device, seed=seed, workers=workers, progress=not SETTINGS.quiet,
                       sync_bn=sync_bn, cpu_bf16=cpu_bf16, val_every=val_every)
        val_metrics = summary["val"]
        info(f"val mAP@0.5 {val_metrics['map50']:.4f}, mAP@0.5:0.95 {val_metrics['map50_95']:.4f} (best epoch "
             f"{summary['best_epoch']}); {summary['run_dir']}/best.pt")
        typer.echo(json.dumps(summary, indent=2))


@train_app.command(
    "segment",
    epilog="Example: cvtool train segment membrane/ --arch unet --epochs 40 --class-names membrane,cell",
)
def train_segment(
    data: Optional[str] = typer.Argument(None, help="Folder with images/ and masks/ (same file stems)."),
    arch: str = typer.Option("unet", "--arch", "-a", help="unet, or a segmenter of `cvtool models --task segment`."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Epochs to train (default 30)."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (cosine schedule)."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adam or sgd."),
    crop: int = typer.Option(256, "--crop", min=16, help="Random training crops of this size (with flips)."),
    loss: str = typer.Option("ce+dice", "--loss", help="ce, dice, ce+dice, weighted-ce or weighted-ce+dice (the U-Net "
                             "paper's border-weighted cross-entropy)."),
    elastic: bool = typer.Option(False, "--elastic", help="U-Net paper: elastic deformations (one smooth random field "
                                 "warps image and mask)."),
    elastic_sigma: float = typer.Option(10.0, "--elastic-sigma", min=0, help="Pixels: std of the displacements on the "
                                        "3x3 lattice."),
    mirror_pad: int = typer.Option(0, "--mirror-pad", min=0, help="Pixels of mirrored context around each training "
                                   "image (unscored)."),
    border_w0: float = typer.Option(10.0, "--border-w0", help="--loss weighted-ce: the border weight map's w0."),
    border_sigma: float = typer.Option(5.0, "--border-sigma", help="--loss weighted-ce: its sigma (pixels)."),
    border_balance: bool = typer.Option(True, "--border-balance/--no-border-balance", help="w_c balances class "
                                        "frequencies (paper) or is 1."),
    select: str = typer.Option("miou", "--select", help="What picks best.pt on the validation set: miou, or rand "
                               "(two classes: ISBI 2012's Rand F-score of the cells between membranes)."),
    ema: float = EMA_OPT,
    width: int = typer.Option(32, "--width", min=4, help="U-Net: channels of the first level (doubled per level)."),
    depth: int = typer.Option(4, "--depth", min=1, max=6, help="U-Net: number of poolings."),
    in_channels: int = typer.Option(1, "--in-channels", help="U-Net: 1 (grey) or 3 (colour) input."),
    class_names: Optional[str] = typer.Option(None, "--class-names", help="Comma-separated names for class 0, 1, ..."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation folder (same layout)."),
    val_split: float = typer.Option(0.2, "--val-split", help="Without --val: fraction of the pairs held out."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/segment-ARCH-TIME)."),
    resume: Optional[Path] = RESUME_OPT,
    device: str = DEVICE_OPT,
    devices: int = DEVICES_OPT,
    sync_bn: bool = SYNC_BN_OPT,
    cpu_bf16: bool = CPU_BF16_OPT,
    val_every: int = VAL_EVERY_OPT,
    seed: int = typer.Option(0, "--seed"),
    workers: Optional[int] = LOADER_WORKERS_OPT,
) -> None:
    """Train a segmenter; writes best.pt, last.pt, metrics.csv, curves.png, examples.png, summary.json."""
    with exits_cleanly():
        _relaunch(devices, device, cpu_bf16, val_every)
        from cvtool import train

        summary = _fit(train.segment, data, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, optimizer=optimizer, crop=crop, loss=loss, width=width, depth=depth,
                       elastic=elastic, elastic_sigma=elastic_sigma, mirror_pad=mirror_pad, border_w0=border_w0,
                       border_sigma=border_sigma, border_balance=border_balance, select=select, ema=ema,
                       in_channels=in_channels, class_names=_csv(class_names) if class_names else None, val=val,
                       val_split=val_split, out=out, resume=resume, device=device, seed=seed, workers=workers,
                       sync_bn=sync_bn, cpu_bf16=cpu_bf16, val_every=val_every,
                       on_warning=lambda message: info(f"warning: {message}"))
        val_metrics = summary["val"]
        rand = f", Rand F {val_metrics['rand_f']:.4f}" if "rand_f" in val_metrics else ""
        info(f"val mIoU {val_metrics['miou']:.4f}, pixel accuracy {val_metrics['pixel_accuracy']:.4f}{rand} (best "
             f"epoch {summary['best_epoch']}); {summary['run_dir']}/best.pt")
        typer.echo(json.dumps(summary, indent=2))


@train_app.command(
    "style",
    epilog="Example: cvtool train style starry_night.jpg --data photos/ --epochs 20 --out runs/starry",
)
def train_style(
    style_image: Optional[str] = typer.Argument(None, metavar="STYLE_IMAGE", help="The style to learn."),
    data: Optional[str] = typer.Option(None, "--data", help="Folder of content photos (searched recursively)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Epochs (default 10)."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    img_size: int = typer.Option(256, "--img-size", min=32, help="Training crops, in pixels."),
    content_weight: float = typer.Option(1.0, "--content-weight"),
    style_weight: float = typer.Option(1e5, "--style-weight"),
    tv_weight: float = typer.Option(1e-6, "--tv-weight"),
    width: int = typer.Option(32, "--width", min=4, help="Channels of the network's first layer."),
    vgg: str = typer.Option("vgg16", "--vgg", help="Loss network: vgg16 (Johnson et al.) or vgg19."),
    vgg_weights: Optional[Path] = typer.Option(None, "--vgg-weights", help="The VGG's weights file, instead of the download."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/stylize-fast_style-TIME)."),
    resume: Optional[Path] = RESUME_OPT,
    device: str = DEVICE_OPT,
    devices: int = DEVICES_OPT,
    sync_bn: bool = SYNC_BN_OPT,
    cpu_bf16: bool = CPU_BF16_OPT,
    val_every: int = VAL_EVERY_OPT,
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a feed-forward style network (Johnson et al.); `cvtool stylize IMG --model RUN/best.pt` applies it."""
    with exits_cleanly():
        _relaunch(devices, device, cpu_bf16, val_every)
        from cvtool import train

        summary = _fit(train.style, style_image, data=data, epochs=epochs, batch_size=batch_size, lr=lr,
                       img_size=img_size, content_weight=content_weight, style_weight=style_weight,
                       tv_weight=tv_weight, width=width, vgg=vgg, vgg_weights=vgg_weights, out=out, resume=resume,
                       device=device, seed=seed, progress=not SETTINGS.quiet, sync_bn=sync_bn, cpu_bf16=cpu_bf16,
                       val_every=val_every)
        info(f"best epoch {summary['best_epoch']}; {summary['run_dir']}/best.pt")
        typer.echo(json.dumps(summary, indent=2))


@train_app.command(
    "face",
    epilog="Example: cvtool train face orl_faces/ --epochs 30 --mining semi-hard --val-split 0.25 --out runs/orl",
)
def train_face(
    data: Optional[str] = typer.Argument(None, help="One sub-folder of face images per person (2+ images each)."),
    arch: str = typer.Option("face_embed_small", "--arch", "-a", help="face_embed_small (from scratch) or "
                             "dlib_face_resnet (fine-tuned; 150 px aligned chips)."),
    loss: str = typer.Option("triplet", "--loss", help="triplet, or binary (|e1 - e2| -> logistic unit, BCE on pairs)."),
    margin: float = typer.Option(0.2, "--margin", min=0.0, help="Triplet margin alpha (squared distances)."),
    mining: str = typer.Option("semi-hard", "--mining", help="semi-hard (FaceNet) or hard (batch-hard)."),
    identities_per_batch: int = typer.Option(8, "--identities-per-batch", "-P", min=2, help="P people per batch."),
    images_per_identity: int = typer.Option(4, "--images-per-identity", "-K", min=2, help="K images of each."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Epochs to train (default 30)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 1e-3 from scratch, 1e-4 fine-tuning)."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", help="AdamW decoupled weight decay (regularises small face sets)."),
    img_size: Optional[int] = typer.Option(None, "--img-size", min=16, help="Input size (default: the model's own)."),
    val_split: float = typer.Option(0.25, "--val-split", help="Fraction of the people held out (whole identities)."),
    hflip: bool = typer.Option(True, "--hflip/--no-hflip", help="Augment with horizontal flips."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/face-ARCH-TIME)."),
    resume: Optional[Path] = RESUME_OPT,
    device: str = DEVICE_OPT,
    devices: int = DEVICES_OPT,
    sync_bn: bool = SYNC_BN_OPT,
    cpu_bf16: bool = CPU_BF16_OPT,
    val_every: int = VAL_EVERY_OPT,
    seed: int = typer.Option(0, "--seed", help="Seeds the identity split, batches, augmentation and initialisation."),
    workers: Optional[int] = LOADER_WORKERS_OPT,
) -> None:
    """Train a face embedder (triplet or Siamese binary loss); writes best.pt (with its verification threshold),
    last.pt, metrics.csv, curves.png, roc.png, summary.json."""
    with exits_cleanly():
        _relaunch(devices, device, cpu_bf16, val_every)
        from cvtool import train

        summary = _fit(train.face, data, on_warning=lambda message: info(f"warning: {message}"), arch=arch, loss=loss, margin=margin, mining=mining,
                       identities_per_batch=identities_per_batch, images_per_identity=images_per_identity,
                       epochs=epochs, lr=lr, weight_decay=weight_decay, img_size=img_size, val_split=val_split,
                       hflip=hflip, out=out, resume=resume, device=device, seed=seed, workers=workers,
                       progress=not SETTINGS.quiet, sync_bn=sync_bn, cpu_bf16=cpu_bf16, val_every=val_every)
        val_metrics = summary["val"]
        auc = val_metrics.get("roc_auc", val_metrics.get("auc"))
        info(f"held-out people: ROC AUC {auc:.4f}, verification accuracy {val_metrics['accuracy']:.4f} at distance "
             f"< {val_metrics['threshold']:.3f} (best epoch {summary['best_epoch']}); {summary['run_dir']}/best.pt")
        typer.echo(json.dumps(summary, indent=2))


def _relaunch(devices: int, device: str, cpu_bf16: bool, val_every: int) -> None:
    """--devices N: this same command as N data-parallel processes (torchrun), then exit with their code; options
    that every process would refuse are refused here first."""
    if devices > 1:
        from cvtool.train import check_run_options, distributed

        check_run_options(device, cpu_bf16, val_every)

        if distributed.under_torchrun():
            raise UsageError("--devices launches torchrun itself; under torchrun, leave it out")
        raise typer.Exit(distributed.launch(distributed.without_devices(sys.argv[1:]), devices))


def _skipping(message: str) -> None:
    info(f"skipping {message}")


def _fit(train_task, *args, **options) -> dict:
    """Run one of cvtool.train's entries with progress on stderr; on Ctrl-C say how to carry on."""
    with TrainProgress() as progress:
        try:
            return train_task(*args, callbacks=progress, on_skip=_skipping, **options)
        except KeyboardInterrupt:
            run = progress.run
            if run is not None and (run.run_dir / "last.pt").exists():
                info(f"{run.run_dir / 'last.pt'} holds the last completed epoch; continue with --resume {run.run_dir}")
            raise


def _wants_json(fmt: Optional[ListFormat]) -> bool:
    return fmt is ListFormat.json or (fmt is None and not sys.stdout.isatty())


@models_app.callback()
def models_list(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(None, "--task", help="Only models for this task (classify, ...)."),
    fmt: Optional[ListFormat] = typer.Option(None, "--format", "-f", help="table or json (default: a table on a "
                                             "terminal, JSON when piped)."),
) -> None:
    """List every model: task, size, weights source, licence, and whether its weights are on this machine."""
    if ctx.invoked_subcommand is not None:
        return
    with exits_cleanly():
        from cvtool.models import catalogue

        rows = catalogue.describe_all(task)
        if _wants_json(fmt):
            import json

            typer.echo(json.dumps(rows, indent=2))
        else:
            catalogue.print_table(rows)


@models_app.command("pull", epilog="Example: cvtool models pull resnet50 mobilenet_v3_large")
def models_pull(names: List[str] = typer.Argument(..., help="Model names whose default weights to download.")) -> None:
    """Download models' weights into the cache now (for air-gapped machines and container builds)."""
    with exits_cleanly():
        from cvtool.models import catalogue

        code = catalogue.pull(names, progress=not SETTINGS.quiet, info=info, error=error_line)
    raise typer.Exit(code)


@models_app.command("verify", epilog="Example: cvtool models verify")
def models_verify(names: Optional[List[str]] = typer.Argument(None, help="Models to check (default: all cached).")) -> None:
    """Re-hash cached weight files against their published hashes; exit 1 if any is corrupt."""
    with exits_cleanly():
        from cvtool.models import catalogue

        code = catalogue.verify(names or None, info=info, error=error_line)
    raise typer.Exit(code)


def _extra_mark(module: str, extra: str) -> str:
    """' [needs the X extra]' for a command whose optional extra is not installed (found without importing it)."""
    import importlib.util

    return "" if importlib.util.find_spec(module) is not None else f" [not installed: pip install 'cvtool[{extra}]']"


@app.command(
    "ray",
    short_help="Run a task over many inputs on Ray Data, in input order." + _extra_mark("ray", "ray"),
    epilog="Example: cvtool ray classify photos/ --model resnet50 --set top_k=3 --workers 8 > labels.jsonl  "
           "(RAY_ADDRESS=... for a cluster)",
)
def ray_cmd(
    task: str = typer.Argument(..., metavar="TASK", help="classify, detect, segment, stylize (--model NETWORK) or "
                               "verify-face (--set gallery=DIR)."),
    images: List[str] = IMAGES_ARG,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (or stylize's network file)."),
    weights: Optional[Path] = WEIGHTS_OPT,
    settings: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Another option of the "
                                                 "task's API class, e.g. top_k=3, conf=0.5, gallery=known/ (repeatable)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Ray actors, each loading the model once."),
    cpus: float = typer.Option(1, "--cpus-per-worker", min=0, help="CPUs per actor (also its compute threads)."),
    gpus: float = typer.Option(0, "--gpus-per-worker", min=0, help="GPUs per actor (1: each actor on its own GPU)."),
    batch_size: int = BATCH_OPT,
    out: Optional[Path] = OUT_OPT,
    recursive: bool = RECURSIVE_OPT,
) -> None:
    """Run a task over many inputs on Ray Data (local, or the cluster RAY_ADDRESS names): JSON Lines records on
    stdout, in input order, the same records `cvtool TASK` prints. Needs `pip install 'cvtool[ray]'`."""
    with exits_cleanly():
        from cvtool.scale import ray_run

        options = {"model": model, "weights": weights} if weights is not None else {"model": model}
        for item in settings or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UsageError(f"--set {item!r}: expected KEY=VALUE")
            try:
                options[key] = json.loads(value)
            except ValueError:
                options[key] = value
        failed = ray_run(task, images, num_workers=workers, num_cpus=cpus, num_gpus=gpus, batch_size=batch_size,
                         out=out, recursive=recursive, **options)
    raise typer.Exit(1 if failed else 0)


@app.command(
    "serve",
    short_help="Serve the models over HTTP, kept loaded between requests." + _extra_mark("fastapi", "serve"),
    epilog="Example: cvtool serve --preload verify-face --preload detect:yolo --port 8000 & "
           "CVTOOL_SERVER=http://127.0.0.1:8000 cvtool verify-face id.jpg selfie.jpg",
)
def serve_cmd(
    host: str = typer.Option(SERVE.host, "--host", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(SERVE.port, "--port", "-p", min=0, max=65535),
    preload: Optional[List[str]] = typer.Option(None, "--preload", metavar="TASK:MODEL", help="Load before serving "
                                                "(repeatable): classify:lenet5_digits, detect:runs/x/best.pt, "
                                                "verify-face, stylize:runs/starry/best.pt."),
    gallery: Optional[List[str]] = typer.Option(None, "--gallery", metavar="NAME=DIR", help="Known people for "
                                                "/identify?gallery=NAME (repeatable)."),
    device: str = DEVICE_OPT,
    workers: int = typer.Option(1, "--workers", min=1, help="Server processes, each with its own models "
                                "(requests within one run in threads)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="CVTOOL_TOKEN", show_envvar=False,
                                        help="Require 'Authorization: Bearer TOKEN' (also CVTOOL_TOKEN)."),
    allow_paths: Optional[Path] = typer.Option(None, "--allow-paths", metavar="DIR", help="Let requests name files "
                                               "(images, weights, galleries) under DIR on this machine; none otherwise."),
    max_bytes: str = typer.Option(size_text(SERVE.max_bytes), "--max-bytes", help="Largest request body (413 above)."),
    max_pixels: int = MAX_PIXELS_OPT,
    memory_budget: str = typer.Option(size_text(SERVE.memory_budget), "--memory-budget", help="Parameter memory of "
                                      "loaded models; the least recently used are unloaded above it."),
    max_batch: int = typer.Option(SERVE.max_batch, "--max-batch", min=1, help="classify/detect/segment: requests for "
                                  "the same model and options run as one batch of up to N (1: each alone)."),
    batch_wait_ms: float = typer.Option(SERVE.batch_wait_ms, "--batch-wait-ms", min=0, help="How long a batch waits "
                                        "for more requests after its first."),
    max_batch_pixels: int = typer.Option(SERVE.max_batch_pixels, "--max-batch-pixels", min=1, help="A batch's network "
                                         "inputs in all, in pixels (their activations' memory); a larger input runs "
                                         "alone."),
) -> None:
    """Serve the models over HTTP, kept loaded between requests: one endpoint per task (/classify, /detect,
    /segment, /stylize, /verify-face, /identify) answering the records the commands print; docs at /docs."""
    with exits_cleanly():
        try:
            from cvtool.serve.app import serve
        except ImportError as exc:
            raise UsageError(f"cvtool serve needs its extra ({exc.name} is missing): pip install 'cvtool[serve]'") from None
        from cvtool.serve.security import parse_size

        if allow_paths is not None and not allow_paths.is_dir():
            raise UsageError(f"--allow-paths {allow_paths}: not a directory")
        galleries = {}
        for spec in gallery or []:
            name, sep, root = spec.partition("=")
            if not sep or not name or not root:
                raise UsageError(f"--gallery {spec!r}: expected NAME=DIR")
            galleries[name] = root
        settings = ServeSettings(host=host, port=port, token=token or None, allow_paths=allow_paths,
                                 max_bytes=parse_size(max_bytes), max_pixels=max_pixels, device=device,
                                 memory_budget=parse_size(memory_budget), preload=list(preload or []),
                                 galleries=galleries, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                                 max_batch_pixels=max_batch_pixels, log=not SETTINGS.quiet)
        serve(settings, workers=workers)


val_app = typer.Typer(
    help="Score a model on a labelled set (the layouts `cvtool train` reads), without training: a JSON summary on "
    "stdout, plots in --out.",
    epilog="Example: cvtool val detect raccoon_val/ --weights runs/raccoon/best.pt --out val/",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(val_app, name="val")
VAL_WEIGHTS_OPT = typer.Option(None, "--weights", "-w", help="A checkpoint from `cvtool train`.")
VAL_OUT_OPT = typer.Option(None, "--out", "-o", help="Folder for the plots (none without it).")


def _print_val(summary: dict) -> None:
    typer.echo(json.dumps(summary, indent=2))


@val_app.command("classify", epilog="Example: cvtool val classify digits_test/ --weights runs/digits/best.pt --out val/")
def val_classify(
    data: str = typer.Argument(..., help="ImageFolder tree, a path,label CSV, or MNIST IDX files."),
    weights: Optional[Path] = VAL_WEIGHTS_OPT,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A classifier by name (its default weights)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    device: str = DEVICE_OPT,
    out: Optional[Path] = VAL_OUT_OPT,
) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix (confusion.png)."""
    with exits_cleanly():
        from cvtool import val

        _print_val(val.classify(data, weights=weights, model=model, device=device, batch_size=batch_size, out=out,
                                on_skip=_skipping))


@val_app.command("detect", epilog="Example: cvtool val detect raccoon/ --weights runs/raccoon/best.pt --out val/")
def val_detect(
    data: str = typer.Argument(..., help="images/ + annotations/ (VOC XML) or labels/ (YOLO), or a COCO .json."),
    weights: Optional[Path] = VAL_WEIGHTS_OPT,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A detector by name (its default weights)."),
    conf: float = typer.Option(0.001, "--conf", min=0.0, max=1.0, help="Lowest score kept (low: the PR curve needs "
                               "the whole range)."),
    iou: float = typer.Option(0.6, "--iou", min=0.0, max=1.0, help="Per-class non-max suppression IoU threshold."),
    max_det: int = typer.Option(100, "--max-det", min=1, help="Boxes per image (COCO scores at most 100)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    device: str = DEVICE_OPT,
    out: Optional[Path] = VAL_OUT_OPT,
) -> None:
    """pycocotools mAP@0.5 and mAP@0.5:0.95, per-class AP@0.5 and the PR curve (pr_curve.png), of the boxes
    `cvtool detect --conf CONF --iou IOU` finds."""
    with exits_cleanly():
        from cvtool import val

        _print_val(val.detect(data, weights=weights, model=model, device=device, conf=conf, iou=iou, max_det=max_det,
                              batch_size=batch_size, out=out, on_skip=_skipping))


@val_app.command("segment", epilog="Example: cvtool val segment membrane_test/ --weights runs/membrane/best.pt")
def val_segment(
    data: str = typer.Argument(..., help="Folder with images/ and masks/ (same file stems)."),
    weights: Optional[Path] = VAL_WEIGHTS_OPT,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A segmenter by name (its default weights)."),
    tile: Optional[int] = typer.Option(None, "--tile", min=16, help="Run in TILE x TILE tiles, as `cvtool segment --tile`."),
    rand: Optional[bool] = typer.Option(None, "--rand/--no-rand", help="ISBI 2012's foreground-restricted Rand score "
                                        "(default: for two-class models)."),
    threshold: Optional[float] = THRESHOLD_OPT,
    device: str = DEVICE_OPT,
    out: Optional[Path] = VAL_OUT_OPT,
) -> None:
    """Per-class IoU and Dice, mIoU, pixel accuracy; for two-class (membrane) data the adapted Rand error."""
    with exits_cleanly():
        from cvtool import val

        _print_val(val.segment(data, weights=weights, model=model, device=device, tile=tile, rand=rand, out=out,
                               threshold=threshold, on_skip=_skipping))


@val_app.command("face", epilog="Example: cvtool val face pairs.csv")
def val_face(
    pairs: Path = typer.Argument(..., help="CSV of path_a,path_b,same (1 same person, 0 not)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Face embedder (default dlib_face_resnet)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="An embedder checkpoint from `cvtool train face`."),
    detector: str = typer.Option("mmod", "--detector", help="mmod or haar."),
    device: str = DEVICE_OPT,
) -> None:
    """Same as `cvtool verify-face --calibrate PAIRS.csv -f json`: accuracy and ROC AUC over the pairs, the best
    threshold."""
    with exits_cleanly():
        from cvtool.api import FaceVerifier

        verifier = FaceVerifier(model, weights=weights, detector=detector, device=device, **_loading())
        info(verifier.describe())
        report = verifier.calibrate(pairs)
        for failed in report["failed"]:
            error_line(f"{failed['error']} (pair skipped)")
        _print_calibration(report, as_json=True)


def _dash_file_hint(argv: list[str]) -> str | None:
    """A file named like an option (`-leading.jpg`) is read as one; the usage error then says how to name it."""
    for arg in argv:
        if arg == "--":
            return None
        if arg.startswith("-") and len(arg) > 1 and os.path.exists(arg):
            return f"{arg} is a file whose name starts with '-': give it as ./{arg} (or after --)"
    return None


def main() -> None:
    if "RANK" not in os.environ:  # the usual case: one process
        try:
            app()
        except SystemExit as exc:
            hint = _dash_file_hint(sys.argv[1:]) if exc.code == 2 else None
            if hint:
                error_line(hint)
            raise
        return
    from cvtool.train.distributed import end_rank  # a rank torchrun started: a finished one skips the teardown

    try:
        app()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    end_rank(0)
