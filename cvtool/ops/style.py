"""The costs of neural style transfer (Gatys et al.), in the seed's normalisation.

For a layer with activations A of shape C x H x W (unrolled to C x HW):
  content cost  J_content = 1 / (4 H W C) * sum (A_C - A_G)^2
  Gram matrix   G = A A^T                                    (C x C: which channels fire together)
  style cost    J_style^l = 1 / (4 C^2 (H W)^2) * sum (G_S - G_G)^2
  J_style = sum_l lambda_l J_style^l;   J = alpha J_content + beta J_style (+ gamma TV)
"""

from __future__ import annotations

import torch


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> B x C x C, unnormalised (the normalisation lives in the style cost)."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2)


def content_cost(content: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    _, c, h, w = generated.shape
    return ((content - generated) ** 2).sum() / (4 * h * w * c)


def style_layer_cost(style_gram: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """`style_gram` is precomputed (style images are encoded once and reused for every content image)."""
    _, c, h, w = generated.shape
    return ((style_gram - gram_matrix(generated)) ** 2).sum() / (4 * c**2 * (h * w) ** 2)


def style_cost(style_grams: dict[str, torch.Tensor], generated: dict[str, torch.Tensor],
               layer_weights: dict[str, float]) -> torch.Tensor:
    return sum(layer_weights[name] * style_layer_cost(style_grams[name], generated[name]) for name in layer_weights)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels: discourages high-frequency noise."""
    return (image[..., 1:, :] - image[..., :-1, :]).abs().mean() + (image[..., :, 1:] - image[..., :, :-1]).abs().mean()
