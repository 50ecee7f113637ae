"""One training loop for every task.

A task supplies a `TrainTask` (model, loss, metrics, what goes into the checkpoint, plots); the
engine owns everything else: epochs, optimiser and schedule, mixed precision and channels-last on
CUDA, determinism, checkpoints that resume exactly, Ctrl-C, and the run directory. It reports
progress through callbacks and never prints.
"""

from __future__ import annotations

import csv
import io
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from cvtool.errors import UsageError
from cvtool.io.atomic import atomic_write_text
from cvtool.models.checkpoint import load_weights_file, save_checkpoint


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    seed: int = 0
    workers: int = 0
    val_batch_size: int | None = None  # None: batch_size; 1 for whole images of different sizes
    monitor: str = "val_accuracy"  # the metric that picks best.pt; higher is better, ties go to lower val_loss
    amp: bool = True  # only takes effect on CUDA
    channels_last: bool = True  # only takes effect on CUDA


class TrainTask(Protocol):
    """What a task plugs into the engine."""

    name: str

    def build_model(self) -> nn.Module: ...

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor: ...

    def start_metrics(self) -> Any:
        """A fresh accumulator for one evaluation pass."""

    def update_metrics(self, state: Any, outputs: Any, targets: Any) -> None: ...

    def finish_metrics(self, state: Any) -> dict[str, float]: ...

    def checkpoint_fields(self) -> dict:
        """arch, task, classes, preprocess (and anything else `--weights FILE` needs to rebuild the model)."""


class Callbacks:
    """Hooks for progress display; the default does nothing. Subclass it and override what you need."""

    def on_train_start(self, run) -> None:
        """`run` (cvtool.train.Run): run_dir, device, resumed, arch; called before data is read."""

    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None: ...

    def on_batch(self, epoch: int, batch: int, loss: float, images_per_s: float) -> None: ...

    def on_epoch_end(self, row: dict) -> None: ...


