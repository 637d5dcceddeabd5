"""Losses as ``loss(outputs, targets) -> (value, d_outputs)`` pairs (mean over the batch).

``value`` is a 0-d float64 array; the gradient has the outputs' dtype and shape.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from . import kernels
from ._errors import DTypeError, InvalidValueError, ShapeError
from .runner import FLOAT_DTYPES

__all__ = ["ROW_TOLERANCE", "mse", "softmax_cross_entropy"]


def _check_outputs(name: str, a: ArrayLike, what: str, ndim: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: {what} must be float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ShapeError(f"{name}: {what} must be {ndim}-D, got shape {a.shape}")
    if a.size == 0:
        raise ShapeError(f"{name}: {what} is empty (shape {a.shape})")
    if not np.isfinite(a).all():
        bad = "NaN" if np.isnan(a).any() else "inf"
        raise InvalidValueError(f"{name}: {what} contain {bad}; the model has diverged or the input is bad")
    return a


def _targets(name: str, labels: np.ndarray, n: int, c: int, dtype: np.dtype) -> np.ndarray:
    """One-hot or probability rows (N, C) as rows of ``dtype`` (class ids take the fused kernel)."""
    if labels.ndim == 2 and labels.dtype.kind == "f":
        if labels.shape != (n, c):
            raise ShapeError(f"{name}: one-hot labels must have shape {(n, c)}, got {labels.shape}")
        if not np.isfinite(labels).all():
            raise InvalidValueError(f"{name}: labels contain NaN or inf")
        _check_rows(name, labels)
        return labels.astype(dtype, copy=False)
    raise ShapeError(
        f"{name}: labels must be integer class ids of shape ({n},) or float rows of shape ({n}, {c}), "
        f"got {labels.dtype} {labels.shape}"
    )


ROW_TOLERANCE = 1e-3
"""How far from 1 a row of probability targets may sum (float32 rounding of a softmax or a
mixup of one-hot rows is far inside it; a row of counts or scores is far outside)."""


def _check_rows(name: str, labels: np.ndarray) -> None:
    """InvalidValueError unless every row of ``labels`` is a distribution: entries >= 0
    that sum to 1 within :data:`ROW_TOLERANCE` (as PyTorch's cross_entropy expects of
    class probabilities; fnnet refuses the rows instead of training on them)."""
    if labels.size and labels.min() < 0:
        i = int(np.argwhere(labels < 0)[0, 0])
        raise InvalidValueError(f"{name}: probability rows must have entries >= 0; row {i} has {labels[i].min():g}")
    sums = labels.sum(axis=1, dtype=np.float64)
    off = np.abs(sums - 1.0) > ROW_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise InvalidValueError(f"{name}: probability rows must each sum to 1 (within {ROW_TOLERANCE:g}); row {i} "
                                f"sums to {sums[i]:.6g}")


def _check_ids(name: str, labels: np.ndarray, c: int) -> None:
    lo, hi = (labels.min(), labels.max()) if labels.size else (0, 0)
    if lo < 0 or hi >= c:
        raise InvalidValueError(f"{name}: labels must be class ids in [0, {c}), got values in [{lo}, {hi}]")


def softmax_cross_entropy(
    logits: ArrayLike, labels: ArrayLike, *, label_smoothing: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Mean softmax cross-entropy and its gradient.

    ``logits`` (N, C) float; ``labels`` int class ids (N,) or one-hot/probability rows
    (N, C), each a distribution (entries >= 0 summing to 1 within
    :data:`ROW_TOLERANCE`; other rows are an InvalidValueError naming the row). Stable:
    computed from ``logits - max`` with log-sum-exp. Returns ``(loss, dlogits)`` with
    ``dlogits = (softmax(logits) - target) / N``. With ``label_smoothing`` ``e`` in
    [0, 1), the target is ``(1 - e) * onehot + e / C`` (Szegedy et al. 2016). NaN or inf
    in the logits is an InvalidValueError.
    """
    name = "softmax_cross_entropy"
    logits = logits if type(logits) is np.ndarray else np.asarray(logits)
    labels = labels if type(labels) is np.ndarray else np.asarray(labels)
    ids = labels.ndim == 1 and labels.dtype.kind in "iu"
    if label_smoothing:
        e = float(label_smoothing)
        if not 0.0 <= e < 1.0:
            raise InvalidValueError(f"{name}: label_smoothing must be in [0, 1), got {label_smoothing!r}")
        logits = _check_outputs(name, logits, "logits", ndim=2)
        n, c = logits.shape
        if ids:
            if labels.shape[0] != n:
                raise ShapeError(f"{name}: {n} logits rows but {labels.shape[0]} labels")
            _check_ids(name, labels, c)
            target = np.zeros((n, c), logits.dtype)
            target[np.arange(n), labels] = 1
        else:
            target = _targets(name, labels, n, c, logits.dtype)
        return softmax_cross_entropy(logits, target * (1.0 - e) + e / c)
    if not ids or logits.ndim != 2 or logits.dtype not in FLOAT_DTYPES or logits.size == 0:
        logits = _check_outputs(name, logits, "logits", ndim=2)
    n, c = logits.shape
    if ids:  # the common case: one fused kernel, no one-hot matrix
        if labels.shape[0] != n:
            raise ShapeError(f"{name}: {n} logits rows but {labels.shape[0]} labels")
        dlogits = np.empty_like(logits)
        total, status = kernels.softmax_xent(logits, labels.astype(np.int64, copy=False), dlogits)
        if status == 1:
            _check_ids(name, labels, c)
        if status == 2:
            _check_outputs(name, logits, "logits")
        loss = total / n
    else:  # logits were checked above
        target = _targets(name, labels, n, c, logits.dtype)
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = -(target * (z - np.log(s))).sum(dtype=np.float64) / n
        dlogits = ((e / s - target) * (1.0 / n)).astype(logits.dtype, copy=False)
    if not math.isfinite(loss):
        raise InvalidValueError(f"{name}: the loss is {loss}; a logit of a true class is -inf")
    return np.asarray(loss), dlogits


def mse(predictions: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared error over all elements and its gradient ``2 (p - t) / size``.

    ``predictions`` and ``targets`` share one shape (N, ...).
    """
    name = "mse"
    p = _check_outputs(name, predictions, "predictions")
    t = np.asarray(targets)
    if t.shape != p.shape:
        raise ShapeError(f"{name}: targets shape {t.shape} does not match predictions shape {p.shape}")
    t = _check_outputs(name, t.astype(p.dtype, copy=False) if t.dtype.kind in "iuf" else t, "targets")
    diff = p - t
    loss = np.square(diff).sum(dtype=np.float64) / diff.size
    return np.asarray(loss), diff * (2.0 / diff.size)

