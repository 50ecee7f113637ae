"""Choosing where inference runs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cvtool.errors import UsageError

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


@dataclass(frozen=True)
class Placement:
    """Where a network runs: `--device` resolved once (`place`), read everywhere after as `.type` (PyTorch's
    device type), `.torch` (the torch.device) or `.providers` (onnxruntime's execution providers).
    A network on onnxruntime has the CPU's placement: the pipelines hand it CPU arrays, onnxruntime moves
    them to its own provider."""

    kind: str  # "cpu", "cuda" or "mps"
    index: int | None = None  # cuda:N; None: the current CUDA device
    # resolved from `auto`, not named: onnxruntime without its CUDA provider then runs on the CPU's, not a failure
    auto: bool = field(default=False, compare=False)

    @classmethod
    def of(cls, device) -> "Placement":
        """`device` as a Placement: a Placement as it is, None the CPU, a torch.device (what the training recipes
        hold) by its type and index."""
        if device is None:
            return CPU
        if isinstance(device, Placement):
            return device
        return cls(device.type, device.index)

    @property
    def type(self) -> str:
        return self.kind

    @property
    def torch(self):
        """The torch.device (torch imported only when asked)."""
        import torch

        return torch.device(self.kind) if self.index is None else torch.device(self.kind, self.index)

    @property
    def providers(self) -> list:
        """onnxruntime's execution providers for this placement, from what the installed onnxruntime has."""
        import onnxruntime

        return self.providers_among(onnxruntime.get_available_providers())

    def providers_among(self, available: list[str]) -> list:
        """CUDA's when this is a CUDA placement and `available` has it (the onnxruntime-gpu package); a CUDA
        device named explicitly (`cuda`, `cuda:N`) without it is a one-line usage error, one `auto` chose runs on
        the CPU's (so `--device auto` never fails for want of onnxruntime-gpu); else the CPU's."""
        if self.kind == "cuda" and "CUDAExecutionProvider" in available:
            return [("CUDAExecutionProvider", {"device_id": self.index or 0}), "CPUExecutionProvider"]
        if self.kind == "cuda" and not self.auto:
            raise UsageError("--device cuda with --backend onnxruntime needs the onnxruntime-gpu package "
                             f"(this onnxruntime has {', '.join(available)}); use --device auto or cpu")
        return ["CPUExecutionProvider"]

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


CPU = Placement("cpu")


def place(spec: str = "auto", *, torch_free: bool = False) -> Placement:
    """`--device` resolved: `auto` takes CUDA when present, else Apple's MPS when present, else the CPU; an
    explicit device that is not there is a usage error, not a silent CPU run.

    `torch_free`: for onnxruntime alone, decided without importing PyTorch: `auto` is CUDA when this machine
    shows an NVIDIA GPU (`cuda_visible`), else the CPU; a named device is taken as named (onnxruntime's
    providers then say whether it can run there)."""
    spec = spec.strip().lower()
    if not _DEVICE_PATTERN.match(spec):
        raise UsageError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    kind, _, number = spec.partition(":")
    index = int(number) if number else None
    if torch_free:
        if kind == "auto":
            return Placement("cuda" if cuda_visible() else "cpu", auto=True)
        return Placement(kind, index)
    if kind == "cpu":
        return CPU
    import torch

    if kind == "auto":
        if torch.cuda.is_available():
            return Placement("cuda", auto=True)
        return Placement("mps" if _mps_available() else "cpu", auto=True)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} asked for, but CUDA is not available on this machine")
        if index is not None and index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if kind == "mps" and not _mps_available():
        raise UsageError("device 'mps' asked for, but MPS is not available on this machine")
    return Placement(kind, index)


