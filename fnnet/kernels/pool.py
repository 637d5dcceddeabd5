"""Numpy twins of the pooling kernels (reference; fallback when nothing is compiled).

Same signatures as fnnet/kernels/_pool_pythran.py. Windows are ``kh x kw`` with strides
``sh, sw``, no padding; the output size is read from ``y`` (a partial window is dropped).

Tie rule of max pooling: the first maximal element of the window in row-major order
receives the gradient; a NaN counts as larger than any number (first NaN wins), which
is what ``numpy.argmax`` does. ``idx`` holds the flat index ``h*W + w`` of the winner in
its (H, W) plane. Overlapping windows (stride < window) accumulate their gradients.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int) -> np.ndarray:
    """(N, C, Ho, Wo, kh*kw) copy of the pooling windows."""
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw]
    return win.reshape(*win.shape[:4], kh * kw)


def max_pool_forward(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray, idx: np.ndarray) -> None:
    """Window maxima into ``y`` (N, C, Ho, Wo) and winners' flat indices into ``idx``."""
    ho, wo = y.shape[2], y.shape[3]
    w = x.shape[3]
    win = _windows(x, kh, kw, sh, sw, ho, wo)
    k = win.argmax(axis=-1)
    y[...] = np.take_along_axis(win, k[..., None], axis=-1)[..., 0]
    rows = (np.arange(ho) * sh)[:, None] + k // kw
    cols = (np.arange(wo) * sw)[None, :] + k % kw
    idx[...] = rows * w + cols


def max_pool_values(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray) -> None:
    """Window maxima into ``y`` without their positions (inference); NaN propagates."""
    ho, wo = y.shape[2], y.shape[3]
    y[...] = _windows(x, kh, kw, sh, sw, ho, wo).max(axis=-1)


def max_pool_2x2_forward(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> int:
    """:func:`max_pool_forward` of 2x2 windows at stride 2; returns 1 if a window holds a
    NaN (the compiled kernel's results then need not follow the tie rule: the caller runs
    :func:`max_pool_forward`), else 0."""
    max_pool_forward(x, 2, 2, 2, 2, y, idx)
    return int(np.isnan(x[:, :, : 2 * y.shape[2], : 2 * y.shape[3]]).any())


def max_pool_2x2_values(x: np.ndarray, y: np.ndarray) -> None:
    """:func:`max_pool_values` of 2x2 windows at stride 2, for an ``x`` without NaN."""
    max_pool_values(x, 2, 2, 2, 2, y)


def max_pool_backward(dy: np.ndarray, idx: np.ndarray, dx: np.ndarray) -> None:
    """Route ``dy`` to the winners recorded in ``idx``; ``dx`` (N, C, H*W) is overwritten."""
    n, c, hw = dx.shape
    flat = np.zeros((n * c, hw), dx.dtype)
    rows = np.arange(n * c)[:, None]
    np.add.at(flat, (rows, idx.reshape(n * c, -1)), dy.reshape(n * c, -1))
    dx[...] = flat.reshape(dx.shape)


def avg_pool_forward(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, y: np.ndarray) -> None:
    """Window means into ``y`` (N, C, Ho, Wo)."""
    ho, wo = y.shape[2], y.shape[3]
    y[...] = _windows(x, kh, kw, sh, sw, ho, wo).sum(axis=-1) * (1.0 / (kh * kw))


def avg_pool_backward(dy: np.ndarray, kh: int, kw: int, sh: int, sw: int, dx: np.ndarray) -> None:
    """Spread ``dy / (kh*kw)`` over each window; ``dx`` is overwritten."""
    ho, wo = dy.shape[2], dy.shape[3]
    g = dy * (1.0 / (kh * kw))
    dx[...] = 0
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] += g
