"""Named activations (relu1_1, conv4_2, ...) from a torchvision VGG's convolutional stack, for the
perceptual costs of style transfer."""

from __future__ import annotations

import torch
from torch import nn


def layer_names(features: nn.Sequential) -> list[str]:
    """conv{block}_{n}, relu{block}_{n}, pool{block}: the names the style-transfer papers use."""
    names, block, conv = [], 1, 1
    for module in features:
        if isinstance(module, nn.Conv2d):
            names.append(f"conv{block}_{conv}")
        elif isinstance(module, nn.ReLU):
            names.append(f"relu{block}_{conv}")
            conv += 1
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names.append(f"{type(module).__name__.lower()}{block}_{conv}")
    return names


class VGGFeatures(nn.Module):
    """Runs the VGG stack only as far as the deepest requested layer; returns {name: activation}."""

    def __init__(self, features: nn.Sequential, layers: list[str], *, pool: str = "max"):
        super().__init__()
        names = layer_names(features)
        unknown = [name for name in layers if name not in names]
        if unknown:
            from cvtool.errors import UsageError

            raise UsageError(f"unknown VGG layer(s) {', '.join(unknown)}; e.g. {', '.join(names[:6])}, …")
        last = max(names.index(name) for name in layers)
        modules = []
        for module in list(features)[: last + 1]:
            if isinstance(module, nn.ReLU):
                module = nn.ReLU(inplace=False)  # keep the activations we read
            elif isinstance(module, nn.MaxPool2d) and pool == "avg":
                module = nn.AvgPool2d(kernel_size=2, stride=2)  # Gatys et al.: smoother results
            modules.append(module)
        self.stack = nn.ModuleList(modules)
        self.names = names[: last + 1]
        self.wanted = set(layers)
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, module in zip(self.names, self.stack):
            x = module(x)
            if name in self.wanted:
                out[name] = x
        return out
