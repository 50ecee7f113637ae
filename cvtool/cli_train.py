"""`cvtool train`: one command per task, whose options are the fields of that task's dataclasses in
cvtool.train.recipes (default, range and help written there once; cvtool.train's entries take the same
defaults). A command's body gets the parsed values as the keywords of its cvtool.train entry.

Standard library, typer and the recipes' declarations only at import time: torch loads inside the commands.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import typer

from cvtool.console import (SETTINGS, ListFormat, TrainProgress, exits_cleanly, info, print_report, skipping,
                            wants_json)
from cvtool.errors import UsageError
from cvtool.train.args import Option, arg, declared
from cvtool.train.recipes import (ClassifyConfig, ClassifyTrainArgs, DetectConfig, DetectTrainArgs, FaceConfig,
                                  FaceTrainArgs, LocalizeConfig, LocalizeTrainArgs, RunOptions, SegmentConfig, SegmentTrainArgs, StyleConfig,
                                  StyleTrainArgs)

from cvtool.train.recipes import LandmarksConfig, LandmarksTrainArgs  # noqa: E402

train_app = typer.Typer(
    help="Train models on your own data; the checkpoints load with --weights in the other commands.",
    epilog="Example: cvtool train classify digits/ --arch lenet5 --epochs 30",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class ClassifyEvalOptions:
    """`train classify`'s own options, beyond the recipe's: score a checkpoint instead, and the report's format."""

    eval_only: bool = arg(False, help="Only evaluate --weights on DATA.")
    weights: Path | None = arg(None, short="-w", help="With --eval-only: the checkpoint to evaluate.")
    fmt: ListFormat | None = arg(None, "--format", short="-f", help="Final report: table or json.")


def parameter(option: Option) -> inspect.Parameter:
    """The typer parameter of a declared option."""
    if option.argument:
        spec = typer.Argument(option.default, metavar=option.metavar, help=option.help)
    else:
        spec = typer.Option(option.default, *option.flags, min=option.low, max=option.high, metavar=option.metavar,
                             help=option.help)
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=spec, annotation=option.annotation)


def train_command(name: str, *groups: type, epilog: str) -> Callable:
    """Register the decorated body as `cvtool train NAME`, its options the declared fields of `groups` (in that
    order); the body is called with every option's value but --devices (N > 1 relaunches the command under
    torchrun first), converted as the field says (`arg(convert=...)`)."""
    options = [option for group in groups for option in declared(group)]

    def register(body: Callable[..., None]) -> Callable[..., None]:
        def command(**values) -> None:
            with exits_cleanly():
                _relaunch(values.pop("devices"), values["device"], values["cpu_bf16"], values["val_every"])
                for option in options:
                    if option.convert is not None and values[option.name] is not None:
                        values[option.name] = option.convert(values[option.name])
                body(**values)

        command.__signature__ = inspect.Signature([parameter(option) for option in options])  # what typer reads
        command.__name__, command.__qualname__, command.__doc__ = body.__name__, body.__qualname__, body.__doc__
        command.options = options  # for tests and readers: what the command declares
        train_app.command(name, epilog=epilog)(command)
        return command

    return register


@train_command("classify", ClassifyTrainArgs, ClassifyConfig, ClassifyEvalOptions, RunOptions,
               epilog="Example: cvtool train classify digits/ --arch lenet5 --epochs 30 --out runs/digits")
def train_classify(*, eval_only: bool, weights: Path | None, fmt: ListFormat | None, **options) -> None:
    """Train a classifier; writes best.pt, last.pt, metrics.csv, curves.png, confusion.png, summary.json."""
    from cvtool import train

    if eval_only:
        if weights is None or options["data"] is None:
            raise UsageError("--eval-only needs DATA and --weights FILE")
        report = train.evaluate_classifier(weights, options["data"], device=options["device"], on_skip=skipping)
        print_report(report, as_json=wants_json(fmt))
        raise typer.Exit(0)
    summary = _fit(train.classify, progress=not SETTINGS.quiet, **options)
    info(f"best val accuracy {summary['best_val_accuracy']:.4f} (epoch {summary['best_epoch']}); "
         f"{summary['skipped_files']} file(s) skipped; {summary['run_dir']}/best.pt")
    print_report(summary["val_report"], as_json=wants_json(fmt))


@train_command("detect", DetectTrainArgs, DetectConfig, RunOptions,
               epilog="Example: cvtool train detect raccoon/ --arch yolo --epochs 60 --img-size 320 --out runs/raccoon")
def train_detect(**options) -> None:
    """Train the YOLO-style detector; writes best.pt (by mAP@0.5:0.95), last.pt, metrics.csv, curves.png, pr_curve.png."""
    from cvtool import train

    summary = _fit(train.detect, progress=not SETTINGS.quiet, **options)
    val_metrics = summary["val"]
    info(f"val mAP@0.5 {val_metrics['map50']:.4f}, mAP@0.5:0.95 {val_metrics['map50_95']:.4f} (best epoch "
         f"{summary['best_epoch']}); {summary['run_dir']}/best.pt")
    typer.echo(json.dumps(summary, indent=2))


