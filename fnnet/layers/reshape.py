"""Shape-only layers. Their outputs are read-only views of their inputs (no copy)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import InvalidValueError, ShapeError
from ..tree import EMPTY
from ..typing import Array, Params, Shape
from ._checks import fmt_shape, without_params
from ._layer import Layer
from ._sig import Sig


def _view_layer(name: str, out_shape: Callable[[tuple], tuple]) -> Layer:
    """A layer without params whose output is ``x`` viewed with per-sample ``out_shape``
    (in ONNX: a Reshape to it, the batch axis kept)."""

    init, check = without_params(name, out_shape)

    def buffers(params: Params, sig: Sig) -> Any:  # nothing to allocate: the output shape, found once
        return (sig.x_shape[0], *out_shape(sig.x_shape[1:]))

    def forward(params: Params, x: Array, y_shape: Shape) -> tuple[Array, Shape]:
        y = x.reshape(y_shape)
        if y.base is not None:  # a view must not write into x
            y.setflags(write=False)
        return y, x.shape

    def backward(x_shape: Shape, dy: Array) -> tuple[Params, Array]:
        return EMPTY, dy.reshape(x_shape)

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Shape) -> str:
        return g.op("Reshape", x, g.const(np.array([-1, *out_shape(input_shape)], np.int64)))

    return Layer(name, init, forward, backward, check, buffers=buffers, onnx=onnx)


def flatten() -> Layer:
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""
    return _view_layer("flatten", lambda shape: (math.prod(shape),))


def identity() -> Layer:
    """y = x (a read-only view)."""
    return _view_layer("identity", lambda shape: shape)


def reshape(shape: tuple[int, ...]) -> Layer:
    """(N, *in) -> (N, *shape) with the same number of elements per sample; one entry of
    ``shape`` may be -1 (inferred)."""
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
        raise InvalidValueError(f"reshape: shape must be a tuple of ints, got {shape!r}")
    shape = tuple(int(d) for d in shape)
    if shape.count(-1) > 1 or any(d < 1 and d != -1 for d in shape):
        raise InvalidValueError(f"reshape: shape must hold positive sizes and at most one -1, got {shape}")

    def out_shape(in_shape: Shape) -> Shape:
        n = math.prod(in_shape)
        known = math.prod(d for d in shape if d != -1)
        target = tuple(n // known if d == -1 else d for d in shape)
        if math.prod(target) != n:
            raise ShapeError(f"reshape: cannot view input {fmt_shape(in_shape)} ({n} values) as {fmt_shape(shape)}")
        return target

    return _view_layer("reshape", out_shape)
