"""An exponential moving average of a model's weights, for validation and the saved checkpoints.

As Ultralytics' ModelEMA and timm's ModelEmaV2 do: after every optimiser step each floating-point
parameter of the copy becomes d * average + (1 - d) * current, with d = decay * (1 - exp(-updates / tau))
ramping up from 0 so the random initial weights are forgotten at once; buffers (batch-norm statistics,
anchors) are copied, not averaged. On a small data set the average of the last few hundred steps fits
boxes more steadily than the weights of any single step.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEma:
    def __init__(self, model: nn.Module, *, decay: float = 0.999, tau: float = 200.0, updates: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def decay_at(self, updates: int) -> float:
        """The weight of the old average at the `updates`-th update."""
        return self.decay * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        for average, current in zip(self.module.parameters(), model.parameters()):
            average.lerp_(current.detach().to(average.dtype), 1 - d)  # d * average + (1 - d) * current
        for average, current in zip(self.module.buffers(), model.buffers()):
            average.copy_(current)

    def state(self) -> dict:
        """What a checkpoint keeps to resume the average exactly (the averaged weights are its state_dict)."""
        return {"updates": self.updates, "decay": self.decay, "tau": self.tau}
