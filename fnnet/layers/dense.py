"""Fully connected layer: ``y = x @ w + b`` with ``w`` (in, out), ``b`` (out,)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import init as initializers
from .. import random
from .._errors import ShapeError
from ..random import Key
from ..typing import Array, Params, Shape
from ._checks import check_ndim, check_params, fmt_shape, initializers_of, positive_int, seal
from ._fusion import Fusion, with_bias
from ._layer import Layer
from ._sig import Sig


class _Buffers(NamedTuple):
    """What a dense layer writes into for one input signature."""

    y: np.ndarray  # (N, features)
    dx: Any  # (N, in), or None when dx is not needed
    grads: Any
    dw: Any  # grads["w"] and grads["b"] (None without gradients)
    db: Any


def dense(
    features: int,
    *,
    w_init: initializers.Initializer | None = None,
    b_init: initializers.Initializer = initializers.zeros,
) -> Layer:
    """A dense layer with ``features`` outputs.

    Input (N, in), output (N, features). Params ``{"w": (in, features), "b": (features,)}``;
    defaults: ``w`` he_normal, ``b`` zeros.
    """
    name = "dense"
    features = positive_int(features, "features", name)
    w_init, b_init = initializers_of(name, w_init, b_init, initializers.he_normal(), initializers.zeros)

    def init(key: Key, input_shape: Shape, dtype: np.dtype) -> tuple[Params, Shape]:
        check_ndim(name, input_shape, 1, "a flat")
        k_w, k_b = random.split(key)
        fan_in = input_shape[0]
        w = np.asarray(w_init(k_w, (fan_in, features), dtype, fan_in, features), dtype)
        b = np.asarray(b_init(k_b, (features,), dtype, fan_in, features), dtype)
        return seal(w=w, b=b), (features,)

    def check(params: Params, input_shape: Shape, dtype: np.dtype) -> Shape:
        check_params(name, params, dtype, w=(None, features), b=(features,))
        n_in = params["w"].shape[0]
        if tuple(input_shape) != (n_in,):
            raise ShapeError(f"{name}: expected input of shape {fmt_shape((n_in,))}, got {fmt_shape(input_shape)}")
        return (features,)

    def buffers(params: Params, sig: Sig) -> Any:
        grads = sig.grads or {}
        y = sig.empty((sig.x_shape[0], features))
        return _Buffers(y, sig.dx_buffer(), sig.grads, grads.get("w"), grads.get("b"))

    def linear(params: Params, x: Array, buf: Any) -> tuple[Array, Any]:  # the forward pass before the bias
        w = params["w"]
        return np.matmul(x, w, out=buf.y), (x, w, buf)

    def backward(cache: Any, dy: Array) -> tuple[Params, Array | None]:
        x, w, buf = cache
        np.matmul(x.T, dy, out=buf.dw)
        np.add.reduce(dy, axis=0, out=buf.db)
        return buf.grads, None if buf.dx is None else np.matmul(dy, w.T, out=buf.dx)

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Shape) -> str:
        return g.op("Gemm", x, g.param("w", params["w"]), g.param("b", params["b"]))

    return Layer(name, init, with_bias(linear), backward, check, buffers=buffers,
                 fusion=Fusion("affine", head=linear), onnx=onnx)
