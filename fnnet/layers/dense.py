"""Fully connected layer: ``y = x @ w + b`` with ``w`` (in, out), ``b`` (out,)."""

from __future__ import annotations

import attrs
import numpy as np

from .. import init as initializers
from .. import random
from .._errors import ShapeError
from ..tree import FrozenDict
from ._base import Layer, buffer, check_dtype, check_init_dtype, check_ndim, fmt_shape, seal


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
    if isinstance(features, bool) or not isinstance(features, (int, np.integer)) or features < 1:
        raise ValueError(f"dense: features must be a positive int, got {features!r}")
    features = int(features)
    w_init = w_init or initializers.he_normal()
    name = "dense"

    def init(key, input_shape, *, dtype=np.float32):
        input_shape = tuple(input_shape)
        check_ndim(name, input_shape, 1, "a flat")
        dtype = check_init_dtype(name, dtype)
        kw, kb = random.split(key)
        fan_in = input_shape[0]
        w = np.asarray(w_init(kw, (fan_in, features), dtype, fan_in, features), dtype)
        b = np.asarray(b_init(kb, (features,), dtype, fan_in, features), dtype)
        return seal(w=w, b=b), (features,)

    def check(params, input_shape, dtype):
        check_dtype(name, params, dtype)
        w = params["w"]
        if tuple(input_shape) != (w.shape[0],):
            raise ShapeError(f"{name}: expected input of shape {fmt_shape(w.shape[:1])}, got {fmt_shape(input_shape)}")
        return (w.shape[1],)

    def forward_into(x, w, b, y):
        np.matmul(x, w, out=y)
        y += b
        return y

    def backward_into(x, w, dy, dw, db, dx):
        np.matmul(x.T, dy, out=dw)
        np.add.reduce(dy, axis=0, out=db)
        return None if dx is None else np.matmul(dy, w.T, out=dx)

    def apply(params, x, ws=None):
        w, b = params["w"], params["b"]
        y = forward_into(x, w, b, buffer(ws, "y", (x.shape[0], w.shape[1]), x.dtype))
        return y, (x, w)

    def backward(cache, dy, ws=None):
        x, w = cache
        dw, db = buffer(ws, "dw", w.shape, w.dtype), buffer(ws, "db", w.shape[1:], w.dtype)
        dx = backward_into(x, w, dy, dw, db, buffer(ws, "dx", x.shape, x.dtype))
        return FrozenDict(w=dw, b=db), dx

    def bind(params, grads, x_shape, dtype, need_dx):
        dw, db = grads["w"], grads["b"]
        y = np.empty((x_shape[0], dw.shape[1]), dtype)
        dx = np.empty(x_shape, dtype) if need_dx else None
        saved = [None]

        def forward(x):
            saved[0] = x
            return forward_into(x, params["w"], params["b"], y)

        def backward(dy):
            return backward_into(saved[0], params["w"], dy, dw, db, dx)

        return forward, backward

    return attrs.evolve(Layer.stateless(name, init, apply, backward, check), bind=bind)
