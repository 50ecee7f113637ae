"""Training, one entry per task; each returns the run's summary (also written to RUN_DIR/summary.json).

    import cvtool
    summary = cvtool.train.classify("digits/", arch="lenet5", epochs=30, out="runs/digits")
    cvtool.train.classify(resume="runs/digits", epochs=40)          # carry on, bit-for-bit on CPU
    cvtool.train.detect("raccoon/", epochs=150, img_size=256, callbacks=my_progress)

`devices=N` runs the call as N data-parallel processes on this machine (torchrun; see
cvtool.train.distributed); a script started by torchrun itself needs nothing: every entry then trains
data-parallel. `callbacks` is a `cvtool.train.Callbacks` subclass overriding the hooks it wants (`on_train_start(run)`,
`on_epoch_start`, `on_batch`, `on_epoch_end`), called as training goes; `on_skip(message)` hears about unreadable files.
On CUDA training runs in mixed precision (bf16 where the GPU has it); `cpu_bf16=True` does so on the CPU too (bf16
autocast, channels-last tensors, on a CPU with AVX-512 BF16 or AMX: measured 1.4-2.4x as fast, results not float32's).
`val_every=N` validates after every N-th epoch and after the last only (best.pt is picked among those). A new run
goes to `out` (default `runs/TASK-ARCH-TIME`); `resume=RUN_DIR` continues it from its last.pt, where
only `epochs` may change. The recipes themselves are the modules beside this one (classification,
detection, segmentation, stylization, face_embedding) on one engine (engine.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cvtool.errors import UsageError
from cvtool.train.args import fallback as _fallback
from cvtool.train.recipes import (ClassifyConfig as _CC, ClassifyTrainArgs as _CA, DetectConfig as _DC,
                                  DetectTrainArgs as _DA, FaceConfig as _FC, FaceTrainArgs as _FA,
                                  LocalizeConfig as _LC, LocalizeTrainArgs as _LA,
                                  RunOptions as _RUN, SegmentConfig as _SC, SegmentTrainArgs as _SA,
                                  StyleConfig as _STC, StyleTrainArgs as _STA)

from cvtool.train.recipes import LandmarksConfig as _LMC, LandmarksTrainArgs as _LMA  # noqa: E402

__all__ = ["classify", "detect", "segment", "style", "face", "localize", "landmarks", "evaluate_classifier", "Run",
           "Callbacks"]


def __getattr__(name: str):
    if name == "Callbacks":  # lazily: the engine imports torch
        from cvtool.train.engine import Callbacks

        return Callbacks
    raise AttributeError(f"module 'cvtool.train' has no attribute {name!r}")


@dataclass
class Run:
    """Where a training call writes, and how it began: what `run_training` and the CLI's messages need."""

    run_dir: Path
    device: Any  # torch.device
    resumed: bool
    arch: str


def _check_ema(ema: float) -> None:
    if not 0.0 <= ema < 1.0:
        raise UsageError(f"--ema {ema}: the decay of the weights' moving average must be in [0, 1) (0: off)")


def _check_run_dir(run_dir: str | Path, task: str, sources: tuple) -> None:
    """A new run's folder, before any data is read: outside the folders the task reads from its data
    `sources` (DATA, --val), and creatable."""
    from cvtool.io.outputs import check_outside_data, check_writable
    from cvtool.train.datasets import data_folders

    check_outside_data(run_dir, [f for spec in sources for f in data_folders(task, spec)], f"--out {run_dir}")
    if not Path(run_dir).is_dir():  # a run directory that cannot be made is one line before any data is read
        check_writable(run_dir, f"--out {run_dir}")


def _start(task: str, arch: str, recipe, *, sources: tuple, out, resume, epochs, device: str,
           make) -> tuple[Run, Any, Any]:
    """The new-run / resume scaffolding every task shares: (run, args, cfg). `sources`: the data the run
    reads (DATA, --val), whose folders its own folder must stay out of."""
    from cvtool.device import resolve_device
    from cvtool.train import distributed
    from cvtool.train.engine import new_run_dir

    torch_device = distributed.init(resolve_device(device))  # under torchrun: joins the group, cuda:LOCAL_RANK
    if resume is not None:
        args, cfg = recipe.resumed_arguments(Path(resume), epochs)
        return Run(Path(resume), torch_device, True, getattr(args, "arch", arch)), args, cfg
    args, cfg = make()
    # rank 0 names the run (a default name holds the time) and every rank uses that name
    run_dir = distributed.broadcast_object(str(new_run_dir(Path(out) if out is not None else None, task, arch)))
    _check_run_dir(run_dir, task, sources)
    return Run(Path(run_dir), torch_device, False, arch), args, cfg