@train_command("segment", SegmentTrainArgs, SegmentConfig, RunOptions,
               epilog="Example: cvtool train segment membrane/ --arch unet --epochs 40 --class-names membrane,cell")
def train_segment(**options) -> None:
    """Train a segmenter; writes best.pt, last.pt, metrics.csv, curves.png, examples.png, summary.json."""
    from cvtool import train

    summary = _fit(train.segment, on_warning=_warning, **options)
    val_metrics = summary["val"]
    rand = f", Rand F {val_metrics['rand_f']:.4f}" if "rand_f" in val_metrics else ""
    info(f"val mIoU {val_metrics['miou']:.4f}, pixel accuracy {val_metrics['pixel_accuracy']:.4f}{rand} (best "
         f"epoch {summary['best_epoch']}); {summary['run_dir']}/best.pt")
    typer.echo(json.dumps(summary, indent=2))


@train_command("style", StyleTrainArgs, StyleConfig, RunOptions,
               epilog="Example: cvtool train style starry_night.jpg --data photos/ --epochs 20 --out runs/starry")
def train_style(**options) -> None:
    """Train a feed-forward style network (Johnson et al.); `cvtool stylize IMG --model RUN/best.pt` applies it."""
    from cvtool import train

    summary = _fit(train.style, progress=not SETTINGS.quiet, **options)
    info(f"best epoch {summary['best_epoch']}; {summary['run_dir']}/best.pt")
    typer.echo(json.dumps(summary, indent=2))


@train_command("face", FaceTrainArgs, FaceConfig, RunOptions,
               epilog="Example: cvtool train face orl_faces/ --epochs 30 --mining semi-hard --val-split 0.25 --out runs/orl")
def train_face(**options) -> None:
    """Train a face embedder (triplet or Siamese binary loss); writes best.pt (with its verification threshold),
    last.pt, metrics.csv, curves.png, roc.png, summary.json."""
    from cvtool import train

    summary = _fit(train.face, on_warning=_warning, progress=not SETTINGS.quiet, **options)
    val_metrics = summary["val"]
    auc = val_metrics.get("roc_auc", val_metrics.get("auc"))
    info(f"held-out people: ROC AUC {auc:.4f}, verification accuracy {val_metrics['accuracy']:.4f} at distance "
         f"< {val_metrics['threshold']:.3f} (best epoch {summary['best_epoch']}); {summary['run_dir']}/best.pt")
    typer.echo(json.dumps(summary, indent=2))


@train_command("localize", LocalizeTrainArgs, LocalizeConfig, RunOptions,
               epilog="Example: cvtool train localize pets/ --arch resnet18 --epochs 30 --img-size 128 --out runs/pets")
def train_localize(**options) -> None:
    """Train classification with localisation (Pc, box, class: one object per image) on a classifier backbone;
    images without a box are the Pc = 0 examples. Writes best.pt, last.pt, metrics.csv, curves.png, examples.png,
    summary.json."""
    from cvtool import train

    summary = _fit(train.localize, progress=not SETTINGS.quiet, **options)
    v = summary["val"]
    info(f"val: Pc accuracy {v['pc_accuracy']:.4f}, class accuracy {v['class_accuracy']:.4f}, mean IoU "
         f"{v['mean_iou']:.4f}, IoU>=0.5 {v['iou50']:.4f} (best epoch {summary['best_epoch']}); "
         f"{summary['run_dir']}/best.pt")
    typer.echo(json.dumps(summary, indent=2))


@train_command("landmarks", LandmarksTrainArgs, LandmarksConfig, RunOptions,
               epilog="Example: cvtool train landmarks helen/ --arch resnet18 --epochs 60 --out runs/helen")
def train_landmarks(**options) -> None:
    """Train a landmark regressor (N x, y points); writes best.pt (lowest validation NME), last.pt, metrics.csv,
    curves.png, summary.json. `cvtool landmarks IMG --weights RUN/best.pt` runs it."""
    from cvtool import train

    summary = _fit(train.landmarks, on_warning=_warning, progress=not SETTINGS.quiet, **options)
    val_metrics = summary["val"]
    info(f"val NME {val_metrics['nme']:.4f} ({summary['normaliser']}), failure rate at 0.10 "
         f"{val_metrics['failure_0.10']:.3f} (best epoch {summary['best_epoch']}); {summary['run_dir']}/best.pt")
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


def _warning(message: str) -> None:
    info(f"warning: {message}")


def _fit(train_task, **options) -> dict:
    """Run one of cvtool.train's entries with progress on stderr; on Ctrl-C say how to carry on."""
    with TrainProgress() as progress:
        try:
            return train_task(callbacks=progress, on_skip=skipping, **options)
        except KeyboardInterrupt:
            run = progress.run
            if run is not None and (run.run_dir / "last.pt").exists():
                info(f"{run.run_dir / 'last.pt'} holds the last completed epoch; continue with --resume {run.run_dir}")
            raise
