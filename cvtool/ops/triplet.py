"""Triplet loss with online mining inside a P x K batch (P identities x K images each), and the
pairwise-distance helpers it and face verification share.

FaceNet (Schroff et al., 2015) compares squared Euclidean distances of unit-length embeddings,
||f(a) - f(p)||^2 + alpha < ||f(a) - f(n)||^2, so the margin alpha = 0.2 is in squared units; the
distances here are squared by default for that reason. Triplets are mined from the batch itself,
which is why batches are built P x K: every anchor then has K - 1 positives and (P - 1) K negatives.

- "semi_hard" (FaceNet): every anchor-positive pair, each with the closest negative that is still
  farther than the positive (d_ap < d_an); when no negative is farther, the farthest of the closer
  ones. Hardest negatives early in training collapse the embedding; these do not.
- "batch_hard" (Hermans et al., 2017): per anchor, its farthest positive and closest negative.
"""

from __future__ import annotations

import torch

MINING = ("semi_hard", "batch_hard")


def pairwise_distances(embeddings: torch.Tensor, other: torch.Tensor | None = None, *, squared: bool = False) -> torch.Tensor:
    """N x M Euclidean (or squared) distances between the rows of `embeddings` and of `other` (default: itself).

    Uses |a|^2 - 2ab + |b|^2 (one matrix product), clamped at 0 against rounding; the square root has
    a zero-safe gradient, so identical embeddings do not produce NaNs in backward."""
    x = embeddings.float()
    y = x if other is None else other.float()
    sq = ((x * x).sum(1, keepdim=True) - 2 * x @ y.T + (y * y).sum(1)).clamp_min(0)
    if other is None:
        sq = sq * (1 - torch.eye(len(x), device=x.device, dtype=sq.dtype))  # exactly 0 on the diagonal
    if squared:
        return sq
    zero = sq == 0
    return torch.sqrt(sq + zero.to(sq.dtype) * 1e-16) * (~zero)


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) N x N boolean masks: same label and not the same item, and different label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, *,
                            squared: bool = True) -> torch.Tensor:
    """Mean over anchors of max(0, d(a, hardest p) - d(a, hardest n) + margin); anchors with no
    positive or no negative in the batch are left out (0 when none is left)."""
    d = pairwise_distances(embeddings, squared=squared)
    positive, negative = pair_masks(labels)
    valid = positive.any(1) & negative.any(1)
    if not valid.any():
        return d.sum() * 0.0  # keeps the graph (and the device) for backward
    hardest_positive = (d * positive).max(1).values
    hardest_negative = d.masked_fill(~negative, float("inf")).min(1).values
    losses = (hardest_positive - hardest_negative + margin).clamp_min(0)
    return losses[valid].mean()


def semi_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, *,
                           squared: bool = True) -> torch.Tensor:
    """Mean over every anchor-positive pair (a, p) of max(0, d_ap - d_an + margin), n being the
    closest negative with d_an > d_ap, or, when every negative is closer than p, the farthest one."""
    d = pairwise_distances(embeddings, squared=squared)
    positive, negative = pair_masks(labels)
    anchors, positives = positive.nonzero(as_tuple=True)
    if len(anchors) == 0:
        return d.sum() * 0.0
    d_ap = d[anchors, positives]  # one row per (a, p) pair
    d_an = d[anchors]  # that anchor's distances to everything
    neg = negative[anchors]
    has_negative = neg.any(1)
    if not has_negative.any():
        return d.sum() * 0.0
    farther = neg & (d_an > d_ap[:, None])
    semi_hard = d_an.masked_fill(~farther, float("inf")).min(1).values
    fallback = d_an.masked_fill(~neg, float("-inf")).max(1).values
    chosen = torch.where(farther.any(1), semi_hard, fallback)
    losses = (d_ap - chosen + margin).clamp_min(0)
    return losses[has_negative].mean()


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, mining: str = "semi_hard", *,
                 squared: bool = True) -> torch.Tensor:
    if mining == "semi_hard":
        return semi_hard_triplet_loss(embeddings, labels, margin, squared=squared)
    if mining == "batch_hard":
        return batch_hard_triplet_loss(embeddings, labels, margin, squared=squared)
    raise ValueError(f"unknown mining {mining!r}; choose from {', '.join(MINING)}")


def pair_indices(n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every unordered pair i < j of n items."""
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i, j


def binary_pair_loss(embeddings: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    """The Siamese binary formulation: |e_i - e_j| -> logistic unit -> P(same), trained with BCE on
    every pair of the batch; same and different pairs weigh half each (a P x K batch holds far more
    different pairs)."""
    i, j = pair_indices(len(labels), embeddings.device)
    logits = head((embeddings[i] - embeddings[j]).abs().float()).squeeze(1)
    same = (labels[i] == labels[j]).float()
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, same, reduction="none")
    parts = [losses[same == value].mean() for value in (1.0, 0.0) if (same == value).any()]
    return sum(parts) / len(parts) if parts else embeddings.sum() * 0.0
