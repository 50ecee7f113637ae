"""Train the packaged `lenet5_digits` weights on the load_digits training split (CPU, ~1 minute).

    python scripts/make_lenet_digits.py [--out cvtool/models/packaged/lenet5_digits.pt]

Prints the test accuracy on the held-out split and stores it, with the command, in the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from digits import load_split  # noqa: E402

from cvtool.models.checkpoint import save_checkpoint  # noqa: E402
from cvtool.models.lenet import DIGIT_CLASSES, LENET_PREPROCESS, LeNet5  # noqa: E402


def to_tensor(images) -> torch.Tensor:
    return torch.from_numpy(np.stack([LENET_PREPROCESS(im) for im in images]))


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 px and small rotations/scales: the handwriting varies, the digit does not."""
    n = batch.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * (2 * 0.17)  # +-10 degrees
    scale = 1 + (torch.rand(n, generator=generator) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * (2 * 2 / 16)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    # background is white paper (+1 after normalisation): pad with it, not with black
    return nn.functional.grid_sample(batch - 1, grid, align_corners=False, padding_mode="zeros") + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("cvtool/models/packaged/lenet5_digits.pt"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_split()
    x_train, x_test = to_tensor(x_train), to_tensor(x_test)
    y_train, y_test = torch.as_tensor(y_train), torch.as_tensor(y_test)

    model = LeNet5(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loss_fn = nn.CrossEntropyLoss()
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            optimizer.zero_grad()
            loss = loss_fn(model(augment(x_train[idx], generator)), y_train[idx])
            loss.backward()
            optimizer.step()
        scheduler.step()
    model.eval()
    with torch.inference_mode():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    seconds = time.time() - start
    print(f"test accuracy {accuracy:.4f} on {len(y_test)} held-out digits; {seconds:.0f} s on CPU")
    save_checkpoint(
        args.out,
        arch="lenet5",
        task="classify",
        state_dict=model.state_dict(),
        classes=DIGIT_CLASSES,
        preprocess=LENET_PREPROCESS.to_dict(),
        extra={
            "metrics": {"test_accuracy": round(accuracy, 4), "test_images": len(y_test)},
            "recipe": f"python scripts/make_lenet_digits.py --epochs {args.epochs} --seed {args.seed}",
        },
    )


if __name__ == "__main__":
    main()