def _fit(recipe, run: Run, args, cfg, callbacks, on_skip, sync_bn: bool = False, cpu_bf16: bool = False,
         val_every: int = _RUN.val_every, **options) -> dict:
    from dataclasses import replace

    from cvtool.train import distributed

    if run.resumed:  # the run's own precision and validation schedule; only --epochs may change
        if cpu_bf16 and not cfg.cpu_bf16:
            raise UsageError(f"--cpu-bf16: {run.run_dir} trains in float32, and a resumed run keeps its precision")
        if cfg.cpu_bf16 and run.device.type == "cpu":
            from cvtool.device import cpu_has_bf16

            if not cpu_has_bf16():
                raise UsageError(f"{run.run_dir} trains in bf16 (--cpu-bf16), and this CPU has no bfloat16 "
                                 "instructions (AVX512-BF16 or AMX): resume it on one that has")
        if val_every != _RUN.val_every and val_every != cfg.val_every:
            raise UsageError(f"--val-every {val_every}: {run.run_dir} validates every {cfg.val_every} epoch(s), and "
                             "a resumed run keeps that")
    if not distributed.is_main():  # progress, skipped-file and warning lines are rank 0's to report
        callbacks, on_skip = None, None
        if "on_warning" in options:
            options["on_warning"] = None
    if callbacks is not None:
        callbacks.on_train_start(run)
    if sync_bn:
        cfg = replace(cfg, sync_bn=True)
    if not run.resumed:
        cfg = replace(cfg, cpu_bf16=cpu_bf16, val_every=val_every)
    try:
        summary = recipe.run_training(args, cfg, run.run_dir, run.device, resume=run.resumed, callbacks=callbacks,
                                      on_skip=on_skip, **options)
    finally:
        distributed.cleanup()
    summary.setdefault("run_dir", str(run.run_dir))
    return summary


def check_run_options(device: str, cpu_bf16: bool, val_every: int, *, epochs: int | None = None,
                      batch_size: int | None = None, lr: float | None = None, weight_decay: float | None = None,
                      workers: int | None = None) -> None:
    """The options every task takes, checked before anything starts (before devices=N launches torchrun too);
    None: the task's default. The CLI's option ranges, for Python callers too (epochs=0 trained nothing)."""
    if val_every < 1:
        raise UsageError(f"--val-every {val_every}: validate after every N-th epoch, N >= 1")
    for option, value, fine, rule in (("--epochs", epochs, lambda v: v >= 1, "at least 1"),
                                      ("--batch-size", batch_size, lambda v: v >= 1, "at least 1"),
                                      ("--lr", lr, lambda v: v > 0, "above 0"),
                                      ("--weight-decay", weight_decay, lambda v: v >= 0, "0 or more"),
                                      ("--workers", workers, lambda v: v >= 0, "0 or more")):
        if value is not None and not fine(value):
            raise UsageError(f"{option} {value}: must be {rule}")
    if cpu_bf16:
        from cvtool.device import cpu_has_bf16, resolve_device

        if resolve_device(device).type == "cpu" and not cpu_has_bf16():
            raise UsageError("--cpu-bf16 needs a CPU with bfloat16 instructions (AVX512-BF16 or AMX); this CPU has "
                             "none (it would emulate bf16, slower than float32): drop --cpu-bf16")


