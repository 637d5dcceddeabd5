"""Activations: (N, ...) -> (N, ...), no params; elementwise except the softmaxes (last axis).

Each is PyTorch's function of the same name, with its defaults (``torch.nn.GELU``,
``SiLU``, ``ELU``, ``Softplus``...): tests/test_torch_parity.py checks outputs and
gradients against torch in float64."""

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
from ._fusion import Fusion
from ._layer import Layer, OnnxFn, onnx_op
from ._sig import Sig


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
    return elementwise("sigmoid", _sigmoid, lambda y, dy, out: np.multiply(dy, y * (1 - y), out=out),
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


def gelu(approximate: str = "none") -> Layer:
    """GELU, ``x * Phi(x)`` with Phi the standard normal CDF (``approximate="none"``,
    computed with erf by :func:`fnnet.kernels.gelu_forward`), or its tanh form
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (``"tanh"``), as ``torch.nn.GELU``."""
    if approximate == "none":
        return elementwise("gelu", kernels.gelu_forward, kernels.gelu_backward, grad_from_input=True,
                           onnx=_onnx_gelu)
    if approximate != "tanh":
        raise InvalidValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    k, c = np.sqrt(2 / np.pi), 0.044715

    def fwd(x: Array, out: Array) -> Array:
        return np.multiply(0.5 * x, 1 + np.tanh(k * (x + c * x**3)), out=out)

    def bwd(x: Array, dy: Array, out: Array) -> Array:
        t = np.tanh(k * (x + c * x**3))
        return np.multiply(dy, 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x), out=out)

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Any) -> str:
        inner = g.op("Mul", g.op("Add", x, g.op("Mul", g.floats(c), g.op("Mul", x, g.op("Mul", x, x)))), g.floats(k))
        return g.op("Mul", g.op("Mul", g.floats(0.5), x), g.op("Add", g.floats(1.0), g.op("Tanh", inner)))

    return elementwise("gelu", fwd, bwd, grad_from_input=True, onnx=onnx)


def _onnx_gelu(g: Any, params: Params, state: Any, x: str, input_shape: Any) -> str:
    """Exact GELU in opset 17 (which has no Gelu): ``0.5 x (1 + erf(x / sqrt 2))``."""
    erf = g.op("Erf", g.op("Mul", x, g.floats(np.sqrt(0.5))))
    return g.op("Mul", g.op("Mul", g.floats(0.5), x), g.op("Add", g.floats(1.0), erf))


def _sigmoid(x: Array, out: Array | None = None) -> Array:
    """1 / (1 + exp(-x)) without overflow for any x (into ``out``, if given)."""
    e = np.exp(-np.abs(x))
    return np.divide(np.where(x >= 0, 1, e), 1 + e, out=out)


def silu() -> Layer:
    """SiLU (swish), ``x * sigmoid(x)``, as ``torch.nn.SiLU``."""

    def fwd(x: Array, out: Array) -> Array:
        return np.multiply(x, _sigmoid(x), out=out)

    def bwd(x: Array, dy: Array, out: Array) -> Array:
        s = _sigmoid(x)
        return np.multiply(dy, s * (1 + x * (1 - s)), out=out)

    return elementwise("silu", fwd, bwd, grad_from_input=True,
                       onnx=lambda g, params, state, x, shape: g.op("Mul", x, g.op("Sigmoid", x)))


def elu(alpha: float = 1.0) -> Layer:
    """ELU, ``x`` for x > 0 and ``alpha * (exp(x) - 1)`` otherwise, as ``torch.nn.ELU``."""
    a = as_float(alpha)
    if not np.isfinite(a):
        raise InvalidValueError(f"elu: alpha must be finite, got {alpha!r}")

    def fwd(x: Array, out: Array) -> Array:
        np.copyto(out, np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))))
        return out

    def bwd(x: Array, dy: Array, out: Array) -> Array:
        return np.multiply(dy, np.where(x > 0, 1, a * np.exp(np.minimum(x, 0))), out=out)

    return elementwise("elu", fwd, bwd, grad_from_input=True, onnx=onnx_op("Elu", alpha=a))


def softplus(beta: float = 1.0, threshold: float = 20.0) -> Layer:
    """Softplus, ``log(1 + exp(beta x)) / beta``, and ``x`` itself where ``beta x >
    threshold`` (as ``torch.nn.Softplus``, for numerical stability)."""
    b, t = as_float(beta), as_float(threshold)
    if not (np.isfinite(b) and b > 0):
        raise InvalidValueError(f"softplus: beta must be finite and > 0, got {beta!r}")
    if not np.isfinite(t):
        raise InvalidValueError(f"softplus: threshold must be finite, got {threshold!r}")

    def fwd(x: Array, out: Array) -> Array:
        z = b * x
        np.copyto(out, np.where(z > t, x, np.logaddexp(0, z) / b))
        return out

    def bwd(x: Array, dy: Array, out: Array) -> Array:
        z = b * x
        return np.multiply(dy, np.where(z > t, 1, _sigmoid(z)), out=out)

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Any) -> str:
        z = g.op("Mul", x, g.floats(b))
        return g.op("Where", g.op("Greater", z, g.floats(t)), x, g.op("Div", g.op("Softplus", z), g.floats(b)))

    return elementwise("softplus", fwd, bwd, grad_from_input=True, onnx=onnx)