@dataclass
class RunState:
    """Everything a resumed run needs to carry on as if it had never stopped."""

    epoch: int = 0  # epochs completed
    best: tuple[float, float] = (-math.inf, -math.inf)  # (monitored metric, -val_loss)
    history: list[dict] = field(default_factory=list)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda params, cfg: torch.optim.SGD(
        params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True
    ),
}


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(
        self,
        task: TrainTask,
        train_set,
        val_set,
        cfg: TrainConfig,
        run_dir: Path,
        device: torch.device,
        callbacks: Callbacks | None = None,
        model: nn.Module | None = None,
        args: dict | None = None,
        extra_fields: dict | None = None,
        collate_fn=None,
        train_batches=None,
    ):
        self.task, self.cfg, self.run_dir, self.device = task, cfg, Path(run_dir), device
        self.callbacks = callbacks or Callbacks()
        self.args = args or {}  # what the user asked for, kept in checkpoints so --resume needs nothing else
        self.extra_fields = extra_fields or {}  # e.g. arch_kwargs, so --weights FILE can rebuild the network
        seed_everything(cfg.seed)
        self.model = (model or task.build_model()).to(device)
        self.on_cuda = device.type == "cuda"
        if self.on_cuda and cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._shuffle_generator = torch.Generator()
        self._collate = collate_fn  # e.g. detection: images stacked, per-image box lists kept apart
        # train_batches(dataset, generator) -> a batch sampler, for tasks whose batches have a structure
        # (faces: P people x K photos each); the default is shuffled batches of cfg.batch_size
        self._train_batches = train_batches
        self.train_loader = self._loader(train_set, shuffle=True, batch_size=cfg.batch_size)
        self.val_loader = (self._loader(val_set, shuffle=False, batch_size=cfg.val_batch_size or cfg.batch_size)
                           if val_set is not None else None)
        if cfg.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        self.optimizer = OPTIMIZERS[cfg.optimizer]([p for p in self.model.parameters() if p.requires_grad], cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg, len(self.train_loader)))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.on_cuda and cfg.amp)
        self.state = RunState()

    def _loader(self, dataset, *, shuffle: bool, batch_size: int):
        common = dict(num_workers=self.cfg.workers, pin_memory=self.on_cuda, persistent_workers=self.cfg.workers > 0,
                      collate_fn=self._collate)
        if shuffle and self._train_batches is not None:
            sampler = self._train_batches(dataset, self._shuffle_generator)
            return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, generator=self._shuffle_generator,
                                               **common)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                                           generator=self._shuffle_generator if shuffle else None, **common)

    # -- checkpoints -------------------------------------------------------------------------
    def _save(self, name: str) -> Path:
        path = self.run_dir / name
        fields = self.task.checkpoint_fields()
        save_checkpoint(
            path,
            state_dict={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            extra={
                "epoch": self.state.epoch,
                "best": list(self.state.best),
                "history": self.state.history,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "config": asdict(self.cfg),
                "args": self.args,
                "torch_rng": torch.get_rng_state(),
                **self.extra_fields,
            },
            **fields,
        )
        return path

    def resume(self, checkpoint: Path) -> None:
        """Carry on from `last.pt`: same weights, optimiser moments, schedule position, epoch, history."""
        loaded = load_weights_file(checkpoint)
        meta = loaded.meta
        if "optimizer" not in meta:
            raise UsageError(f"{checkpoint}: not a resumable training checkpoint (no optimiser state)")
        self.model.load_state_dict(loaded.state_dict)
        self.optimizer.load_state_dict(meta["optimizer"])
        self.scheduler.load_state_dict(meta["scheduler"])
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.state = RunState(epoch=int(meta["epoch"]), best=tuple(meta["best"]), history=list(meta["history"]))
        torch.set_rng_state(meta["torch_rng"])

    def load_best_into(self, path: Path) -> int:
        """Put best.pt's weights into the model (for the final report); return its epoch."""
        loaded = load_weights_file(path)
        self.model.load_state_dict(loaded.state_dict)
        return int(loaded.meta["epoch"])

    # -- loop ------------------------------------------------------------------------------
    def fit(self) -> RunState:
        """Train until cfg.epochs, saving last.pt (atomically) after every epoch.

        On Ctrl-C the epoch in progress is dropped, not saved: last.pt keeps the state at the end of
        the last completed epoch, so --resume repeats no step and skips none, and the result is
        bit-for-bit the uninterrupted run's.
        """
        created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            while self.state.epoch < self.cfg.epochs:
                row = self._run_epoch(self.state.epoch + 1)
                self.state.epoch += 1
                self.state.history.append(row)
                loss = row.get("val_loss", row["train_loss"])
                score = (row.get(self.cfg.monitor, -loss), -loss)  # a small val set saturates accuracy; loss breaks ties
                if score > self.state.best:
                    self.state.best = score
                    self._save("best.pt")
                self._save("last.pt")
                self._write_metrics()
                self.callbacks.on_epoch_end(row)
        except BaseException:
            if created and not (self.run_dir / "last.pt").exists():  # no half-made run left behind
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        return self.state

    def _run_epoch(self, epoch: int) -> dict:
        # Shuffling depends only on (seed, epoch), so a resumed run sees the same batches.
        self._shuffle_generator.manual_seed(self.cfg.seed * 1_000_003 + epoch)
        self.model.train()
        self.callbacks.on_epoch_start(epoch, self.cfg.epochs, len(self.train_loader))
        start, seen, loss_sum = time.perf_counter(), 0, 0.0
        for batch_index, (inputs, targets) in enumerate(self.train_loader):
            inputs, targets = self._to_device(inputs), self._to_device(targets)
            with torch.autocast(device_type="cuda", enabled=self.scaler.is_enabled()):
                loss = self.task.loss(self.model(inputs), targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            n = _batch_len(targets)
            seen += n
            loss_sum += loss.item() * n
            self.callbacks.on_batch(epoch, batch_index + 1, loss.item(), seen / (time.perf_counter() - start))
        train_seconds = time.perf_counter() - start
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(1, seen),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_seconds": round(train_seconds, 3),
            "train_images_per_s": round(seen / train_seconds, 2),
        }
        if self.val_loader is not None:
            row.update({f"val_{k}": v for k, v in self.evaluate(self.val_loader).items()})
        return row

    @torch.inference_mode()
    def evaluate(self, loader) -> dict[str, float]:
        self.model.eval()
        state = self.task.start_metrics()
        loss_sum, seen = 0.0, 0
        for inputs, targets in loader:
            inputs, targets = self._to_device(inputs), self._to_device(targets)
            with torch.autocast(device_type="cuda", enabled=self.scaler.is_enabled()):
                outputs = self.model(inputs)
                loss = self.task.loss(outputs, targets)
            n = _batch_len(targets)
            loss_sum += loss.item() * n
            seen += n
            self.task.update_metrics(state, outputs, targets)
        return {"loss": loss_sum / max(1, seen), **self.task.finish_metrics(state)}

    def _to_device(self, value):
        if isinstance(value, torch.Tensor):
            value = value.to(self.device, non_blocking=True)
            if self.on_cuda and self.cfg.channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(self._to_device(v) for v in value)
        if isinstance(value, dict):
            return {k: self._to_device(v) for k, v in value.items()}
        return value

    def _write_metrics(self) -> None:
        """Rewritten whole each epoch (atomically), so a resumed run continues the same file."""
        columns = list(dict.fromkeys(key for row in self.state.history for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.state.history)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())


def _batch_len(targets) -> int:
    if isinstance(targets, torch.Tensor):
        return int(targets.shape[0])
    return len(targets)


def new_run_dir(out: Path | None, task: str, arch: str) -> Path:
    """`out`, or runs/TASK-ARCH-TIME; never a directory that already holds a run (that is --resume's job)."""
    run_dir = Path(out) if out is not None else Path("runs") / f"{task}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / "last.pt").exists():
        raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --out")
    return run_dir


def stored_run(run_dir: Path, epochs: int | None) -> tuple[dict, TrainConfig]:
    """The arguments and config kept in RUN_DIR/last.pt, for --resume; only the number of epochs may change."""
    from dataclasses import replace

    last = Path(run_dir) / "last.pt"
    if not last.exists():
        raise UsageError(f"{run_dir}: no last.pt to resume from")
    meta = load_weights_file(last).meta
    if "args" not in meta or "config" not in meta:
        raise UsageError(f"{last}: not a resumable training checkpoint")
    cfg = TrainConfig(**meta["config"])
    return dict(meta["args"]), (replace(cfg, epochs=epochs) if epochs is not None else cfg)
