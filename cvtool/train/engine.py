"""One training loop for every task.

A task supplies a `TrainTask` (model, loss, metrics, what goes into the checkpoint, plots); the
engine owns everything else: epochs, optimiser and schedule, mixed precision and channels-last on
CUDA, determinism, checkpoints that resume exactly, Ctrl-C, and the run directory. It reports
progress through callbacks and never prints.
"""

from __future__ import annotations

import csv
import io
import json
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
from cvtool.train import distributed


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
    workers: int | None = None  # DataLoader worker processes; None: min(4, cores) on CUDA, 0 elsewhere
    val_batch_size: int | None = None  # None: batch_size; 1 for whole images of different sizes
    monitor: str = "val_accuracy"  # the metric that picks best.pt; higher is better, ties go to lower val_loss
    val_every: int = 1  # validate after every N-th epoch and after the last; best.pt is picked among those
    amp: bool = True  # mixed precision on CUDA: bf16 where the GPU has it, else fp16 with gradient scaling
    cpu_bf16: bool = False  # mixed precision on the CPU too (bf16 autocast); off by default: it changes CPU results
    grad_clip: float | None = None  # clip the gradients' global norm to this (after unscaling); None: no clipping
    log_every: int | None = None  # steps between progress callbacks (on an accelerator each one is a host sync);
    # None: every step on the CPU (reading a loss there costs nothing), every 10th on an accelerator
    channels_last: bool = True  # on CUDA, and on the CPU with cpu_bf16 (oneDNN's bf16 convolutions are fastest so)
    sync_bn: bool = False  # data-parallel: batch-norm statistics over the global batch (CUDA and CPU)


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
        """arch, task, classes, preprocess, and anything else `--weights FILE` needs (other keys are stored as the
        checkpoint's extra fields; asked at every save, so a value may follow the latest validation)."""


SAVE_FIELDS = ("arch", "task", "classes", "preprocess")  # save_checkpoint's own; other task fields go in extra


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


