"""`cvtool train classify`: what classification plugs into the training engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvtool.errors import UsageError
from cvtool.models.registry import ModelEntry
from cvtool.ops.preprocess import Preprocess
from cvtool.train import plots
from cvtool.train.recipes import ClassifyTrainArgs


def replace_head(model: nn.Module, old_classes: int, num_classes: int) -> nn.Module:
    """Swap every linear layer that outputs `old_classes` logits (the main head and any auxiliary
    heads) for a fresh one with `num_classes` outputs: fine-tuning a pretrained network for new classes."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and module.out_features == old_classes:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(module.in_features, num_classes))
    return model


def classification_loss(outputs, targets: torch.Tensor, aux_weight: float = 0.3) -> torch.Tensor:
    """Cross-entropy on the logits; GoogLeNet/Inception's auxiliary heads (training mode) count `aux_weight` each."""
    if isinstance(outputs, torch.Tensor):
        return nn.functional.cross_entropy(outputs, targets)
    main, *aux = [o for o in outputs if o is not None]
    return nn.functional.cross_entropy(main, targets) + sum(aux_weight * nn.functional.cross_entropy(a, targets) for a in aux)


def logits_of(outputs) -> torch.Tensor:
    return outputs if isinstance(outputs, torch.Tensor) else outputs[0]


@dataclass
class ConfusionState:
    matrix: np.ndarray


class ClassificationTask:
    name = "classify"

    def __init__(self, entry: ModelEntry, classes: list[str], preprocess: Preprocess, model_builder):
        self.entry, self.classes, self.preprocess = entry, classes, preprocess
        self._build = model_builder

    def build_model(self) -> nn.Module:
        return self._build()

    def loss(self, outputs, targets):
        return classification_loss(outputs, targets)

    def start_metrics(self) -> ConfusionState:
        n = len(self.classes)
        return ConfusionState(np.zeros((n, n), dtype=np.int64))

    def update_metrics(self, state: ConfusionState, outputs, targets) -> None:
        predicted = logits_of(outputs).argmax(1).cpu().numpy()
        np.add.at(state.matrix, (targets.cpu().numpy(), predicted), 1)

    def finish_metrics(self, state: ConfusionState) -> dict[str, float]:
        total = state.matrix.sum()
        return {"accuracy": float(np.trace(state.matrix) / total) if total else 0.0}

    def checkpoint_fields(self) -> dict:
        return {"arch": self.entry.name, "task": "classify", "classes": list(self.classes),
                "preprocess": self.preprocess.to_dict()}

    def save_plots(self, run_dir: Path, history: list[dict], matrix: np.ndarray | None) -> list[str]:
        written = [plots.save_curves(history, run_dir / "curves.png")] if history else []
        if matrix is not None:
            written.append(plots.save_confusion(matrix, self.classes, run_dir / "confusion.png"))
        return written


