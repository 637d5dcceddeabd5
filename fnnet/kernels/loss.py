"""Numpy twin of the fused softmax cross-entropy kernel (fnnet/kernels/_loss_pythran.py)."""

from __future__ import annotations

import numpy as np


def softmax_xent(logits: np.ndarray, labels: np.ndarray, dlogits: np.ndarray) -> tuple[float, int]:
    """Sum over rows of -log softmax(logits)[label] (float64), with dlogits = (softmax -
    onehot) / N written in place. Returns (loss_sum, status): status 0 ok, 1 a label out of
    range, 2 a NaN or inf logit."""
    n, c = logits.shape
    if n and (labels.min() < 0 or labels.max() >= c):
        return 0.0, 1
    m = logits.max(axis=1, keepdims=True)
    if not np.isfinite(m).all() or np.isnan(logits).any():
        return 0.0, 2
    z = logits - m
    e = np.exp(z.astype(np.float64))
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    d = e / s
    d[rows, labels] -= 1
    dlogits[...] = d * (1.0 / n)
    return float((np.log(s[:, 0]) - z[rows, labels]).sum()), 0
