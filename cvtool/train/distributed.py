"""Data-parallel training under torchrun: the few torch.distributed calls the engine needs, in one place.

A process is part of a data-parallel job when torchrun (or `cvtool train ... --devices N`, which runs
torchrun for one machine) set RANK / WORLD_SIZE / LOCAL_RANK in its environment. Then `init` joins
the process group (gloo on the CPU, NCCL on CUDA; each rank on cuda:LOCAL_RANK) and everything else
here works across ranks; in a single process every helper is a no-op, so the engine has one code path.

Conventions (see the README's training section):
- `--batch-size` is the GLOBAL batch: each of N processes takes batch_size / N samples of every step,
  so the learning rate, the steps per epoch and the schedule are the same for any N, and a checkpoint
  made by N processes resumes on M (1 included).
- Rank 0 alone writes checkpoints, metrics, plots, summary.json and progress; it also runs the
  validation pass, over the whole validation set, with the unwrapped model (the numbers are the
  single-process run's), while the other ranks wait for it.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cvtool.errors import UsageError


def under_torchrun() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun; return the device this rank trains on.

    On CUDA each rank takes cuda:LOCAL_RANK (NCCL); on the CPU every rank uses gloo. Ranks other
    than 0 write nothing to stdout (the results are rank 0's to print)."""
    if not under_torchrun():
        return device
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"data-parallel training runs on cpu or cuda, not {device}")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        # long enough for rank 0's validation pass while the others wait at a barrier; a dead rank is
        # noticed by torchrun's agent (which stops the others) well before this
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=2))
    if dist.get_rank() != 0:
        sys.stdout.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return device


def barrier() -> None:
    if is_active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (a no-op in one process)."""
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are the GLOBAL batch's, over all ranks, on any device gloo
    serves (the CPU): PyTorch's SyncBatchNorm refuses non-GPU tensors. The mean and then the variance are
    sums all-reduced through torch.distributed.nn's autograd-aware all_reduce, so the backward pass
    carries every rank's share of the statistics' gradient, as SyncBatchNorm's does. With equal batch
    shares, N ranks then take the single-process step on the global batch. Evaluation, and a single
    process, use plain batch norm; the state_dict is a BatchNorm's, so checkpoints load anywhere."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_active()):
            return super().forward(x)
        from torch.distributed._functional_collectives import all_reduce as functional_all_reduce

        def all_reduce(tensor):  # differentiable: its backward all-reduces the gradient
            return functional_all_reduce(tensor, "sum", dist.group.WORLD)

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        total = all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n  # two passes, as batch norm computes it
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batch_norm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` with every batch norm computing the global batch's statistics: PyTorch's SyncBatchNorm on
    CUDA (NCCL), GlobalBatchNorm elsewhere (gloo)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            synced = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats, device=device)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced.train(child.training))
        else:
            sync_batch_norm(child, device)
    return model


def end_rank(code: int = 0) -> None:
    """End a process torchrun started that finished its work: flush stdout/stderr, then os._exit, skipping the
    interpreter's teardown. There, after destroy_process_group, gloo ranks that ran collectives inside autograd
    (--sync-bn on the CPU) abort at random ('terminate called without an active exception', SIGABRT: 2 runs
    in 16 on a loaded machine, none in 16 without --sync-bn), which torchrun would report as a failed job
    after a finished one. A failing rank exits normally (torchrun's report of the first failure is kept)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel (what checkpoints hold, so they load anywhere)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# -- launching ------------------------------------------------------------------------------------

def launch(argv: list[str], nproc: int, *, log_dir: Path | None = None, module: str = "cvtool") -> int:
    """Run `python -m MODULE ARGV` (`cvtool ARGV`) as `nproc` data-parallel processes on this machine (torchrun --standalone);
    return the exit code. Only rank 0's output reaches the console; the other ranks' output is kept
    under `log_dir`. When a rank dies, say which, how, and its last words, in one line."""
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise UsageError(f"--devices {nproc}: give at least 1")
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="cvtool-torchrun-"))
    # rank 0 writes straight to this console (results on stdout, progress on stderr); the others' output
    # goes to files under log_dir
    others = ",".join(f"{r}:3" for r in range(1, nproc))
    args = get_args_parser().parse_args([
        "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
        "--log-dir", str(log_dir), *(["--redirects", others] if others else []),
        "-m", module, *argv,
    ])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    _quiet_agent()
    try:
        run(args)
    except ChildFailedError as exc:
        _, first = _first_failure(exc)
        if not (first.local_rank == 0 and first.exitcode > 0):  # rank 0 has said why itself, on this console
            sys.stderr.write(f"cvtool: {failure_line(exc, log_dir)}\n")
        return _exit_code(exc)
    return 0


def _quiet_agent() -> None:
    """torchrun's agent logs each start and failure; cvtool says what matters in its own one line."""
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)


def _first_failure(exc):
    """(rank, failure) of the rank that failed first: not one the agent stopped (SIGTERM) because another had."""
    import signal

    items = sorted(exc.failures.items())
    own = [(r, f) for r, f in items if f.exitcode != -signal.SIGTERM]
    return (own or items)[0]


def _exit_code(exc) -> int:
    codes = [f.exitcode for f in exc.failures.values()]
    positive = [c for c in codes if c and c > 0]
    return positive[0] if positive else 1


def failure_line(exc, log_dir: Path) -> str:
    """'rank 1 (pid 123) was killed by SIGKILL; its last line: ...; run logs in DIR'."""
    import signal

    global_rank, failure = _first_failure(exc)
    if failure.exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-failure.exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-failure.exitcode}"
    else:
        how = f"exited with code {failure.exitcode}"
    last = _last_line(log_dir, failure.local_rank)
    said = f"; its last line: {last}" if last else ""
    return (f"data-parallel training stopped: rank {global_rank} (pid {failure.pid}) {how}{said}; the other ranks "
            f"were stopped; last.pt in the run directory holds the last completed epoch (continue with --resume); "
            f"every rank's output is in {log_dir}")


def _last_line(log_dir: Path, local_rank: int) -> str:
    candidates = sorted(Path(log_dir).rglob(f"attempt_0/{local_rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        return ""
    lines = [line.strip() for line in candidates[-1].read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def without_devices(argv: list[str]) -> list[str]:
    """ARGV less its `--devices N` / `--devices=N` (what each launched process is given)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            out.append(arg)
    return out