def per_class_report(matrix: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the matrix, as plain JSON-able data."""
    from sklearn.metrics import precision_recall_fscore_support

    true = np.repeat(np.arange(len(classes)), matrix.sum(1))
    predicted = np.concatenate([np.repeat(np.arange(len(classes)), row) for row in matrix]) if matrix.sum() else np.array([], int)
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=np.arange(len(classes)), zero_division=0
    )
    total = int(matrix.sum())
    return {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "images": total,
        "per_class": {
            name: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": matrix.tolist(),
    }


def training_preprocess(entry: ModelEntry, img_size: int | None) -> Preprocess:
    """The entry's preprocessing, rescaled to `img_size` when given (keeping its resize/crop ratio)."""
    base = entry.preprocess()
    if not img_size:
        return base
    resize = round(img_size * base.resize_size / base.crop_size)
    return Preprocess(**{**base.to_dict(), "crop_size": img_size, "resize_size": resize})


def check_input_size(entry: ModelEntry, preprocess: Preprocess) -> None:
    """Refuse, before any data is read or any file written, an --img-size the architecture cannot take
    (LeNet-5 is defined for 32 x 32: its C5 convolution must reduce the S4 maps to 1 x 1): one forward
    pass of a blank image through a freshly built network."""
    size = preprocess.crop_size
    if size is None or size == entry.preprocess().crop_size:
        return
    with torch.no_grad():
        try:
            entry.build(num_classes=2).eval()(torch.zeros(1, preprocess.channels, size, size))
        except (RuntimeError, ValueError) as exc:
            default = entry.preprocess().crop_size
            detail = (str(exc).strip().splitlines() or [""])[0]
            raise UsageError(f"--img-size {size}: {entry.name} cannot take {size}x{size} images ({detail}); "
                             f"leave --img-size out to train at its own {default}x{default}") from None


def _pretrained_model(entry: ModelEntry, num_classes: int, *, progress: bool) -> nn.Module:
    from cvtool.errors import WeightsError
    from cvtool.models.checkpoint import apply_state_dict, load_weights_file

    if entry.weights is None:
        raise WeightsError(f"{entry.name} has no pretrained weights; use --no-pretrained")
    loaded = load_weights_file(entry.weights.local_path(progress=progress, alternative=None))
    model = entry.build(num_classes=len(loaded.classes) if loaded.classes else None)
    apply_state_dict(model, loaded.state_dict, source=str(loaded.path))
    return replace_head(model, len(loaded.classes or entry.classes() or []), num_classes)


def prepare_data(args: ClassifyTrainArgs, preprocess: Preprocess, seed: int, on_skip=None):
    """(train, val, skipped): decoded once; bad files dropped, each reported through `on_skip`."""
    from cvtool.train.datasets import DataError, decode_all, open_classification_data, stratified_split

    data = decode_all(open_classification_data(args.data), preprocess.resize_size, on_skip)
    if args.val:
        val = decode_all(open_classification_data(args.val), preprocess.resize_size, on_skip)
        if val.classes != data.classes:
            raise DataError(f"validation classes {val.classes[:5]}… differ from the training classes {data.classes[:5]}…", args.val)
        return data, val, data.skipped + val.skipped
    train_idx, val_idx = stratified_split(data.labels, args.val_split, seed)
    return data.subset(train_idx), data.subset(val_idx), data.skipped


def run_training(
    args: ClassifyTrainArgs,
    cfg,
    run_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    callbacks=None,
    on_skip=None,
    progress: bool = True,
) -> dict:
    """Train (or resume) a classifier into `run_dir`; return the summary also written to summary.json."""
    import time

    from cvtool.models.registry import get_entry
    from cvtool.train.datasets import Augment, ClassificationDataset
    from cvtool.train.engine import Trainer

    start = time.perf_counter()
    entry = get_entry(args.arch, "classify")
    preprocess = training_preprocess(entry, args.img_size)
    check_input_size(entry, preprocess)
    train_data, val_data, skipped = prepare_data(args, preprocess, cfg.seed, on_skip)
    classes = train_data.classes

    def build() -> nn.Module:
        if args.pretrained:
            return _pretrained_model(entry, len(classes), progress=progress)
        return entry.build(num_classes=len(classes))

    task = ClassificationTask(entry, classes, preprocess, build)
    trainer = Trainer(
        task,
        ClassificationDataset(train_data, preprocess, Augment(hflip=args.hflip)),
        ClassificationDataset(val_data, preprocess),
        cfg,
        run_dir,
        device,
        callbacks=callbacks,
        args=vars(args).copy(),
        ema=args.ema,
    )
    if resume:
        trainer.resume(run_dir / "last.pt")
    state = trainer.fit()
    if not trainer.is_main:  # rank 0 scores, plots and writes the summary; the others get it
        return trainer.share_summary(None)

    best = trainer.load_best_into(run_dir / "best.pt")
    report = evaluate_model(trainer.scored_model, trainer.val_loader, classes, device)
    task.save_plots(run_dir, state.history, np.asarray(report["confusion_matrix"]))
    summary = {
        "task": "classify",
        "arch": entry.name,
        "ema": args.ema or None,
        "classes": classes,
        "train_images": len(train_data),
        "val_images": len(val_data),
        "skipped_files": len(skipped),
        "epochs": state.epoch,
        "best_epoch": best,
        "best_val_accuracy": report["accuracy"],
        "val_report": report,
        "seconds": round(time.perf_counter() - start, 2),
        "checkpoints": {"best": str(run_dir / "best.pt"), "last": str(run_dir / "last.pt")},
    }
    return trainer.finish(summary)


@torch.inference_mode()
def evaluate_model(model: nn.Module, loader, classes: list[str], device: torch.device) -> dict:
    model.eval()
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for inputs, targets in loader:
        predicted = logits_of(model(inputs.to(device))).argmax(1).cpu().numpy()
        np.add.at(matrix, (targets.numpy(), predicted), 1)
    return per_class_report(matrix, classes)


def evaluate_checkpoint(weights: Path | None, data: str, device: torch.device, *, model: str | None = None,
                        batch_size: int = 64, on_skip=None) -> dict:
    """`--eval-only` and `cvtool val classify`: a trained checkpoint (or a model name) against a labelled data
    set; class names matched by name."""
    from cvtool.models.loading import load_model
    from cvtool.train.datasets import ClassificationDataset, DataError, decode_all, open_classification_data

    loaded = load_model(model, task="classify", weights=weights, device=device)
    data = decode_all(open_classification_data(data), loaded.preprocess.resize_size, on_skip)
    unknown = [c for c in data.classes if c not in loaded.classes]
    if unknown:
        raise DataError(f"classes not known to the model: {', '.join(unknown[:5])}", data.origin)
    remap = [loaded.classes.index(c) for c in data.classes]
    data.labels = [remap[label] for label in data.labels]
    loader = torch.utils.data.DataLoader(ClassificationDataset(data, loaded.preprocess), batch_size=batch_size)
    report = evaluate_model(loaded.module, loader, loaded.classes, device)
    report["skipped_files"] = len(data.skipped)
    return report


def resumed_arguments(run_dir: Path, epochs: int | None):
    from cvtool.train.engine import stored_run

    args, cfg = stored_run(run_dir, epochs)
    return ClassifyTrainArgs(**args), cfg