def _launch(task: str, devices: int, options: dict) -> dict | None:
    """devices=N > 1: this same call as N data-parallel processes on this machine (torchrun); rank 0's
    summary. None when the call should simply run here."""
    if devices <= 1:
        return None
    import json

    from cvtool.train import distributed
    from cvtool.train.engine import new_run_dir

    if distributed.under_torchrun():
        raise UsageError("devices= launches torchrun itself; under torchrun, leave it out")
    if any(options.pop(hook, None) is not None for hook in ("callbacks", "on_skip", "on_warning")):
        raise UsageError("callbacks, on_skip and on_warning cannot reach the processes devices= launches; run your "
                         "script under torchrun instead (rank 0 calls them)")
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
    if options.get("resume") is None:
        run_task = "stylize" if task == "style" else task
        options["out"] = str(new_run_dir(Path(options["out"]) if options.get("out") else None, run_task,
                                         options.get("arch", "fast_style")))
        _check_run_dir(options["out"], run_task, (options.get("data"), options.get("val")))
    run_dir = Path(options.get("resume") or options["out"])
    code = distributed.launch([task, json.dumps(options)], devices, module="cvtool.train._launched")
    if code:
        raise UsageError(f"data-parallel training on {devices} processes failed (exit {code}); see the lines above")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.setdefault("run_dir", str(run_dir))
    return summary


def _need(value, message: str):
    if value is None:
        raise UsageError(message)
    return value


def classify(data: str | Path | None = None, *, arch: str = _CA.arch, epochs: int | None = _CC.epochs,
             batch_size: int = _CC.batch_size, lr: float = _CC.lr, weight_decay: float = _CC.weight_decay,
             optimizer: str = _CC.optimizer, img_size: int | None = _CA.img_size, val: str | Path | None = _CA.val,
             val_split: float = _CA.val_split, pretrained: bool = _CA.pretrained, hflip: bool = _CA.hflip,
             out: str | Path | None = _CC.out, resume: str | Path | None = _RUN.resume, device: str = _RUN.device,
             seed: int = _CC.seed, workers: int | None = _CC.workers, callbacks=None,
             on_skip: Callable[[str], None] | None = None, progress: bool = False, sync_bn: bool = _RUN.sync_bn,
             cpu_bf16: bool = _RUN.cpu_bf16, val_every: int = _RUN.val_every, devices: int = _RUN.devices,
             ema: float = _CA.ema) -> dict:
    """Train a classifier on an ImageFolder tree, a CSV of path,label, or MNIST IDX files. `ema` (a decay in
    (0, 1)): validate and save a moving average of the weights."""
    check_run_options(device, cpu_bf16, val_every, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, workers=workers)
    launched = _launch('classify', devices, {k: v for k, v in locals().items() if k != 'devices'})
    if launched is not None:
        return launched
    from cvtool.train import classification as recipe
    from cvtool.train.engine import TrainConfig

    def make():
        _need(data, "DATA is required (or --resume RUN_DIR)")
        _check_ema(ema)
        args = recipe.ClassifyTrainArgs(str(data), arch, str(val) if val else None, val_split, img_size, pretrained,
                                        hflip, ema=ema)
        return args, TrainConfig(epochs=epochs or _fallback(_CC, "epochs"), batch_size=batch_size, lr=lr,
                                 weight_decay=weight_decay, optimizer=optimizer, seed=seed, workers=workers)

    run, args, cfg = _start("classify", arch, recipe, sources=(data, val), out=out, resume=resume, epochs=epochs,
                            device=device, make=make)
    return _fit(recipe, run, args, cfg, callbacks, on_skip, progress=progress, sync_bn=sync_bn,
                cpu_bf16=cpu_bf16, val_every=val_every)


def evaluate_classifier(weights: str | Path, data: str | Path, *, device: str = _RUN.device,
                        on_skip: Callable[[str], None] | None = None) -> dict:
    """Accuracy and per-class precision/recall/F1 of a classifier checkpoint on labelled data."""
    from cvtool.device import resolve_device
    from cvtool.train import classification as recipe

    return recipe.evaluate_checkpoint(Path(weights), str(data), resolve_device(device), on_skip=on_skip)


