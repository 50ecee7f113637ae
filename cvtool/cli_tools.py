"""`cvtool export`, `bench`, `ray`, `serve`, `models` and `val`: the commands around the tasks (option parsing
and printing only). The task commands are made from the task table (cvtool/cli.py, cvtool/cli_build.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from cvtool.cli_build import typer_option
from cvtool.console import (SETTINGS, ListFormat, error_line, exits_cleanly, info, loading_options, skipping,
                            wants_json as _wants_json)
from cvtool.errors import UsageError
from cvtool.serve.settings import DEFAULTS as SERVE, Settings as ServeSettings, size_text  # standard library only
from cvtool.tasks import common, names as task_names
from cvtool.tasks.localize import DEFAULT_CONF as LOCALIZE_CONF
from cvtool.tasks.options import split_csv
from cvtool.tasks.segment import SPEC as SEGMENT_SPEC

tools = typer.Typer()
models_app = typer.Typer(
    help="List, download ahead of time, and verify model weights.",
    epilog="Example: cvtool models --task classify --format json",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options other commands share with the task commands: the task table's (cvtool.tasks.common)
IMAGES_ARG = typer.Argument(..., metavar="IMAGES...", show_default=False, help=common.IMAGES_HELP)
WEIGHTS_OPT, DEVICE_OPT, BATCH_OPT, OUT_OPT, RECURSIVE_OPT, MAX_PIXELS_OPT = (
    typer_option(o) for o in (common.WEIGHTS, common.DEVICE, common.BATCH_SIZE, common.OUT, common.RECURSIVE,
                              common.MAX_PIXELS))

def print_calibration(report: dict, *, as_json: bool) -> None:
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







@tools.command(
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
    box IoU >= 0.80, localize box IoU >= 0.90, face embedding distance <= 0.06)."""
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


@tools.command(
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
            sizes = [int(b) for b in split_csv(batch_size)]
        except ValueError:
            raise UsageError(f"--batch-size {batch_size!r}: give whole numbers, e.g. 1,8") from None
        if not sizes or min(sizes) < 1:
            raise UsageError(f"--batch-size {batch_size!r}: give whole numbers of at least 1")
        report = bench.run_bench(targets or None, backends=split_csv(backend), batch_sizes=sizes, img_size=img_size,
                                 device=device, iters=iters, warmup=warmup, threads=threads, on_case=info)
        if _wants_json(fmt):
            import json

            typer.echo(json.dumps(report, indent=2))
        else:
            bench.print_table(report)


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


@tools.command(
    "ray",
    short_help="Run a task over many inputs on Ray Data, in input order." + _extra_mark("ray", "ray"),
    epilog="Example: cvtool ray classify photos/ --model resnet50 --set top_k=3 --workers 8 > labels.jsonl  "
           "(RAY_ADDRESS=... for a cluster)",
)
def ray_cmd(
    task: str = typer.Argument(..., metavar="TASK", help=", ".join(task_names()) + " (stylize: --model NETWORK; "
                               "verify-face: --set gallery=DIR)."),
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

        from cvtool.tasks import spec as task_spec

        try:
            declared = task_spec(task).options
        except KeyError:
            raise UsageError(f"unknown task {task!r}: {', '.join(task_names())}") from None
        options = {"model": model, "weights": weights} if weights is not None else {"model": model}
        options.update(declared.setting(item) for item in settings or [])
        failed = ray_run(task, images, num_workers=workers, num_cpus=cpus, num_gpus=gpus, batch_size=batch_size,
                         out=out, recursive=recursive, **options)
    raise typer.Exit(1 if failed else 0)


@tools.command(
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
                                on_skip=skipping))


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
                              batch_size=batch_size, out=out, on_skip=skipping))


@val_app.command("localize", epilog="Example: cvtool val localize pets_test/ --weights runs/pets/best.pt --out val/")
def val_localize(
    data: str = typer.Argument(..., help="images/ + annotations/ (VOC XML) or labels/ (YOLO), or a COCO .json; an "
                               "image without a box is a Pc = 0 example."),
    weights: Optional[Path] = VAL_WEIGHTS_OPT,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A localiser by name."),
    conf: Optional[float] = typer.Option(None, "--conf", min=0.0, max=1.0, help="Pc at or above which an image has "
                                         f"its object (default {LOCALIZE_CONF:g}, as `cvtool localize`)."),
    multi: str = typer.Option("refuse", "--multi", help="An image with several boxes: refuse, largest or skip."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1),
    device: str = DEVICE_OPT,
    out: Optional[Path] = VAL_OUT_OPT,
) -> None:
    """Pc accuracy, class accuracy, mean box IoU and the share of boxes at IoU >= 0.5 (examples.png)."""
    with exits_cleanly():
        from cvtool import val

        _print_val(val.localize(data, weights=weights, model=model, device=device, conf=conf, multi=multi,
                                batch_size=batch_size, out=out, on_skip=skipping))


@val_app.command("segment", epilog="Example: cvtool val segment membrane_test/ --weights runs/membrane/best.pt")
def val_segment(
    data: str = typer.Argument(..., help="Folder with images/ and masks/ (same file stems)."),
    weights: Optional[Path] = VAL_WEIGHTS_OPT,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A segmenter by name (its default weights)."),
    tile: Optional[int] = typer.Option(None, "--tile", min=16, help="Run in TILE x TILE tiles, as `cvtool segment --tile`."),
    rand: Optional[bool] = typer.Option(None, "--rand/--no-rand", help="ISBI 2012's foreground-restricted Rand score "
                                        "(default: for two-class models)."),
    threshold: Optional[float] = typer_option(SEGMENT_SPEC.options["threshold"]),
    device: str = DEVICE_OPT,
    out: Optional[Path] = VAL_OUT_OPT,
) -> None:
    """Per-class IoU and Dice, mIoU, pixel accuracy; for two-class (membrane) data the adapted Rand error."""
    with exits_cleanly():
        from cvtool import val

        _print_val(val.segment(data, weights=weights, model=model, device=device, tile=tile, rand=rand, out=out,
                               threshold=threshold, on_skip=skipping))


@val_app.command("landmarks", epilog="Example: cvtool val landmarks helen_test/ --weights runs/helen/best.pt")
def val_landmarks(
    data: str = typer.Argument(..., help="Images with .pts files (beside them or in labels/), or a CSV/JSON of points."),
    weights: Optional[Path] = VAL_WEIGHTS_OPT,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A landmark model by name."),
    boxes: str = typer.Option("points", "--boxes", help="points: each face cropped around its true points (as "
                              "training validates); detector: the face detector's box, as `cvtool landmarks` finds it."),
    device: str = DEVICE_OPT,
) -> None:
    """NME (inter-ocular for 68 / 5 face points, else the box diagonal) and failure rates at 0.08 and 0.10."""
    with exits_cleanly():
        from cvtool import val

        _print_val(val.landmarks(data, weights=weights, model=model, device=device, boxes=boxes, on_skip=skipping))


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

        verifier = FaceVerifier(model, weights=weights, detector=detector, device=device, **loading_options())
        info(verifier.describe())
        report = verifier.calibrate(pairs)
        for failed in report["failed"]:
            error_line(f"{failed['error']} (pair skipped)")
        print_calibration(report, as_json=True)
