"""Activations: (N, ...) -> (N, ...), no params; elementwise except the softmaxes (last axis)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from .. import kernels
from .._errors import InvalidValueError, as_float
from ..tree import EMPTY
from ..typing import Array, Params
from ._checks import without_params
from ._layer import Fusion, Layer, OnnxFn, Sig, onnx_op


def elementwise(
    name: str,
    fwd: Callable[[np.ndarray, np.ndarray], np.ndarray],
    bwd: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    *,
    grad_from_input: bool = False,
    onnx: OnnxFn | None = None,
) -> Layer:
    """A layer without params that keeps the shape of its input, as stax's ``elementwise``.

    ``fwd(x, out) -> y`` and ``bwd(y, dy, out) -> dx``, or ``bwd(x, dy, out)`` with
    ``grad_from_input=True``: ``out`` is a buffer of the input's shape and dtype that the
    function may write into and return (jit reuses it from step to step). ``onnx``: its
    ONNX mapping, if it is to leave fnnet (:class:`~fnnet.layers.OnnxFn`; one operator:
    ``onnx_op("Elu", alpha=1.0)``).
    """

    init, check = without_params(name)

    def buffers(params: Params, sig: Sig) -> Any:
        return sig.empty(), sig.dx_buffer()

    def forward(params: Params, x: Array, buf: Any) -> tuple[Array, Any]:
        y = fwd(x, buf[0])
        return y, (x if grad_from_input else y, buf[1])

    def backward(cache: Any, dy: Array) -> tuple[Params, Array | None]:
        saved, dx = cache
        return EMPTY, None if dx is None else bwd(saved, dy, dx)

    return Layer(name, init, forward, backward, check, buffers=buffers, onnx=onnx)


def relu() -> Layer:
    """max(x, 0); the gradient at 0 is 0."""
    return attrs.evolve(elementwise("relu", kernels.relu_forward, kernels.relu_backward, onnx=onnx_op("Relu")),
                        fusion=Fusion("relu"))


def leaky_relu(negative_slope: float = 0.01) -> Layer:
    """x for x > 0, ``negative_slope * x`` otherwise."""
    a = as_float(negative_slope)
    if not np.isfinite(a):
        raise InvalidValueError(f"leaky_relu: negative_slope must be finite, got {negative_slope!r}")
    return elementwise(
        "leaky_relu", lambda x, out: np.where(x > 0, x, a * x), lambda x, dy, out: np.where(x > 0, dy, a * dy),
        grad_from_input=True, onnx=onnx_op("LeakyRelu", alpha=a),
    )


def tanh() -> Layer:
    """Hyperbolic tangent."""

    def bwd(y: Array, dy: Array, out: Array) -> Array:
        np.multiply(y, y, out=out)
        np.subtract(1, out, out=out)
        return np.multiply(dy, out, out=out)

    return elementwise("tanh", lambda x, out: np.tanh(x, out=out), bwd, onnx=onnx_op("Tanh"))


def sigmoid() -> Layer:
    """1 / (1 + exp(-x)), computed without overflow for any x."""

    def fwd(x: Array, out: Array) -> Array:
        e = np.exp(-np.abs(x))
        return np.divide(np.where(x >= 0, 1, e), 1 + e, out=out)

    return elementwise("sigmoid", fwd, lambda y, dy, out: np.multiply(dy, y * (1 - y), out=out),
                       onnx=onnx_op("Sigmoid"))


def softmax() -> Layer:
    """Softmax over the last axis (stable: computed from ``x - max``)."""

    def fwd(x: Array, out: Array) -> Array:
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return np.divide(e, e.sum(axis=-1, keepdims=True), out=out)

    def bwd(y: Array, dy: Array, out: Array) -> Array:
        return np.multiply(y, dy - np.sum(dy * y, axis=-1, keepdims=True), out=out)

    return elementwise("softmax", fwd, bwd, onnx=onnx_op("Softmax", axis=-1))


def log_softmax() -> Layer:
    """Log of the softmax over the last axis, ``x - logsumexp(x)`` (stable)."""

    def fwd(x: Array, out: Array) -> Array:
        z = x - x.max(axis=-1, keepdims=True)
        return np.subtract(z, np.log(np.exp(z).sum(axis=-1, keepdims=True)), out=out)

    def bwd(y: Array, dy: Array, out: Array) -> Array:
        return np.subtract(dy, np.exp(y) * np.sum(dy, axis=-1, keepdims=True), out=out)

    return elementwise("log_softmax", fwd, bwd, onnx=onnx_op("LogSoftmax", axis=-1))
