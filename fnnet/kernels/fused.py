"""Numpy twins of the fused kernels (fnnet/kernels/_fused_pythran.py), same signatures.

Each twin is the unfused layers' twins in sequence (``x * scale + shift`` as numpy's
multiply and add, which for the bias add's scale of ones is the bias add itself, then
:mod:`fnnet.kernels.act` and :mod:`fnnet.kernels.pool`), so it gives their bits by
construction; the compiled kernels do the same operations in one pass.
"""

from __future__ import annotations

import numpy as np

from . import act, pool


def standardize(x: np.ndarray, coef: np.ndarray, xhat: np.ndarray) -> None:
    """``xhat = (x - mean) * inv_std`` with ``coef`` rows 0 and 1 per channel; arrays (N, C, S)."""
    np.multiply(x - coef[0][:, None], coef[1][:, None], out=xhat)


def scale_shift_relu(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, y: np.ndarray) -> None:
    """``y = relu(x * scale + shift)`` per channel (axis 1) of (N, C, S) arrays; ``y`` may be ``x``."""
    np.multiply(x, scale[:, None], out=y)
    y += shift[:, None]
    act.relu_forward(y.reshape(-1), y.reshape(-1))


def _relu_of(x: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    r = np.empty_like(x)
    scale_shift_relu(x.reshape(n, c, h * w), scale, shift, r.reshape(n, c, h * w))
    return r


def scale_shift_relu_max_pool(
    x: np.ndarray, scale: np.ndarray, shift: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray,
    idx: np.ndarray,
) -> None:
    """Max pooling of ``relu(x * scale + shift)`` (x (N, C, H, W)): maxima into ``y``, winners into ``idx``."""
    pool.max_pool_forward(_relu_of(x, scale, shift), kh, kw, sh, sw, y, idx)


def scale_shift_relu_max_pool_2x2(
    x: np.ndarray, scale: np.ndarray, shift: np.ndarray, y: np.ndarray, idx: np.ndarray
) -> int:
    """:func:`scale_shift_relu_max_pool` of 2x2 windows at stride 2; returns 1 if a window met a NaN, else 0."""
    return pool.max_pool_2x2_forward(_relu_of(x, scale, shift), y, idx)


def scale_shift_relu_max_pool_values(
    x: np.ndarray, scale: np.ndarray, shift: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray
) -> int:
    """The maxima of :func:`scale_shift_relu_max_pool` alone (inference), NaN propagating;
    returns 1 if a window met a NaN (the compiled kernel's maxima then need not keep it:
    the caller runs :func:`scale_shift_relu_max_pool`), else 0."""
    r = _relu_of(x, scale, shift)
    pool.max_pool_values(r, kh, kw, sh, sw, y)
    return int(np.isnan(pool._windows(r, kh, kw, sh, sw, y.shape[2], y.shape[3])).any())


def relu_max_pool_backward(dy: np.ndarray, idx: np.ndarray, y: np.ndarray, overlap: int, dz: np.ndarray) -> None:
    """The gradient of ``relu`` then max pooling, from the pooled output ``y`` and its
    winners ``idx``, into ``dz`` (N, C, H*W); ``overlap``: whether windows overlap (the
    compiled kernel's loop order; the result does not depend on it)."""
    pool.max_pool_backward(dy, idx, dz)
    n, c, hw = dz.shape
    mask = np.zeros((n * c, hw), dz.dtype)  # ReLU's output is positive only where a winner is
    np.put_along_axis(mask, idx.reshape(n * c, -1), (y > 0).reshape(n * c, -1).astype(dz.dtype), axis=1)
    act.relu_backward(mask.reshape(-1), dz.reshape(-1), dz.reshape(-1))