class EpochBatches:
    """One epoch's batches as lists of (index, augmentation seed), this process's share of each.

    The global batches are those of a single process: a permutation of the data (or the task's own
    batch structure, e.g. faces' P x K) drawn from `generator`, which the engine seeds per epoch, cut
    into `batch_size` pieces. Each sample's augmentation seed is drawn with it from a second generator
    seeded by the same epoch, so a sample is augmented the same way whichever process, worker or
    resumed run decodes it. With N processes, rank r takes groups r, r+N, ... of every global batch
    (a group is one sample, or one identity's K images for P x K batches); a last batch with fewer
    groups than processes is padded from its start, so every rank takes the same number of steps."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator, seed_generator,
                 rank: int = 0, world: int = 1, batches=None, group: int = 1, with_seeds: bool = True):
        self.with_seeds = with_seeds  # False: bare indices, for datasets that take nothing else
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.seed_generator, self.rank, self.world, self.batches, self.group = seed_generator, rank, world, batches, group

    def __len__(self) -> int:
        return len(self.batches) if self.batches is not None else math.ceil(self.n / self.batch_size)

    def _global(self):
        if self.batches is not None:
            yield from self.batches
            return
        order = torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else list(range(self.n))
        for start in range(0, self.n, self.batch_size):
            yield order[start : start + self.batch_size]

    def __iter__(self):
        for batch in self._global():
            seeds = torch.randint(0, 2**31 - 1, (len(batch),), generator=self.seed_generator).tolist()
            items = list(zip(batch, seeds)) if self.with_seeds else list(batch)
            if self.world == 1:
                yield items
                continue
            groups = [items[i : i + self.group] for i in range(0, len(items), self.group)]
            while len(groups) < self.world:
                groups += groups[: self.world - len(groups)]
            yield [item for g in groups[self.rank :: self.world] for item in g]


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
        ema: float = 0.0,
    ):
        """`ema` (a decay in (0, 1); 0: off): an exponential moving average of the weights (cvtool.train.ema),
        updated after every optimiser step, is what validation scores and what best.pt / last.pt hold as their
        weights (so inference and `cvtool val` use it); last.pt also keeps the raw weights and the average's
        step count, and --resume restores both."""
        self.task, self.cfg, self.run_dir = task, cfg, Path(run_dir)
        self.device = device = distributed.init(device)  # joins the process group under torchrun
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        # progress is rank 0's to show
        self.callbacks = (callbacks or Callbacks()) if self.is_main else Callbacks()
        self.args = args or {}  # what the user asked for, kept in checkpoints so --resume needs nothing else
        self.extra_fields = extra_fields or {}  # e.g. arch_kwargs, so --weights FILE can rebuild the network
        seed_everything(cfg.seed)
        self.model = (model or task.build_model()).to(device)
        self.on_cuda = device.type == "cuda"
        self.amp_dtype = amp_dtype(device, cfg)  # None: float32 throughout
        self.channels_last = cfg.channels_last and (self.on_cuda or self.amp_dtype is not None)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._train_model = self._wrap(self.model)  # the DDP wrapper under torchrun; self.model stays the module
        self._shuffle_generator = torch.Generator()
        self._seed_generator = torch.Generator()
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
        self._sum_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self._log_every = max(1, cfg.log_every or (1 if device.type == "cpu" else 10))
        # gradient scaling is for fp16 only (bf16 has float32's range)
        self.scaler = torch.amp.GradScaler(device.type if self.on_cuda else "cpu",
                                           enabled=self.amp_dtype == torch.float16)
        self.state = RunState()
        self.ema = None
        if ema:
            from cvtool.train.ema import ModelEma

            self.ema = ModelEma(self.model, decay=ema)
            # after every step taken (a step skipped by fp16 gradient scaling is no step)
            self.optimizer.register_step_post_hook(lambda *_: self.ema.update(self.model))

    @property
    def scored_model(self) -> nn.Module:
        """The weights that are validated and saved: the moving average with `ema`, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        if self.cfg.sync_bn:  # SyncBatchNorm on CUDA; our all-reduce batch norm on the CPU (gloo)
            self.model = model = distributed.sync_batch_norm(model, self.device)
        return nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.on_cuda else None)

    def _loader(self, dataset, *, shuffle: bool, batch_size: int):
        workers = default_workers(self.device, self.cfg.workers)
        common = dict(num_workers=workers, pin_memory=self.on_cuda, persistent_workers=workers > 0,
                      collate_fn=self._collate)
        if not shuffle:  # validation: rank 0 alone goes through all of it
            return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)
        structured = self._train_batches(dataset, self._shuffle_generator) if self._train_batches is not None else None
        group = getattr(structured, "k", 1) if structured is not None else 1
        global_batch = getattr(structured, "p", 0) * group if structured is not None else batch_size
        if (global_batch // group) % self.world:
            what = "identities per batch (-P)" if structured is not None else "--batch-size"
            raise UsageError(f"{what} {global_batch // group} is split over {self.world} processes: "
                             f"give a multiple of {self.world}")
        sampler = EpochBatches(len(dataset), batch_size, shuffle=True, generator=self._shuffle_generator,
                               seed_generator=self._seed_generator, rank=self.rank, world=self.world,
                               batches=structured, group=group,
                               with_seeds=getattr(dataset, "takes_augmentation_seeds", False))
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, generator=self._shuffle_generator, **common)

    def parallel_summary(self) -> dict:
        """How the run was spread: processes, the global and per-process batch, the learning rate."""
        sampler = self.train_loader.batch_sampler
        global_batch = (sampler.batches.p * sampler.group) if sampler.batches is not None else self.cfg.batch_size
        return {"processes": self.world, "backend": distributed.dist.get_backend() if self.world > 1 else None,
                "global_batch_size": global_batch, "per_process_batch_size": global_batch // self.world,
                "lr": self.cfg.lr, "sync_bn": bool(self.cfg.sync_bn and self.world > 1)}

    def share_summary(self, summary: dict | None) -> dict:
        """Rank 0's summary on every rank (it alone scores and writes after training)."""
        return distributed.broadcast_object(summary)

    def finish(self, summary: dict) -> dict:
        """Rank 0, once training is done: the run's summary gains how the run was spread (`data_parallel`), is
        written to RUN_DIR/summary.json atomically, and is returned on every rank."""
        summary["data_parallel"] = self.parallel_summary()
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return self.share_summary(summary)

    # -- checkpoints -------------------------------------------------------------------------
    def _save(self, name: str) -> Path | None:
        if not self.is_main:
            return None
        path = self.run_dir / name
        fields = dict(self.task.checkpoint_fields())
        extra = {**self.extra_fields, **{key: fields.pop(key) for key in list(fields) if key not in SAVE_FIELDS}}
        if self.ema is not None:
            extra["ema"] = self.ema.state()
            if name == "last.pt":  # what --resume continues from: the raw training weights too
                extra["ema"]["train_state_dict"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        save_checkpoint(
            path,
            state_dict={k: v.detach().cpu() for k, v in self.scored_model.state_dict().items()},
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
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                **extra,
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
        if self.ema is not None:
            self._resume_ema(meta.get("ema"))
        self.optimizer.load_state_dict(meta["optimizer"])
        self.scheduler.load_state_dict(meta["scheduler"])
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.state = RunState(epoch=int(meta["epoch"]), best=tuple(meta["best"]), history=list(meta["history"]))
        torch.set_rng_state(meta["torch_rng"])
        cuda_rng = meta.get("cuda_rng")
        if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_rng)

    def _resume_ema(self, stored: dict | None) -> None:
        """The checkpoint's weights (just loaded into the model) are the average; training's are their copy."""
        from cvtool.train.ema import ModelEma

        if stored and "train_state_dict" in stored:
            self.ema.module.load_state_dict(self.model.state_dict())
            self.model.load_state_dict(stored["train_state_dict"])
            self.ema.updates = int(stored["updates"])
        else:  # a run saved without EMA: the average starts here
            self.ema = ModelEma(self.model, decay=self.ema.decay, tau=self.ema.tau)

    def load_best_into(self, path: Path) -> int:
        """Put best.pt's weights into the scored model (for the final report); return its epoch."""
        loaded = load_weights_file(path)
        self.scored_model.load_state_dict(loaded.state_dict)
        return int(loaded.meta["epoch"])

    # -- loop ------------------------------------------------------------------------------
    def fit(self) -> RunState:
        """Train until cfg.epochs, saving last.pt (atomically) after every epoch.

        On Ctrl-C the epoch in progress is dropped, not saved: last.pt keeps the state at the end of
        the last completed epoch, so --resume repeats no step and skips none, and the result is
        bit-for-bit the uninterrupted run's.
        """
        created = not self.run_dir.exists()
        distributed.barrier()  # every rank has looked before rank 0 makes it
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            while self.state.epoch < self.cfg.epochs:
                row = self._run_epoch(self.state.epoch + 1)
                self.state.epoch += 1
                self.state.history.append(row)
                self._keep(row)
                self.callbacks.on_epoch_end(row)
            if self.val_loader is not None and self.state.history and "val_loss" not in self.state.history[-1]:
                # stopped between validations (`val_every`) and resumed with --epochs where it stopped: the run
                # still ends on a validated epoch, so best.pt exists and the summary has last-epoch figures
                row = dict(self.state.history[-1])
                if self.is_main:
                    row.update(self._validation())
                self.state.history[-1] = row = distributed.broadcast_object(row)
                self._keep(row)
        except BaseException:
            if self.is_main and created and not (self.run_dir / "last.pt").exists():  # no half-made run left behind
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        distributed.barrier()  # best.pt and last.pt are written before any rank reads them
        return self.state

    def _keep(self, row: dict) -> None:
        """After an epoch: best.pt if its validation beats every earlier one, last.pt, metrics.csv."""
        if self.val_loader is None or "val_loss" in row:  # an epoch left unvalidated cannot be best
            loss = row.get("val_loss", row["train_loss"])
            score = (row.get(self.cfg.monitor, -loss), -loss)  # a small val set saturates accuracy; loss breaks ties
            if score > self.state.best:
                self.state.best = score
                self._save("best.pt")
        self._save("last.pt")
        if self.is_main:
            self._write_metrics()

    def _run_epoch(self, epoch: int) -> dict:
        # Shuffling depends only on (seed, epoch), so a resumed run sees the same batches.
        self._shuffle_generator.manual_seed(self.cfg.seed * 1_000_003 + epoch)
        self._seed_generator.manual_seed(self.cfg.seed * 1_000_003 + epoch + 500_009)
        self.model.train()
        self.callbacks.on_epoch_start(epoch, self.cfg.epochs, len(self.train_loader))
        start, seen = time.perf_counter(), 0
        loss_sum = torch.zeros((), dtype=self._sum_dtype, device=self.device)  # summed on the device: no per-step sync
        for batch_index, (inputs, targets) in enumerate(self.train_loader):
            inputs, targets = self._to_device(inputs), self._to_device(targets)
            with self._autocast():
                loss = self.task.loss(self._train_model(inputs), targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            n = _batch_len(targets)
            seen += n
            loss_sum += loss.detach().to(self._sum_dtype) * n
            step = batch_index + 1
            if step % self._log_every == 0 or step == len(self.train_loader):
                self.callbacks.on_batch(epoch, step, loss.item(),  # the one host sync per logging interval
                                        seen * self.world / (time.perf_counter() - start))
        loss_sum = float(loss_sum)
        totals = distributed.all_reduce_sum(torch.tensor([loss_sum, float(seen)], dtype=torch.float64,
                                                         device=self.device if self.world > 1 else "cpu"))
        loss_sum, seen = float(totals[0]), int(totals[1])
        train_seconds = time.perf_counter() - start
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(1, seen),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_seconds": round(train_seconds, 3),
            "train_images_per_s": round(seen / train_seconds, 2),
        }
        validates = epoch % self.cfg.val_every == 0 or epoch == self.cfg.epochs
        if self.val_loader is not None and self.is_main and validates:  # rank 0 scores the whole validation set
            row.update(self._validation())
        return distributed.broadcast_object(row)  # every rank keeps the same history and best

    def _validation(self) -> dict:
        """The validation set's figures as a metrics row's val_* columns (rank 0 scores; the caller broadcasts)."""
        return {f"val_{k}": v for k, v in self.evaluate(self.val_loader).items()}

    @torch.inference_mode()
    def evaluate(self, loader) -> dict[str, float]:
        """The loss and the task's metrics of the scored model (the average with `ema`) on `loader`."""
        model = self.scored_model
        model.eval()
        state = self.task.start_metrics()
        loss_sum, seen = torch.zeros((), dtype=self._sum_dtype, device=self.device), 0
        for inputs, targets in loader:
            inputs, targets = self._to_device(inputs), self._to_device(targets)
            with self._autocast():
                outputs = model(inputs)
                loss = self.task.loss(outputs, targets)
            n = _batch_len(targets)
            loss_sum += loss.detach().to(self._sum_dtype) * n
            seen += n
            self.task.update_metrics(state, outputs, targets)
        return {"loss": float(loss_sum) / max(1, seen), **self.task.finish_metrics(state)}

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _to_device(self, value):
        if isinstance(value, torch.Tensor):
            value = value.to(self.device, non_blocking=True)
            if self.channels_last and value.dim() == 4:
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


def amp_dtype(device: torch.device, cfg: TrainConfig):
    """The autocast dtype training runs at: on CUDA (cfg.amp) bf16 where the GPU has it, else fp16; on the
    CPU bf16 only with cfg.cpu_bf16; None (float32) otherwise."""
    if device.type == "cuda" and cfg.amp:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cfg.cpu_bf16:
        return torch.bfloat16
    return None


def default_workers(device: torch.device, workers: int | None) -> int:
    """`workers` when given; else on CUDA min(4, this process's cores - 1) (a GPU starves on one decoding
    thread), elsewhere 0 (decoding in the training process: no worker start-up, deterministic, light)."""
    if workers is not None:
        return workers
    if device.type != "cuda":
        return 0
    from cvtool.device import cpu_count

    return max(0, min(4, cpu_count() - 1))


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
