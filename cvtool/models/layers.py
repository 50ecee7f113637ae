"""Building blocks shared by cvtool's own networks (timm's `layers/` idea, kept small)."""

from __future__ import annotations

from torch import nn


class ConvBnAct(nn.Sequential):
    """conv -> batch norm -> activation, 'same' padding: the brick of U-Net and the YOLO-style detector."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act: type[nn.Module] | None = nn.ReLU):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            act(inplace=True) if act is not None else nn.Identity(),
        )


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvBnAct: one U-Net level."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ConvBnAct(in_channels, out_channels), ConvBnAct(out_channels, out_channels))
