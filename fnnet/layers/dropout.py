"""Dropout: random in train mode (explicit key per call), the identity in eval mode."""

from __future__ import annotations

import numpy as np

from .. import random
from ._base import NO_PARAMS, Layer, buffer, check_dtype


def dropout(rate: float) -> Layer:
    """Inverted dropout; ``rate`` is the probability of *dropping* an element.

    Train mode (``train=True``, needs ``key``): each element is zeroed with probability
    ``rate`` and the survivors are scaled by ``1 / (1 - rate)``, so the expectation is
    unchanged. Eval mode: the identity (a read-only view of the input). Any shape.
    """
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout: rate (the probability of dropping) must be in [0, 1), got {rate}")
    name = "dropout"
    keep_scale = 1.0 / (1.0 - rate)

    def init(key, input_shape, *, dtype=np.float32):
        return NO_PARAMS, tuple(input_shape)

    def check(params, input_shape, dtype):
        check_dtype(name, params, dtype)
        return tuple(input_shape)

    def apply(params, state, x, ws=None, key=None, train=True):
        if not train or rate == 0.0:
            y = x.view()
            y.flags.writeable = False
            return y, None, state
        keep = random.uniform(key, x.shape, np.float64) >= rate
        scale = np.multiply(keep, keep_scale, out=buffer(ws, "scale", x.shape, x.dtype))
        return np.multiply(x, scale, out=buffer(ws, "y", x.shape, x.dtype)), scale, state

    def backward(scale, dy, ws=None):
        if scale is None:
            return NO_PARAMS, dy
        return NO_PARAMS, np.multiply(dy, scale, out=buffer(ws, "dx", dy.shape, dy.dtype))

    return Layer(name, init, apply, backward, check, stochastic=rate > 0)
