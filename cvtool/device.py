"""Choosing where inference runs."""

from __future__ import annotations

import re

from cvtool.errors import UsageError

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def resolve_device(spec: str = "auto"):
    """`auto` takes CUDA when present; an explicit device that is not there is a usage error, not a silent CPU run."""
    import torch

    spec = spec.strip().lower()
    if not _DEVICE_PATTERN.match(spec):
        raise UsageError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} asked for, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device 'mps' asked for, but MPS is not available on this machine")
    return device
