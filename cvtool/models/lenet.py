"""LeNet-5 (LeCun et al., 1998): the 32x32 greyscale layout, written here.

Kept to the paper's shapes (C1 6@28x28, S2, C3 16@10x10, S4, C5 120, F6 84) with tanh and average
pooling. Two simplifications, both standard: C3 connects to all six S2 maps instead of the paper's
partial table, and the output is a linear layer with softmax instead of Euclidean RBF units.
"""

from __future__ import annotations

import torch
from torch import nn

from cvtool.models import contract
from cvtool.models.registry import ModelEntry, PackagedWeights, register
from cvtool.ops.preprocess import Preprocess


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),  # C1: 32 -> 28
            nn.Tanh(),
            nn.AvgPool2d(2),  # S2: 28 -> 14
            nn.Conv2d(6, 16, kernel_size=5),  # C3: 14 -> 10
            nn.Tanh(),
            nn.AvgPool2d(2),  # S4: 10 -> 5
            nn.Conv2d(16, 120, kernel_size=5),  # C5: 5 -> 1
            nn.Tanh(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# Grey ink on paper, stretched to the 32x32 input and mapped to [-1, 1].
LENET_PREPROCESS = Preprocess(
    crop_size=32, resize_size=32, mean=(0.5,), std=(0.5,), interpolation="bilinear", grayscale=True, resize_mode="exact"
)
DIGIT_CLASSES = [str(d) for d in range(10)]
_LENET_PARAMS = 61_706  # LeNet5(num_classes=10): checked by the tests

register(
    ModelEntry(
        name="lenet5",
        task="classify",
        family="lenet",
        builder=LeNet5,
        preprocess=lambda: LENET_PREPROCESS,
        classes=lambda: None,
        weights=None,
        licence="MIT (cvtool)",
        description="LeNet-5, 32x32 grey; no default weights: train one with `cvtool train classify`",
        num_params=_LENET_PARAMS,
        input_kind="image",
        export=contract.fixed_size_graph("logits"),
    )
)

register(
    ModelEntry(
        name="lenet5_digits",
        task="classify",
        family="lenet",
        builder=LeNet5,
        preprocess=lambda: LENET_PREPROCESS,
        classes=lambda: list(DIGIT_CLASSES),
        weights=PackagedWeights("lenet5_digits.pt"),
        licence="MIT (cvtool); trained on scikit-learn's load_digits (UCI, CC BY 4.0)",
        description="LeNet-5 trained here on real handwritten digits; ships with cvtool (works offline)",
        num_params=_LENET_PARAMS,
        input_kind="image",
        export=contract.fixed_size_graph("logits"),
    )
)
