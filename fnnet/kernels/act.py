"""Numpy twins of the activation kernels (fnnet/kernels/_act_pythran.py), same signatures."""

from __future__ import annotations

import numpy as np


def relu_forward(x: np.ndarray, y: np.ndarray) -> None:
    """``y = max(x, 0)`` (flat arrays); NaN propagates."""
    np.maximum(x, 0, out=y)


def relu_backward(y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * (y > 0)`` (flat arrays), with ``y`` the forward output."""
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as in the compiled kernel (silent)
        np.multiply(dy, y > 0, out=dx)
