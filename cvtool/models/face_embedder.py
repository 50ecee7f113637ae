"""A small face-embedding CNN, written here: an image -> a 128-D unit vector, so that the Euclidean
distance between two faces' vectors says whether they are one person (FaceNet's formulation).

Four levels of the shared DoubleConv brick separated by 2x2 max-pooling after a stride-2 stem
(96 px in -> 6 x 6 maps), global average pooling, a linear projection, and L2 normalisation. Small
enough to train from scratch on a CPU in minutes. With `pair_head=True` it also carries the logistic
unit of the Siamese binary formulation (|e1 - e2| -> P(same)), trained by `--loss binary`.
"""

from __future__ import annotations

import torch
from torch import nn

from cvtool.models.layers import ConvBnAct, DoubleConv
from cvtool.models import contract
from cvtool.models.registry import ModelEntry, register
from cvtool.ops.preprocess import Preprocess


class FaceEmbedder(nn.Module):
    def __init__(self, in_channels: int = 3, embedding_dim: int = 128, width: int = 32, pair_head: bool = False):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            ConvBnAct(in_channels, w, stride=2),  # 96 -> 48
            DoubleConv(w, w),
            nn.MaxPool2d(2),  # -> 24
            DoubleConv(w, 2 * w),
            nn.MaxPool2d(2),  # -> 12
            DoubleConv(2 * w, 4 * w),
            nn.MaxPool2d(2),  # -> 6
            DoubleConv(4 * w, 8 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(8 * w, embedding_dim)
        self.pair_head = nn.Linear(embedding_dim, 1) if pair_head else None
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings, N x embedding_dim."""
        return nn.functional.normalize(self.embed(self.pool(self.features(x)).flatten(1)).float(), dim=1)


# RGB (grey photos are decoded to three equal channels), shorter side to 96 px, centre crop, [-1, 1].
FACE_EMBED_PREPROCESS = Preprocess(crop_size=96, resize_size=96, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
_FACE_EMBED_SMALL_PARAMS = 1_215_392  # FaceEmbedder(): checked by the tests

register(
    ModelEntry(
        name="face_embed_small",
        task="face-embed",
        family="face",
        builder=FaceEmbedder,
        preprocess=lambda: FACE_EMBED_PREPROCESS,
        classes=lambda: None,
        weights=None,
        licence="MIT (cvtool)",
        description="small face-embedding CNN (128-D, unit length), written here; train one with `cvtool train face`",
        num_params=_FACE_EMBED_SMALL_PARAMS,
        head_is_classes=False,
        input_kind="face_chip",
        export=contract.chip_graph("embedding"),
    )
)
