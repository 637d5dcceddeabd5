"""2-D pooling over (N, C, H, W) without padding; a partial window at the edge is dropped.

Max pooling's tie rule: the first maximal element of a window in row-major order gets
the whole gradient (a NaN counts as the largest); see fnnet/kernels/pool.py.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .._errors import ShapeError
from ._base import NO_PARAMS, Layer, buffer, check_dtype, check_ndim, fmt_shape, pair


def _pool(name: str, window: tuple[int, int], stride: tuple[int, int], fwd, bwd) -> Layer:
    """A pooling Layer from ``fwd(x, out_shape, ws, train) -> (y, cache)`` (the cache may
    live in ``ws``) and ``bwd(cache, dy, dx) -> dx``."""
    (kh, kw), (sh, sw) = window, stride

    def out_shape(input_shape):
        check_ndim(name, tuple(input_shape), 3, "a (C, H, W)")
        c, h, w = input_shape
        if h < kh or w < kw:
            raise ShapeError(f"{name}: input {fmt_shape(input_shape)} is smaller than the {kh}x{kw} window")
        return (c, (h - kh) // sh + 1, (w - kw) // sw + 1)

    def init(key, input_shape, *, dtype=np.float32):
        return NO_PARAMS, out_shape(tuple(input_shape))

    def check(params, input_shape, dtype):
        check_dtype(name, params, dtype)
        return out_shape(tuple(input_shape))

    def apply(params, state, x, ws=None, key=None, train=True):
        y, cache = fwd(x, (x.shape[0], *out_shape(x.shape[1:])), ws, train)
        return y, (cache, x.shape), state

    def backward(cache, dy, ws=None):
        cache, x_shape = cache
        return NO_PARAMS, bwd(cache, dy, buffer(ws, "dx", x_shape, dy.dtype))

    def bind(params, grads, x_shape, dtype, need_dx):
        shape, ws, dx, saved = (x_shape[0], *out_shape(x_shape[1:])), {}, np.empty(x_shape, dtype), [None]

        def forward(x):
            y, saved[0] = fwd(x, shape, ws, True)
            return y

        def backward(dy):
            return bwd(saved[0], dy, dx) if need_dx else None

        return forward, backward

    return Layer(name, init, apply, backward, check, bind=bind)


def max_pool2d(window: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None) -> Layer:
    """Max pooling; ``stride`` defaults to ``window``. (N, C, H, W) -> (N, C, Ho, Wo)."""
    kh, kw = pair(window, "window", "max_pool2d")
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride", "max_pool2d")

    def fwd(x, shape, ws, train):
        y = buffer(ws, "y", shape, x.dtype)
        if not train:  # inference: maxima alone (3x faster); positions found if backward asks
            return kernels.max_pool_values(x, kh, kw, sh, sw, y), x
        idx = buffer(ws, "idx", shape, np.dtype(np.int64))
        kernels.max_pool_forward(x, kh, kw, sh, sw, y, idx)
        return y, idx

    def bwd(idx, dy, dx):
        if idx.dtype != np.int64:  # eval-mode cache: the input; find the winners now
            x, idx = idx, np.empty(dy.shape, np.int64)
            kernels.max_pool_forward(x, kh, kw, sh, sw, np.empty(dy.shape, x.dtype), idx)
        return kernels.max_pool_backward(dy, idx, dx)

    return _pool("max_pool2d", (kh, kw), (sh, sw), fwd, bwd)


def avg_pool2d(window: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None) -> Layer:
    """Average pooling; ``stride`` defaults to ``window``. (N, C, H, W) -> (N, C, Ho, Wo)."""
    kh, kw = pair(window, "window", "avg_pool2d")
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride", "avg_pool2d")

    def fwd(x, shape, ws, train):
        y = buffer(ws, "y", shape, x.dtype)
        kernels.avg_pool_forward(x, kh, kw, sh, sw, y)
        return y, None

    def bwd(_, dy, dx):
        return kernels.avg_pool_backward(dy, kh, kw, sh, sw, dx)

    return _pool("avg_pool2d", (kh, kw), (sh, sw), fwd, bwd)


def global_avg_pool2d() -> Layer:
    """The mean over all of H and W: (N, C, H, W) -> (N, C)."""
    name = "global_avg_pool2d"

    def init(key, input_shape, *, dtype=np.float32):
        check_ndim(name, tuple(input_shape), 3, "a (C, H, W)")
        return NO_PARAMS, tuple(input_shape)[:1]

    def check(params, input_shape, dtype):
        check_dtype(name, params, dtype)
        check_ndim(name, tuple(input_shape), 3, "a (C, H, W)")
        return tuple(input_shape)[:1]

    def apply(params, x, ws=None):
        y = np.mean(x, axis=(2, 3), out=buffer(ws, "y", x.shape[:2], x.dtype))
        return y, x.shape

    def backward(x_shape, dy, ws=None):
        dx = buffer(ws, "dx", x_shape, dy.dtype)
        np.multiply(dy[:, :, None, None], 1.0 / (x_shape[2] * x_shape[3]), out=dx)
        return NO_PARAMS, dx

    return Layer.stateless(name, init, apply, backward, check)
