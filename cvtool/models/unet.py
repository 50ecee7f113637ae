"""U-Net (Ronneberger et al., 2015), written here from the paper's architecture.

Contracting path of DoubleConv + 2x2 max-pool levels, expanding path of 2x2 transpose convolutions
(halving channels, doubling resolution) whose output is concatenated with the contracting level of
the same resolution (the skip connection), then DoubleConv; a 1x1 convolution maps to class
logits. Two departures from the paper, both common: 'same' padding, so the output is the input's
size (the paper's valid convolutions crop), and batch norm after each convolution. Width (channels
of the first level, doubled at each level) and depth (number of poolings) are configurable.
"""

from __future__ import annotations

import torch
from torch import nn

from cvtool.models.layers import DoubleConv
from cvtool.models import contract
from cvtool.models.registry import ModelEntry, register
from cvtool.ops.preprocess import Preprocess


class UNet(nn.Module):
    def __init__(self, num_classes: int = 2, in_channels: int = 1, width: int = 64, depth: int = 4):
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList([DoubleConv(in_channels, widths[0])])
        self.down.extend(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2)
                                for i in reversed(range(depth)))
        self.merge = nn.ModuleList(DoubleConv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()  # the bottom level feeds the expanding path directly
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


# Greyscale at native resolution (padded to a multiple of 2**depth), mapped to [-1, 1].
UNET_PREPROCESS = Preprocess(crop_size=None, resize_size=None, mean=(0.5,), std=(0.5,), grayscale=True,
                             resize_mode="none")



def _preprocess_for_build(base: Preprocess, options: dict) -> Preprocess:
    """A U-Net built for 3 input channels reads colour images, mapped to [-1, 1] like the greyscale ones."""
    if options.get("in_channels") == 3:
        return Preprocess(**{**base.to_dict(), "grayscale": False, "mean": [0.5] * 3, "std": [0.5] * 3})
    return base


register(
    ModelEntry(
        name="unet",
        task="segment",
        family="unet",
        builder=UNet,
        preprocess=lambda: UNET_PREPROCESS,
        classes=lambda: None,
        weights=None,
        licence="MIT (cvtool)",
        description="U-Net, written here; no default weights: train one with `cvtool train segment`",
        num_params=None,
        input_kind="any_size",
        size_multiple=lambda net: 2**net.depth,  # one halving per level
        export=contract.any_size_graph("logits"),
        train_build_options=("width", "depth", "in_channels"),
        preprocess_for_build=_preprocess_for_build,
    )
)
