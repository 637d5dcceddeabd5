"""Shape-only layers. Their outputs are read-only views of their inputs (no copy)."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import numpy as np

from .._errors import ShapeError
from ._base import NO_PARAMS, Layer, check_dtype, fmt_shape


def _read_only_view(x: np.ndarray, shape: tuple) -> np.ndarray:
    """``x`` reshaped; a view is made read-only so that it cannot write into ``x``."""
    y = x.reshape(shape)
    if y.base is not None:
        y.setflags(write=False)
    return y


def _view_layer(name: str, out_shape: Callable[[tuple], tuple]) -> Layer:
    """A params-free layer whose output is ``x`` viewed with per-sample ``out_shape``."""

    def init(key, input_shape, *, dtype=np.float32):
        return NO_PARAMS, out_shape(tuple(input_shape))

    def check(params, input_shape, dtype):
        check_dtype(name, params, dtype)
        return out_shape(tuple(input_shape))

    def apply(params, x, ws=None):
        return _read_only_view(x, (x.shape[0], *out_shape(x.shape[1:]))), x.shape

    def backward(x_shape, dy, ws=None):
        return NO_PARAMS, dy.reshape(x_shape)

    def bind(params, grads, x_shape, dtype, need_dx):
        y_shape = (x_shape[0], *out_shape(tuple(x_shape[1:])))

        def forward(x):
            return _read_only_view(x, y_shape)

        def backward(dy):
            return dy.reshape(x_shape) if need_dx else None

        return forward, backward

    return attrs.evolve(Layer.stateless(name, init, apply, backward, check), bind=bind)


def flatten() -> Layer:
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""
    return _view_layer("flatten", lambda shape: (math.prod(shape),))


def identity() -> Layer:
    """y = x (a read-only view)."""
    return _view_layer("identity", lambda shape: shape)


def reshape(shape: tuple[int, ...]) -> Layer:
    """(N, *in) -> (N, *shape) with the same number of elements per sample; one entry of
    ``shape`` may be -1 (inferred)."""
    shape = tuple(int(d) for d in shape)
    if shape.count(-1) > 1 or any(d < 1 and d != -1 for d in shape):
        raise ValueError(f"reshape: shape must hold positive sizes and at most one -1, got {shape}")

    def out_shape(in_shape):
        n = math.prod(in_shape)
        known = math.prod(d for d in shape if d != -1)
        target = tuple(n // known if d == -1 else d for d in shape)
        if math.prod(target) != n:
            raise ShapeError(f"reshape: cannot view input {fmt_shape(in_shape)} ({n} values) as {fmt_shape(shape)}")
        return target

    return _view_layer("reshape", out_shape)
