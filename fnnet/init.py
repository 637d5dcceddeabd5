"""Parameter initialisers: ``initializer(key, shape, dtype, fan_in, fan_out) -> array``.

Layers pass the fans they know (dense: in/out features; conv: C*kh*kw / K*kh*kw), so
one initialiser serves every layer. Samples are drawn in float64 and cast, so float32
and float64 params from one key agree to float32 precision.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import random
from .random import Key
from .typing import Array, Shape

Initializer = Callable[[random.Key, tuple, np.dtype, int, int], np.ndarray]
"""``(key, shape, dtype, fan_in, fan_out) -> array``: how a layer draws a param."""

__all__ = [
    "Initializer",
    "zeros",
    "constant",
    "normal",
    "uniform",
    "he_normal",
    "he_uniform",
    "glorot_normal",
    "glorot_uniform",
]


def zeros(key: Key, shape: Shape, dtype: np.dtype, fan_in: int, fan_out: int) -> Array:
    """All zeros (the default for biases)."""
    return np.zeros(shape, dtype)


def constant(value: float) -> Initializer:
    """All ``value``."""
    def init(key: Key, shape: Shape, dtype: np.dtype, fan_in: int, fan_out: int) -> Array:
        return np.full(shape, value, dtype)
    return init


def normal(std: float = 0.01) -> Initializer:
    """N(0, std^2); the tutorial used ``normal(0.01)`` for every weight."""
    def init(key: Key, shape: Shape, dtype: np.dtype, fan_in: int, fan_out: int) -> Array:
        return random.normal(key, shape, dtype, std)
    return init


def uniform(scale: float = 0.01) -> Initializer:
    """U[-scale, scale)."""
    def init(key: Key, shape: Shape, dtype: np.dtype, fan_in: int, fan_out: int) -> Array:
        return random.uniform(key, shape, dtype, -scale, scale)
    return init


def he_normal() -> Initializer:
    """N(0, 2/fan_in) (He et al. 2015), suited to ReLU; the default for weights."""
    def init(key: Key, shape: Shape, dtype: np.dtype, fan_in: int, fan_out: int) -> Array:
        return random.normal(key, shape, dtype, np.sqrt(2.0 / fan_in))
    return init


def he_uniform() -> Initializer:
    """U[-l, l) with l = sqrt(6/fan_in)."""
    def init(key: Key, shape: Shape, dtype: np.dtype, fan_in: int, fan_out: int) -> Array:
        lim = np.sqrt(6.0 / fan_in)
        return random.uniform(key, shape, dtype, -lim, lim)
    return init


def glorot_normal() -> Initializer:
    """N(0, 2/(fan_in + fan_out)) (Glorot & Bengio 2010)."""
    def init(key: Key, shape: Shape, dtype: np.dtype, fan_in: int, fan_out: int) -> Array:
        return random.normal(key, shape, dtype, np.sqrt(2.0 / (fan_in + fan_out)))
    return init


def glorot_uniform() -> Initializer:
    """U[-l, l) with l = sqrt(6/(fan_in + fan_out))."""
    def init(key: Key, shape: Shape, dtype: np.dtype, fan_in: int, fan_out: int) -> Array:
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        return random.uniform(key, shape, dtype, -lim, lim)
    return init
