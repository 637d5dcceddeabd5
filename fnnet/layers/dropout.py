"""Dropout: random in train mode (explicit key per call), the identity in eval mode."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import random
from .._errors import check_real
from ..random import Key
from ..tree import EMPTY
from ..typing import Array, Params
from ._checks import without_params
from ._layer import Layer, onnx_op
from ._sig import Sig


def dropout(rate: float) -> Layer:
    """Inverted dropout; ``rate`` is the probability of *dropping* an element.

    Train mode (``train=True``, needs ``key``): each element is zeroed with probability
    ``rate`` and the survivors are scaled by ``1 / (1 - rate)``, so the expectation is
    unchanged. Eval mode: the identity (a read-only view of the input). Any shape.
    """
    rate = check_real("dropout", "rate (the probability of dropping)", rate, 0.0, 1.0, high_open=True)
    name = "dropout"
    keep_scale = 1.0 / (1.0 - rate)

    init, check = without_params(name)

    def buffers(params: Params, sig: Sig) -> Any:
        if not sig.train or rate == 0.0:
            return None
        return SimpleNamespace(scale=sig.empty(), y=sig.empty(), dx=sig.dx_buffer())

    def forward(params: Params, x: Array, buf: Any, key: Key | None = None) -> tuple[Array, Any]:
        if buf is None:  # eval mode, or nothing to drop
            y = x.view()
            y.flags.writeable = False
            return y, None
        assert key is not None  # the runner refuses a missing key in train mode (and buf is None otherwise)
        keep = random.uniform(key, x.shape, np.float64) >= rate
        scale = np.multiply(keep, keep_scale, out=buf.scale)
        return np.multiply(x, scale, out=buf.y), buf

    def backward(buf: Any, dy: Array) -> tuple[Params, Array | None]:
        if buf is None:
            return EMPTY, dy
        return EMPTY, None if buf.dx is None else np.multiply(dy, buf.scale, out=buf.dx)

    return Layer(name, init, forward, backward, check, buffers=buffers, stochastic=rate > 0,
                 onnx=onnx_op("Identity"))  # (its eval form)