def detect(data: str | Path | None = None, *, arch: str = _DA.arch, epochs: int | None = _DC.epochs,
           batch_size: int = _DC.batch_size, lr: float = _DC.lr, weight_decay: float = _DC.weight_decay,
           optimizer: str = _DC.optimizer, img_size: int = _DA.img_size, anchors: int = _DA.anchors,
           width: int = _DA.width, hflip: bool = _DA.hflip, backbone: str = _DA.backbone,
           pretrained: bool = _DA.pretrained, mosaic: float = _DA.mosaic, close_mosaic: int = _DA.close_mosaic,
           ema: float = _DA.ema, val: str | Path | None = _DA.val, val_split: float = _DA.val_split,
           out: str | Path | None = _DC.out, resume: str | Path | None = _RUN.resume, device: str = _RUN.device,
           seed: int = _DC.seed, workers: int | None = _DC.workers, callbacks=None,
           on_skip: Callable[[str], None] | None = None, progress: bool = False, sync_bn: bool = _RUN.sync_bn,
           cpu_bf16: bool = _RUN.cpu_bf16, val_every: int = _RUN.val_every, devices: int = _RUN.devices) -> dict:
    """Train the YOLO-style detector on VOC XML, YOLO txt or COCO JSON data; best.pt by mAP@0.5:0.95."""
    check_run_options(device, cpu_bf16, val_every, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, workers=workers)
    launched = _launch('detect', devices, {k: v for k, v in locals().items() if k != 'devices'})
    if launched is not None:
        return launched
    from cvtool.train import detection as recipe
    from cvtool.train.engine import TrainConfig

    def make():
        from cvtool.models.yolo import BACKBONES, SIZE_MULTIPLE

        _need(data, "DATA is required (or --resume RUN_DIR)")
        if arch != "yolo":
            raise UsageError("train detect trains --arch yolo; torchvision's detectors come pretrained")
        if img_size % SIZE_MULTIPLE:
            raise UsageError(f"--img-size {img_size}: must be a multiple of {SIZE_MULTIPLE} (the detector's largest stride)")
        if backbone not in BACKBONES:
            raise UsageError(f"unknown --backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
        _check_ema(ema)
        args = recipe.DetectTrainArgs(str(data), arch, str(val) if val else None, val_split, img_size, anchors, width,
                                      hflip, backbone, pretrained, mosaic, close_mosaic=close_mosaic, ema=ema)
        return args, TrainConfig(epochs=epochs or _fallback(_DC, "epochs"), batch_size=batch_size, lr=lr,
                                 weight_decay=weight_decay, optimizer=optimizer, seed=seed, workers=workers,
                                 monitor="val_map50_95", warmup_epochs=1)

    run, args, cfg = _start("detect", arch, recipe, sources=(data, val), out=out, resume=resume, epochs=epochs,
                            device=device, make=make)
    return _fit(recipe, run, args, cfg, callbacks, on_skip, progress=progress, sync_bn=sync_bn,
                cpu_bf16=cpu_bf16, val_every=val_every)


def segment(data: str | Path | None = None, *, arch: str = _SA.arch, epochs: int | None = _SC.epochs,
            batch_size: int = _SC.batch_size, lr: float = _SC.lr, weight_decay: float = _SC.weight_decay,
            optimizer: str = _SC.optimizer, crop: int | None = _SA.crop, loss: str = _SA.loss, width: int = _SA.width,
            depth: int = _SA.depth, in_channels: int = _SA.in_channels,
            class_names: list[str] | None = _SA.class_names, val: str | Path | None = _SA.val,
            val_split: float = _SA.val_split, out: str | Path | None = _SC.out,
            resume: str | Path | None = _RUN.resume, device: str = _RUN.device, seed: int = _SC.seed,
            workers: int | None = _SC.workers, callbacks=None, on_skip: Callable[[str], None] | None = None,
            on_warning: Callable[[str], None] | None = None, sync_bn: bool = _RUN.sync_bn,
            cpu_bf16: bool = _RUN.cpu_bf16, val_every: int = _RUN.val_every, devices: int = _RUN.devices,
            elastic: bool = _SA.elastic, elastic_sigma: float = _SA.elastic_sigma, mirror_pad: int = _SA.mirror_pad,
            border_w0: float = _SA.border_w0, border_sigma: float = _SA.border_sigma,
            border_balance: bool = _SA.border_balance, select: str = _SC.select, ema: float = _SA.ema) -> dict:
    """Train a U-Net (or a torchvision segmenter) on images/ + masks/ folder pairs; best.pt by mIoU, or with
    `select="rand"` (two classes: membranes and the cells they separate) by ISBI 2012's Rand F-score of the cell
    regions. The U-Net paper's recipe: `elastic=True`, `loss="weighted-ce"` (border weights w0, sigma),
    `mirror_pad`, `width=64`. `ema` (a decay in (0, 1)): validate and save a moving average of the weights.
    `on_warning(message)` hears what looks wrong in the data but trains as given (also the summary's `warnings`):
    masks using fewer than half of the class ids up to their largest."""
    check_run_options(device, cpu_bf16, val_every, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, workers=workers)
    launched = _launch('segment', devices, {k: v for k, v in locals().items() if k != 'devices'})
    if launched is not None:
        return launched
    from cvtool.train import segmentation as recipe
    from cvtool.train.engine import TrainConfig

    def make():
        _need(data, "DATA is required (or --resume RUN_DIR)")
        if in_channels not in (1, 3):
            raise UsageError("--in-channels must be 1 or 3")
        args = recipe.SegmentTrainArgs(str(data), arch, str(val) if val else None, val_split, crop, loss, width,
                                       depth, in_channels, list(class_names) if class_names else None,
                                       elastic=elastic, elastic_sigma=elastic_sigma, mirror_pad=mirror_pad,
                                       border_w0=border_w0, border_sigma=border_sigma,
                                       border_balance=border_balance, ema=ema)
        _check_ema(ema)
        recipe.dataset_options(args)  # bad values stop here, before a run directory is made
        if select not in recipe.SELECT:
            raise UsageError(f"unknown --select {select!r}; choose from {', '.join(recipe.SELECT)}")
        return args, TrainConfig(epochs=epochs or _fallback(_SC, "epochs"), batch_size=batch_size, lr=lr,
                                 weight_decay=weight_decay, optimizer=optimizer, seed=seed, workers=workers,
                                 monitor=recipe.SELECT[select], val_batch_size=1)

    run, args, cfg = _start("segment", arch, recipe, sources=(data, val), out=out, resume=resume, epochs=epochs,
                            device=device, make=make)
    return _fit(recipe, run, args, cfg, callbacks, on_skip, sync_bn=sync_bn, cpu_bf16=cpu_bf16, val_every=val_every,
                on_warning=on_warning)


def style(style_image: str | Path | None = None, *, data: str | Path | None = None, epochs: int | None = _STC.epochs,
          batch_size: int = _STC.batch_size, lr: float = _STC.lr, img_size: int = _STA.img_size,
          content_weight: float = _STA.content_weight, style_weight: float = _STA.style_weight,
          tv_weight: float = _STA.tv_weight, width: int = _STA.width, vgg: str = _STA.vgg,
          vgg_weights: str | Path | None = _STA.vgg_weights, out: str | Path | None = _STC.out,
          resume: str | Path | None = _RUN.resume, device: str = _RUN.device, seed: int = _STC.seed, callbacks=None,
          on_skip: Callable[[str], None] | None = None, progress: bool = False, sync_bn: bool = _RUN.sync_bn,
          cpu_bf16: bool = _RUN.cpu_bf16, val_every: int = _RUN.val_every, devices: int = _RUN.devices) -> dict:
    """Train a feed-forward style network (Johnson et al.) for one style image on a folder of photos."""
    check_run_options(device, cpu_bf16, val_every, epochs=epochs, batch_size=batch_size, lr=lr)
    launched = _launch('style', devices, {k: v for k, v in locals().items() if k != 'devices'})
    if launched is not None:
        return launched
    from cvtool.train import stylization as recipe
    from cvtool.train.engine import TrainConfig

    def make():
        if style_image is None or data is None:
            raise UsageError("STYLE_IMAGE and --data CONTENT_DIR are required (or --resume RUN_DIR)")
        args = recipe.StyleTrainArgs(str(style_image), str(data), vgg, str(vgg_weights) if vgg_weights else None,
                                     img_size, content_weight, style_weight, tv_weight, width)
        return args, TrainConfig(epochs=epochs or _fallback(_STC, "epochs"), batch_size=batch_size, lr=lr,
                                 weight_decay=0.0, seed=seed, monitor="none")

    run, args, cfg = _start("stylize", "fast_style", recipe, sources=(data,), out=out, resume=resume,
                            epochs=epochs, device=device, make=make)
    return _fit(recipe, run, args, cfg, callbacks, on_skip, progress=progress, sync_bn=sync_bn,
                cpu_bf16=cpu_bf16, val_every=val_every)


def face(data: str | Path | None = None, *, arch: str = _FA.arch, loss: str = _FA.loss, margin: float = _FA.margin,
         mining: str = _FA.mining, identities_per_batch: int = _FA.identities_per_batch,
         images_per_identity: int = _FA.images_per_identity, epochs: int | None = _FC.epochs,
         lr: float | None = _FC.lr, weight_decay: float = _FC.weight_decay, img_size: int | None = _FA.img_size,
         val_split: float = _FA.val_split, hflip: bool = _FA.hflip, out: str | Path | None = _FC.out,
         resume: str | Path | None = _RUN.resume, device: str = _RUN.device, seed: int = _FC.seed,
         workers: int | None = _FC.workers, callbacks=None, on_skip: Callable[[str], None] | None = None,
         on_warning: Callable[[str], None] | None = None, progress: bool = False, sync_bn: bool = _RUN.sync_bn,
         cpu_bf16: bool = _RUN.cpu_bf16, val_every: int = _RUN.val_every, devices: int = _RUN.devices) -> dict:
    """Train a face embedder (triplet or Siamese binary loss) on one folder of photos per person."""
    check_run_options(device, cpu_bf16, val_every, epochs=epochs, lr=lr, weight_decay=weight_decay, workers=workers)
    launched = _launch('face', devices, {k: v for k, v in locals().items() if k != 'devices'})
    if launched is not None:
        return launched
    from cvtool.train import face_embedding as recipe
    from cvtool.train.engine import TrainConfig

    def make():
        _need(data, "DATA is required (or --resume RUN_DIR)")
        args = recipe.FaceTrainArgs(str(data), arch, loss, margin, mining, identities_per_batch, images_per_identity,
                                    img_size, val_split, hflip)
        return args, TrainConfig(epochs=epochs or _fallback(_FC, "epochs"), batch_size=identities_per_batch * images_per_identity,
                                 lr=lr or recipe.default_lr(arch), weight_decay=weight_decay, seed=seed,
                                 workers=workers, monitor="val_roc_auc", val_batch_size=256)

    run, args, cfg = _start("face", arch, recipe, sources=(data,), out=out, resume=resume, epochs=epochs, device=device,
                            make=make)
    return _fit(recipe, run, args, cfg, callbacks, on_skip, progress=progress, sync_bn=sync_bn,
                cpu_bf16=cpu_bf16, val_every=val_every, on_warning=on_warning)


def localize(data: str | Path | None = None, *, arch: str = _LA.arch, epochs: int | None = _LC.epochs,
             batch_size: int = _LC.batch_size, lr: float = _LC.lr, weight_decay: float = _LC.weight_decay,
             optimizer: str = _LC.optimizer, img_size: int | None = _LA.img_size, multi: str = _LA.multi,
             val: str | Path | None = _LA.val, val_split: float = _LA.val_split, pretrained: bool = _LA.pretrained,
             hflip: bool = _LA.hflip, ema: float = _LA.ema, out: str | Path | None = _LC.out,
             resume: str | Path | None = _RUN.resume, device: str = _RUN.device, seed: int = _LC.seed,
             workers: int | None = _LC.workers, callbacks=None, on_skip: Callable[[str], None] | None = None,
             progress: bool = False, sync_bn: bool = _RUN.sync_bn, cpu_bf16: bool = _RUN.cpu_bf16,
             val_every: int = _RUN.val_every, devices: int = _RUN.devices) -> dict:
    """Classification with localisation (one object per image: Pc, box, class) on any classifier backbone
    (`arch`), from VOC XML, YOLO txt or COCO JSON data; images without a box are the Pc = 0 examples.
    best.pt by the share of images fully right (cvtool.train.localization.localization_scores)."""
    check_run_options(device, cpu_bf16, val_every, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, workers=workers)
    launched = _launch('localize', devices, {k: v for k, v in locals().items() if k != 'devices'})
    if launched is not None:
        return launched
    from cvtool.train import localization as recipe
    from cvtool.train.engine import TrainConfig

    def make():
        from cvtool.models.registry import get_entry
        from cvtool.train.datasets import check_val_split

        _need(data, "DATA is required (or --resume RUN_DIR)")
        get_entry(arch, "classify").check_network()  # a backbone: any classifier network
        if multi not in recipe.MULTI:
            raise UsageError(f"unknown --multi {multi!r}; choose from {', '.join(recipe.MULTI)}")
        if val is None:
            check_val_split(val_split)
        _check_ema(ema)
        args = recipe.LocalizeTrainArgs(str(data), arch, str(val) if val else None, val_split, img_size, multi,
                                        pretrained, hflip, ema=ema)
        return args, TrainConfig(epochs=epochs or _fallback(_LC, "epochs"), batch_size=batch_size, lr=lr,
                                 weight_decay=weight_decay, optimizer=optimizer, seed=seed, workers=workers)

    run, args, cfg = _start("localize", arch, recipe, sources=(data, val), out=out, resume=resume, epochs=epochs,
                            device=device, make=make)
    return _fit(recipe, run, args, cfg, callbacks, on_skip, progress=progress, sync_bn=sync_bn,
                cpu_bf16=cpu_bf16, val_every=val_every)


def landmarks(data: str | Path | None = None, *, arch: str = _LMA.arch, epochs: int | None = _LMC.epochs,
              batch_size: int = _LMC.batch_size, lr: float = _LMC.lr, weight_decay: float = _LMC.weight_decay,
              optimizer: str = _LMC.optimizer, img_size: int | None = _LMA.img_size, val: str | Path | None = _LMA.val,
              val_split: float = _LMA.val_split, region: str = _LMA.region, flip_pairs: str | None = _LMA.flip_pairs,
              hflip: bool = _LMA.hflip, rotate: float = _LMA.rotate, jitter: float = _LMA.jitter,
              fit_faces: int = _LMA.fit_faces, pretrained: bool = _LMA.pretrained, ema: float = _LMA.ema,
              out: str | Path | None = _LMC.out, resume: str | Path | None = _RUN.resume, device: str = _RUN.device,
              seed: int = _LMC.seed, workers: int | None = _LMC.workers, callbacks=None,
              on_skip: Callable[[str], None] | None = None, on_warning: Callable[[str], None] | None = None,
              progress: bool = False, sync_bn: bool = _RUN.sync_bn, cpu_bf16: bool = _RUN.cpu_bf16,
              val_every: int = _RUN.val_every, devices: int = _RUN.devices) -> dict:
    """Train a landmark regressor (N x, y points per image) on iBUG .pts folders or a CSV/JSON of points;
    best.pt by the lowest validation NME (inter-ocular for 68 / 5 face points, else the box diagonal).
    `region="box"` crops each face around its points (at inference: a face detector's box, mapped as measured on
    `fit_faces` training faces); `"image"` takes the whole image. `flip_pairs` ("A:B,..."): the left/right pairs
    a flip swaps, for point sets other than iBUG's 68 and dlib's 5."""
    check_run_options(device, cpu_bf16, val_every, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, workers=workers)
    launched = _launch('landmarks', devices, {k: v for k, v in locals().items() if k != 'devices'})
    if launched is not None:
        return launched
    from cvtool.train import landmark_regression as recipe
    from cvtool.train.engine import TrainConfig

    def make():
        _need(data, "DATA is required (or --resume RUN_DIR)")
        _check_ema(ema)
        args = recipe.LandmarksTrainArgs(str(data), arch, str(val) if val else None, val_split, img_size, region,
                                         flip_pairs, hflip, rotate, jitter, fit_faces, pretrained, ema)
        recipe.check_args(args)
        return args, TrainConfig(epochs=epochs or _fallback(_LMC, "epochs"), batch_size=batch_size, lr=lr,
                                 weight_decay=weight_decay, optimizer=optimizer, seed=seed, workers=workers,
                                 monitor="val_neg_nme")

    run, args, cfg = _start("landmarks", "landmark_net", recipe, sources=(data, val), out=out, resume=resume,
                            epochs=epochs, device=device, make=make)
    return _fit(recipe, run, args, cfg, callbacks, on_skip, progress=progress, sync_bn=sync_bn,
                cpu_bf16=cpu_bf16, val_every=val_every, on_warning=on_warning)
