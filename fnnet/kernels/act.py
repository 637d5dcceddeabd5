"""Numpy twins of the activation kernels (fnnet/kernels/_act_pythran.py), same signatures."""

from __future__ import annotations

import numpy as np


def relu_forward(x, y) -> None:
    """``y = max(x, 0)`` (flat arrays); NaN propagates."""
    np.maximum(x, 0, out=y)


def relu_backward(y, dy, dx) -> None:
    """``dx = dy * (y > 0)`` (flat arrays), with ``y`` the forward output."""
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as in the compiled kernel (silent)
        np.multiply(dy, y > 0, out=dx)
