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
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.12, top=0.96, wspace=0.25)  # (tight_layout: 0.2 s)
    fig.savefig(out / "learning_curves.png", dpi=100)
    plt.close(fig)

    # first 40 test images, with every mistake among the first 1000 shown after them, as one
    # image on one axes (40 axes with titles took 0.4 s of layout and ticks)
    wrong = np.flatnonzero(pred[:1000] != test_y[:1000])
    idx = np.concatenate([np.arange(40 - min(len(wrong), 20)), wrong[:20]])
    rows_, cols_, (h, w) = 5, 8, test_x.shape[-2:]
    cell_h, cell_w = h + h // 2, w * 7 // 4  # room for a title above each image, and beside it
    images = test_x[idx].reshape(len(idx), -1, h, w)[:, 0]
    lo, hi = min(0.0, float(images.min())), float(images.max())
    canvas = np.full((rows_ * cell_h, cols_ * cell_w), lo, np.float32)  # (the background: white)
    titles = []  # (x, y, text, colour)
    for k, (i, img) in enumerate(zip(idx, images)):
        r, c = divmod(k, cols_)
        top, left = r * cell_h + h // 2, c * cell_w + (cell_w - w) // 2
        canvas[top:top + h, left:left + w] = img
        ok = pred[i] == test_y[i]
        title = f"{classes[test_y[i]]} / {classes[pred[i]]}" + ("" if ok else " ✗")
        titles.append((left + w / 2 - 0.5, top - 1.5, title, "black" if ok else "red"))
    fig = plt.figure(figsize=(13, 13 * canvas.shape[0] / canvas.shape[1] + 0.5))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.93))
    ax.imshow(canvas, cmap="gray_r", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    for x, y, text, colour in titles:
        ax.text(x, y, text, color=colour, fontsize=9, ha="center", va="bottom")
    ax.axis("off")
    fig.suptitle("test images: true / predicted (mistakes in red)")
    fig.savefig(out / "predictions.png", dpi=80)
    plt.close(fig)
    return ["learning_curves.png", "predictions.png"]
