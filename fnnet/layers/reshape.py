"""Shape-only layers. Their outputs are read-only views of their inputs (no copy)."""

from __future__ import annotations

import math

import numpy as np

from ._base import NO_PARAMS, Layer, check_dtype


def flatten() -> Layer:
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""
    name = "flatten"

    def init(key, input_shape, *, dtype=np.float32):
        return NO_PARAMS, (math.prod(input_shape),)

    def check(params, input_shape, dtype):
        check_dtype(name, params, dtype)
        return (math.prod(input_shape),)

    def apply(params, x, ws=None):
        y = x.reshape(x.shape[0], -1)
        if y.base is not None:
            y.flags.writeable = False
        return y, x.shape

    def backward(x_shape, dy, ws=None):
        return NO_PARAMS, dy.reshape(x_shape)

    return Layer(name, init, apply, backward, check)
