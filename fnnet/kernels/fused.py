"""Numpy twins of the fused kernels (fnnet/kernels/_fused_pythran.py), same signatures.

Each twin is the unfused layers' twins in sequence (the bias add as numpy's add, then
:mod:`fnnet.kernels.act` and :mod:`fnnet.kernels.pool`), so it gives their bits by
construction; the compiled kernels do the same operations in one pass.
"""

from __future__ import annotations

import numpy as np

from . import act, norm, pool


def bias_relu(z: np.ndarray, b: np.ndarray, y: np.ndarray) -> None:
    """``y = relu(z + b)``, ``z`` and ``y`` (N, C, S), ``b`` (C,) added along axis 1; ``y`` may be ``z``."""
    np.add(z, b[:, None], out=y)
    act.relu_forward(y.reshape(-1), y.reshape(-1))


def _relu_of_sum(z: np.ndarray, b: np.ndarray) -> np.ndarray:
    n, c, h, w = z.shape
    r = np.empty_like(z)
    bias_relu(z.reshape(n, c, h * w), b, r.reshape(n, c, h * w))
    return r


def bias_relu_max_pool(
    z: np.ndarray, b: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray, idx: np.ndarray
) -> None:
    """Max pooling of ``relu(z + b)`` (z (N, C, H, W)): maxima into ``y``, winners into ``idx``."""
    pool.max_pool_forward(_relu_of_sum(z, b), kh, kw, sh, sw, y, idx)


def bias_relu_max_pool_2x2(z: np.ndarray, b: np.ndarray, y: np.ndarray, idx: np.ndarray) -> int:
    """:func:`bias_relu_max_pool` of 2x2 windows at stride 2; returns 1 if a window met a NaN, else 0."""
    return pool.max_pool_2x2_forward(_relu_of_sum(z, b), y, idx)


def bias_relu_max_pool_values(
    z: np.ndarray, b: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray
) -> int:
    """The maxima of :func:`bias_relu_max_pool` alone (inference), NaN propagating;
    returns 1 if a window met a NaN (the compiled kernel's maxima then need not keep it:
    the caller runs :func:`bias_relu_max_pool`), else 0."""
    r = _relu_of_sum(z, b)
    pool.max_pool_values(r, kh, kw, sh, sw, y)
    ho, wo = y.shape[2], y.shape[3]
    return int(np.isnan(pool._windows(r, kh, kw, sh, sw, ho, wo)).any())


def relu_max_pool_backward(dy: np.ndarray, idx: np.ndarray, y: np.ndarray, overlap: int, dz: np.ndarray) -> None:
    """The gradient of ``relu`` then max pooling, from the pooled output ``y`` and its
    winners ``idx``, into ``dz`` (N, C, H*W); ``overlap``: whether windows overlap (the
    compiled kernel's loop order; the result does not depend on it)."""
    pool.max_pool_backward(dy, idx, dz)
    n, c, hw = dz.shape
    mask = np.zeros((n * c, hw), dz.dtype)  # ReLU's output is positive only where a winner is
    np.put_along_axis(mask, idx.reshape(n * c, -1), (y > 0).reshape(n * c, -1).astype(dz.dtype), axis=1)
    act.relu_backward(mask.reshape(-1), dz.reshape(-1), dz.reshape(-1))


def bn_relu(x: np.ndarray, coef: np.ndarray, xhat: np.ndarray, y: np.ndarray) -> None:
    """Batch norm's normalisation (``coef`` rows mean, inv_std, scale, shift; ``xhat``
    written) then ReLU into ``y``; arrays (N, C, S)."""
    norm.bn_normalize(x, coef, xhat, y)
    act.relu_forward(y.reshape(-1), y.reshape(-1))


def _bn_relu(x: np.ndarray, coef: np.ndarray, xhat: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    r = np.empty_like(x)
    bn_relu(x.reshape(n, c, h * w), coef, xhat.reshape(n, c, h * w), r.reshape(n, c, h * w))
    return r


def bn_relu_max_pool(
    x: np.ndarray, coef: np.ndarray, xhat: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray,
    idx: np.ndarray,
) -> None:
    """Max pooling of ``relu(batch norm(x))`` (x (N, C, H, W); ``xhat`` written whole)."""
    pool.max_pool_forward(_bn_relu(x, coef, xhat), kh, kw, sh, sw, y, idx)


def bn_relu_max_pool_2x2(x: np.ndarray, coef: np.ndarray, xhat: np.ndarray, y: np.ndarray, idx: np.ndarray) -> int:
    """:func:`bn_relu_max_pool` of 2x2 windows at stride 2; returns 1 if a window met a NaN, else 0."""
    return pool.max_pool_2x2_forward(_bn_relu(x, coef, xhat), y, idx)


def bn_relu_max_pool_values(
    x: np.ndarray, coef: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray
) -> int:
    """The maxima of :func:`bn_relu_max_pool` alone (inference, no ``xhat`` kept);
    returns 1 if a window met a NaN, else 0 (as :func:`bias_relu_max_pool_values`)."""
    r = _bn_relu(x, coef, np.empty_like(x))
    pool.max_pool_values(r, kh, kw, sh, sw, y)
    return int(np.isnan(pool._windows(r, kh, kw, sh, sw, y.shape[2], y.shape[3])).any())
