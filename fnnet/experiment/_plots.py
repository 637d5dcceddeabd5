"""Learning curves and predictions as PNGs (matplotlib, if installed)."""

from __future__ import annotations

import pathlib
import sys

import numpy as np


def save_plots(
    out: pathlib.Path, rows: list[dict], test_x: np.ndarray, test_y: np.ndarray, pred: np.ndarray,
    classes: tuple[str, ...],
) -> list[str]:
    """``learning_curves.png`` (training and validation loss and accuracy of ``rows``) and
    ``predictions.png`` (the first test images, then mistakes); the names written, none
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping learning_curves.png and predictions.png "
              "(pip install matplotlib)", file=sys.stderr)
        return []
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [r["loss"] for r in rows], label="train (mean since last eval)")
    ax1.plot(steps, [r["val_loss"] for r in rows], label="validation")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(steps, [r["train_accuracy"] for r in rows], label="train (mean since last eval)")
    ax2.plot(steps, [r["val_accuracy"] for r in rows], label="validation")
    ax2.set_xlabel("step")
    ax2.set_ylabel("accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=100)
    plt.close(fig)

    # first 40 test images, with every mistake among the first 1000 shown after them
    wrong = np.flatnonzero(pred[:1000] != test_y[:1000])
    idx = np.concatenate([np.arange(40 - min(len(wrong), 20)), wrong[:20]])
    fig, axes = plt.subplots(5, 8, figsize=(12, 8))
    for ax, i in zip(axes.ravel(), idx):
        ok = pred[i] == test_y[i]
        ax.imshow(test_x[i, 0], cmap="gray_r")
        ax.set_title(f"{classes[test_y[i]]} / {classes[pred[i]]}" + ("" if ok else " ✗"),
                     color="black" if ok else "red", fontsize=9)
        ax.axis("off")
    fig.suptitle("test images: true / predicted (mistakes in red)")
    fig.tight_layout()
    fig.savefig(out / "predictions.png", dpi=80)
    plt.close(fig)
    return ["learning_curves.png", "predictions.png"]
