"""The "show me" pictures of a run: learning curves and a confusion matrix (matplotlib, no display)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cvtool.io.atomic import atomic_write_bytes


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (training runs on servers with no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> str:
    """A task's plot as a PNG in the run directory, written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return str(path)


def save_curves(history: list[dict], path: Path) -> str:
    """Loss on the left, every other val_* metric on the right, per epoch (validated epochs only)."""
    plt = pyplot()
    keys = list(dict.fromkeys(key for row in history for key in row))  # `val_every`: some epochs have no val_*

    def curve(axes, key):
        points = [(row["epoch"], row[key]) for row in history if row.get(key) not in (None, "")]
        axes.plot(*zip(*points), marker=".", label=key)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        if key in keys:
            curve(left, key)
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    metrics = [k for k in keys if k.startswith("val_") and k != "val_loss"]
    for key in metrics:
        curve(right, key)
    right.set(xlabel="epoch", title="validation")
    if metrics:
        right.legend()
    return save_figure(fig, path)


def save_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> str:
    plt = pyplot()
    n = len(classes)
    size = min(4 + 0.35 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        peak = matrix.max() or 1
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > peak / 2 else "black")
    return save_figure(fig, path)
