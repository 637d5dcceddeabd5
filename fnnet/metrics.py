"""Metrics of model outputs against labels (not differentiated; losses are in ``losses``)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["accuracy", "confusion_matrix"]


def accuracy(logits: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of rows of ``logits`` (N, C) whose arg-max matches the label (class ids
    (N,) or one-hot rows (N, C))."""
    ids = np.asarray(labels)
    if ids.ndim == 2:
        ids = ids.argmax(axis=1)
    out = logits if type(logits) is np.ndarray else np.asarray(logits)
    return float(np.count_nonzero(out.argmax(axis=1) == ids) / len(ids))


def confusion_matrix(labels: ArrayLike, predictions: ArrayLike, num_classes: int) -> np.ndarray:
    """``m[true, predicted]`` counts (int64, ``num_classes`` square) of class ids (N,)."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m
