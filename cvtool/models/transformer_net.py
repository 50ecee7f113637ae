"""The image transformation network of Johnson et al. (2016), "Perceptual Losses for Real-Time Style
Transfer", written here: three downsampling convolutions, five residual blocks, two upsampling
convolutions, with instance normalisation (Ulyanov et al.) and reflection padding. One forward pass
stylises an image of any size."""

from __future__ import annotations

import torch
from torch import nn

from cvtool.models import contract
from cvtool.models.registry import ModelEntry, register
from cvtool.ops.preprocess import Preprocess


class ConvNormAct(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
                 upsample: int = 1, norm: bool = True, act: bool = True):
        layers: list[nn.Module] = [nn.Upsample(scale_factor=upsample, mode="nearest")] if upsample > 1 else []
        layers += [nn.ReflectionPad2d(kernel_size // 2), nn.Conv2d(in_channels, out_channels, kernel_size, stride)]
        if norm:
            layers.append(nn.InstanceNorm2d(out_channels, affine=True))
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(ConvNormAct(channels, channels, 3), ConvNormAct(channels, channels, 3, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TransformerNet(nn.Module):
    """RGB in [0, 1] -> stylised RGB (clamp to [0, 1] for display). Upsampling is nearest + conv,
    which avoids the checkerboard artefacts of transpose convolutions."""

    def __init__(self, width: int = 32, blocks: int = 5, num_classes: int | None = None):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            ConvNormAct(3, w, 9), ConvNormAct(w, 2 * w, 3, 2), ConvNormAct(2 * w, 4 * w, 3, 2),
            *[ResidualBlock(4 * w) for _ in range(blocks)],
            ConvNormAct(4 * w, 2 * w, 3, upsample=2), ConvNormAct(2 * w, w, 3, upsample=2),
            ConvNormAct(w, 3, 9, norm=False, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# Pixels in [0, 1]: mean 0, std 1 leaves them as they are.
FAST_STYLE_PREPROCESS = Preprocess(crop_size=None, resize_size=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                   resize_mode="none")

register(
    ModelEntry(
        name="fast_style",
        task="stylize",
        family="johnson",
        builder=TransformerNet,
        preprocess=lambda: FAST_STYLE_PREPROCESS,
        classes=lambda: None,
        weights=None,
        licence="MIT (cvtool)",
        description="Johnson et al. feed-forward stylisation network; train one with `cvtool train style`",
        num_params=1_679_235,
        input_kind="any_size",
        size_multiple=4,  # two stride-2 convolutions
        export=contract.any_size_graph("image"),
    )
)
