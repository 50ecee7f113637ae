"""The network and data tests/test_sync_bn.py and its torchrun worker share."""

import torch


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 4, 3, padding=1), torch.nn.Sequential(torch.nn.BatchNorm2d(4)),  # nested: converted too
        torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 2), torch.nn.BatchNorm1d(2),
    )


def global_batch():
    g = torch.Generator().manual_seed(1)
    # the halves differ in mean and scale, so per-rank statistics would differ from the global batch's
    x = torch.randn(8, 3, 5, 5, generator=g) * torch.tensor([1.0] * 4 + [3.0] * 4).view(8, 1, 1, 1)
    x[4:] += 2.0
    return x, torch.randn(8, 2, generator=g)
