"""Numpy twins of the optimizer kernels (fnnet/kernels/_optim_pythran.py), same signatures."""

from __future__ import annotations

import numpy as np


def adam_update(
    g: np.ndarray, m: np.ndarray, v: np.ndarray, b1: np.floating, b1c: np.floating, b2: np.floating,
    b2c: np.floating, c0: np.floating, c1: np.floating, eps: np.floating,
    mu: np.ndarray, nu: np.ndarray, u: np.ndarray, scratch: np.ndarray,
) -> None:
    """``mu = b1*m + b1c*g``, ``nu = b2*v + b2c*(g*g)``, ``u = (mu/c0) / (sqrt(nu/c1) + eps)``
    (flat arrays and scalars of one dtype; ``scratch`` unused)."""
    np.multiply(m, b1, out=mu)
    mu += np.multiply(g, b1c)
    np.multiply(g, g, out=nu)
    nu *= b2c
    nu += np.multiply(v, b2)
    np.divide(nu, c1, out=u)
    np.sqrt(u, out=u)
    u += eps
    np.divide(np.divide(mu, c0), u, out=u)