def resolve_device(spec: str = "auto"):
    """`place(spec)` as a torch.device (the training recipes' device)."""
    return place(spec).torch


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def cuda_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU (without importing torch): `--backend auto` leaves such
    machines to PyTorch, whose CUDA path the ONNX cache does not cover."""
    import os
    from pathlib import Path

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        return any(Path("/proc/driver/nvidia/gpus").iterdir())
    except OSError:
        return False


# -- precision and transfers on accelerators ------------------------------------------------------

CPU_BF16_ENV = "CVTOOL_CPU_BF16"  # 0: behave as a CPU without bf16 instructions (an AVX2 machine's paths); 1: as one with


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX); without it CPU bf16 is emulated and slow.
    CVTOOL_CPU_BF16=0 answers no on any CPU (so an AVX-512 machine runs, and tests, what an AVX2 one does),
    =1 answers yes (bf16 then runs emulated where the CPU lacks it: slow, but the same code path)."""
    import os

    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise UsageError(f"{CPU_BF16_ENV}={forced!r}: use 0 (no bf16 instructions), 1 (bf16) or leave it unset (ask the CPU)")
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def cpu_description() -> dict:
    """This CPU's model name and the vector instruction sets that change PyTorch's and onnxruntime's speed and
    kernels (AVX2, AVX-512, AVX512-VNNI, AVX512-BF16, AMX), read from /proc/cpuinfo (Linux; else the platform's
    processor string alone): every benchmark figure names the CPU that made it."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    named = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx512_bf16": "AVX512-BF16",
             "amx_tile": "AMX"}
    return {"model": model, "isa": [label for flag, label in named.items() if flag in flags]}


def half_dtype(device: Placement):
    """The reduced precision `--half` runs at on `device`: float16 on CUDA and MPS (tensor cores; every CUDA
    GPU has it); bfloat16 on a CPU with native bf16 instructions. Elsewhere a one-line usage error."""
    import torch

    if device.type in ("cuda", "mps"):
        return torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    raise UsageError("--half needs a CUDA or MPS device, or a CPU with bfloat16 instructions (AVX512-BF16 or AMX); "
                     "this CPU has none: drop --half")


def autocast(device: Placement, dtype):
    """A context running the forward pass at `dtype` (autocast keeps precision-sensitive ops in float32);
    nothing when `dtype` is None."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(array, device: Placement):
    """A NumPy array (typically uint8 pixels: 4x fewer bytes than float32) -> a tensor on `device`, same
    dtype. On CUDA it is copied from page-locked memory, so the copy is asynchronous to the host."""
    import numpy as np
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device.torch, non_blocking=True)
    return tensor.to(device.torch)


def tune_for_fixed_sizes(device: Placement) -> None:
    """cuDNN benchmarks its convolution algorithms once per input shape and keeps the fastest: a win when
    batches keep one size (classification crops, letterboxed detection); process-wide."""
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


# -- threads: N cvtool processes on one machine share its cores -----------------------------------

_THREADS: int | None = None  # set by set_threads; onnxruntime sessions made afterwards take it too


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(threads: int | None = None, shard: tuple[int, int] | None = None) -> int | None:
    """The compute threads a process should use: `threads` when given (0: the libraries' own default, as
    before `--threads` existed); else, when it is one of N shards, its share of the cores (cores // N, at
    least 1); else None (the libraries' own default, which honours OMP_NUM_THREADS)."""
    if threads is not None:
        if threads < 0:
            raise UsageError(f"--threads {threads}: give a number of threads (0 for the libraries' default)")
        return threads or None
    if shard is not None and shard[1] > 1:
        return max(1, cpu_count() // shard[1])
    return None


CPU_DECODE_WORKERS = 2  # beside the network's own threads on the same cores
GPU_DECODE_WORKERS_MAX = 8


def decode_workers(workers: int | None, device: Placement, shard: tuple[int, int] | None = None) -> int:
    """Threads decoding and preprocessing images for a batch on `device`: `workers` when given (0 or 1: the
    calling thread); else 2 when the network runs on the CPU (its threads take the cores), and one per core up
    to 8 when it runs on a GPU, where the host's only job is feeding it (on an H200, with 2 threads, resnet50's
    pipeline ran at 383 images/s against 5,951 for its bare forward pass). One of N shards (`shard`, (K, N))
    takes its share of the cores, as its compute threads do (default_threads)."""
    if workers is not None:
        return max(1, workers)  # 0 (as before): decode in the calling thread
    if device.type in ("cuda", "mps"):
        return max(1, min(GPU_DECODE_WORKERS_MAX, cpu_count() // (shard[1] if shard else 1)))
    return CPU_DECODE_WORKERS


def set_threads(threads: int | None) -> None:
    """Use `threads` compute threads in this process: PyTorch's intra-op pool, OpenCV's, and onnxruntime's
    for sessions made from now on. None leaves every library at its default. Process-wide.

    PyTorch is not imported for this: when it is imported already its pool is set now, else OMP_NUM_THREADS
    says the size to the pool it makes when something imports it (the onnxruntime path never does)."""
    global _THREADS
    if not threads:
        return
    if threads < 0:
        raise UsageError(f"--threads {threads}: give a number of threads (0 for the libraries' default)")
    _THREADS = threads
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # pragma: no cover - OpenCV is a dependency
        pass
    import os
    import sys

    if "torch" in sys.modules and hasattr(sys.modules["torch"], "set_num_threads"):
        sys.modules["torch"].set_num_threads(threads)
    else:  # PyTorch sizes its pool from this when (if ever) it is imported, at most one thread per core
        os.environ["OMP_NUM_THREADS"] = str(threads)


def configured_threads() -> int | None:
    """The thread count set_threads chose (None: libraries' defaults)."""
    return _THREADS
