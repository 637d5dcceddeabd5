"""Metrics of model outputs against labels (not differentiated; losses are in ``losses``)."""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "confusion_matrix"]


def accuracy(logits, labels) -> float:
    """Fraction of rows of ``logits`` (N, C) whose arg-max matches the label (class ids
    (N,) or one-hot rows (N, C))."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(axis=1)
    logits = logits if type(logits) is np.ndarray else np.asarray(logits)
    return float(np.count_nonzero(logits.argmax(axis=1) == labels) / len(labels))


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """``m[true, predicted]`` counts (int64, ``num_classes`` square) of class ids (N,)."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m
