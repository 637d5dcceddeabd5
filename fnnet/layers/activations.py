"""Activations: (N, ...) -> (N, ...), no params; elementwise except the softmaxes (last axis)."""

from __future__ import annotations

import attrs
import numpy as np

from .. import kernels
from ._base import NO_PARAMS, Layer, buffer, check_dtype


def _elementwise(name: str, fwd, bwd) -> Layer:
    """A Layer from ``fwd(x, out) -> (y, saved)`` and ``bwd(saved, dy, out) -> dx``."""

    def init(key, input_shape, *, dtype=np.float32):
        return NO_PARAMS, tuple(input_shape)

    def check(params, input_shape, dtype):
        check_dtype(name, params, dtype)
        return tuple(input_shape)

    def apply(params, x, ws=None):
        return fwd(x, buffer(ws, "y", x.shape, x.dtype))

    def backward(saved, dy, ws=None):
        return NO_PARAMS, bwd(saved, dy, buffer(ws, "dx", dy.shape, dy.dtype))

    def bind(params, grads, x_shape, dtype, need_dx):
        y, dx, saved = np.empty(x_shape, dtype), np.empty(x_shape, dtype), [None]

        def forward(x):
            out, saved[0] = fwd(x, y)
            return out

        def backward(dy):
            return bwd(saved[0], dy, dx) if need_dx else None

        return forward, backward

    return attrs.evolve(Layer.stateless(name, init, apply, backward, check), bind=bind)


def relu() -> Layer:
    """max(x, 0); the gradient at 0 is 0."""

    def fwd(x, out):
        y = kernels.relu_forward(x, out)
        return y, y

    def bwd(y, dy, out):
        return kernels.relu_backward(y, dy, out)

    return _elementwise("relu", fwd, bwd)


def leaky_relu(negative_slope: float = 0.01) -> Layer:
    """x for x > 0, ``negative_slope * x`` otherwise."""
    a = float(negative_slope)
    if not np.isfinite(a):
        raise ValueError(f"leaky_relu: negative_slope must be finite, got {negative_slope!r}")

    def fwd(x, out):
        return np.where(x > 0, x, a * x), x

    def bwd(x, dy, out):
        return np.where(x > 0, dy, a * dy)

    return _elementwise("leaky_relu", fwd, bwd)


def tanh() -> Layer:
    """Hyperbolic tangent."""

    def fwd(x, out):
        y = np.tanh(x, out=out)
        return y, y

    def bwd(y, dy, out):
        np.multiply(y, y, out=out)
        np.subtract(1, out, out=out)
        return np.multiply(dy, out, out=out)

    return _elementwise("tanh", fwd, bwd)


def sigmoid() -> Layer:
    """1 / (1 + exp(-x)), computed without overflow for any x."""

    def fwd(x, out):
        e = np.exp(-np.abs(x))
        y = np.divide(np.where(x >= 0, 1, e), 1 + e, out=out)
        return y, y

    def bwd(y, dy, out):
        return np.multiply(dy, y * (1 - y), out=out)

    return _elementwise("sigmoid", fwd, bwd)


def softmax() -> Layer:
    """Softmax over the last axis (stable: computed from ``x - max``)."""

    def fwd(x, out):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        y = np.divide(e, e.sum(axis=-1, keepdims=True), out=out)
        return y, y

    def bwd(y, dy, out):
        return np.multiply(y, dy - np.sum(dy * y, axis=-1, keepdims=True), out=out)

    return _elementwise("softmax", fwd, bwd)


def log_softmax() -> Layer:
    """Log of the softmax over the last axis, ``x - logsumexp(x)`` (stable)."""

    def fwd(x, out):
        z = x - x.max(axis=-1, keepdims=True)
        y = np.subtract(z, np.log(np.exp(z).sum(axis=-1, keepdims=True)), out=out)
        return y, y

    def bwd(y, dy, out):
        return np.subtract(dy, np.exp(y) * np.sum(dy, axis=-1, keepdims=True), out=out)

    return _elementwise("log_softmax", fwd, bwd)
