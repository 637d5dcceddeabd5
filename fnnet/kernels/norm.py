"""Numpy twins of the batch-norm kernels (fnnet/kernels/_norm_pythran.py), same signatures.

Arrays are (N, C, S); statistics are float64 (2, C). The twins sum in numpy's order
(pairwise), the compiled kernels sample after sample: the same values to rounding, not
the same bits.
"""

from __future__ import annotations

import numpy as np


def bn_moments(x: np.ndarray, out: np.ndarray) -> None:
    """``out[0]``: each channel's mean; ``out[1]``: its sum of squared deviations (float64)."""
    mean = x.mean(axis=(0, 2), dtype=np.float64)
    d = x - mean[None, :, None]
    out[0] = mean
    out[1] = np.einsum("ncs,ncs->c", d, d)


def bn_normalize(x: np.ndarray, coef: np.ndarray, xhat: np.ndarray, y: np.ndarray) -> None:
    """``coef`` rows mean, inv_std, scale, shift: ``xhat = (x - mean) * inv_std``,
    ``y = xhat * scale + shift`` (per channel)."""
    mean, inv_std, scale, shift = (r[:, None] for r in coef[:4])
    np.multiply(x - mean, inv_std, out=xhat)
    np.multiply(xhat, scale, out=y)
    y += shift


def bn_grad_sums(dy: np.ndarray, xhat: np.ndarray, out: np.ndarray) -> None:
    """``out[0]``: each channel's sum of ``dy``; ``out[1]``: of ``dy * xhat`` (float64)."""
    out[0] = dy.sum(axis=(0, 2), dtype=np.float64)
    out[1] = (dy * xhat).sum(axis=(0, 2), dtype=np.float64)


def bn_backward(dy: np.ndarray, xhat: np.ndarray, k: np.ndarray, dx: np.ndarray) -> None:
    """``dx = k[0] * dy - k[1] - k[2] * xhat`` (per channel)."""
    np.multiply(dy, k[0][:, None], out=dx)
    dx -= k[1][:, None]
    dx -= k[2][:, None] * xhat
