"""Numpy twins of the activation kernels (fnnet/kernels/_act_pythran.py), same signatures."""

from __future__ import annotations

import math

import numpy as np

_erf_objects = np.frompyfunc(math.erf, 1, 1)  # (numpy has no erf; one Python call per element: the slow twin)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.asarray(_erf_objects(x), np.float64)


def relu_forward(x: np.ndarray, y: np.ndarray) -> None:
    """``y = max(x, 0)`` (flat arrays); NaN propagates."""
    np.maximum(x, 0, out=y)


def relu_backward(y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * (y > 0)`` (flat arrays), with ``y`` the forward output."""
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as in the compiled kernel (silent)
        np.multiply(dy, y > 0, out=dx)


def gelu_forward(x: np.ndarray, y: np.ndarray) -> None:
    """``y = x * Phi(x)`` (flat arrays), Phi the standard normal CDF, in float64."""
    v = x.astype(np.float64)
    with np.errstate(invalid="ignore"):  # (-inf * 0 is NaN, as in the compiled kernel)
        y[:] = 0.5 * v * (1.0 + _erf(v * 0.7071067811865476))


def gelu_backward(x: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * (Phi(x) + x phi(x))`` (flat arrays), ``x`` the forward input, in float64."""
    v = x.astype(np.float64)
    cdf = 0.5 * (1.0 + _erf(v * 0.7071067811865476))
    with np.errstate(invalid="ignore", over="ignore"):
        dx[:] = dy.astype(np.float64) * (cdf + v * 0.3989422804014327 * np.exp(-0.5 * v * v))
