"""2-D convolution (cross-correlation, as in PyTorch), NCHW, weights (K, C, kh, kw).

Forward: the compiled im2col kernel lays the receptive fields out as a matrix
(N, C*kh*kw, Ho*Wo) and BLAS contracts it with the weights. Backward reuses those
cached columns for dw; dx is a BLAS product followed by the col2im kernel.
"""

from __future__ import annotations

import attrs
import numpy as np

from .. import init as initializers
from .. import kernels, random
from .._errors import ShapeError
from ..tree import FrozenDict
from ._base import Layer, buffer, check_dtype, check_init_dtype, check_ndim, fmt_shape, pair, seal


def _out_size(size: int, k: int, s: int, d: int, p0: int, p1: int) -> int:
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's "same": output ceil(size/s); the odd pixel of padding goes last."""
    total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def conv2d(
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = "valid",
    dilation: int | tuple[int, int] = 1,
    *,
    w_init: initializers.Initializer | None = None,
    b_init: initializers.Initializer = initializers.zeros,
) -> Layer:
    """A conv layer with ``out_channels`` filters of ``kernel_size``.

    Input (N, C, H, W), output (N, K, Ho, Wo). ``padding`` is an int, a pair (ph, pw)
    of zero padding on both sides, ``"valid"`` (none) or ``"same"`` (output
    ceil(H/stride), TensorFlow's split). Params ``{"w": (K, C, kh, kw), "b": (K,)}``;
    defaults: ``w`` he_normal (fan_in C*kh*kw), ``b`` zeros.
    """
    name = "conv2d"
    if isinstance(out_channels, bool) or not isinstance(out_channels, (int, np.integer)) or out_channels < 1:
        raise ValueError(f"{name}: out_channels must be a positive int, got {out_channels!r}")
    K = int(out_channels)
    kh, kw = pair(kernel_size, "kernel_size", name)
    sh, sw = pair(stride, "stride", name)
    dh, dw = pair(dilation, "dilation", name)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{name}: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
    else:
        ph, pw = pair(padding, "padding", name, minimum=0)
    w_init = w_init or initializers.he_normal()

    def pads(h: int, w: int) -> tuple[int, int, int, int]:
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            return (*_same_pad(h, kh, sh, dh), *_same_pad(w, kw, sw, dw))
        return ph, ph, pw, pw

    cache: dict = {}  # input shape -> geometry: the hot path computes it once per shape

    def geometry(input_shape):
        g = cache.get(input_shape)
        if g is None:
            g = cache[input_shape] = _geometry(input_shape)
        return g

    def _geometry(input_shape):
        c, h, w = input_shape
        pt, pb, pl, pr = pads(h, w)
        ho, wo = _out_size(h, kh, sh, dh, pt, pb), _out_size(w, kw, sw, dw, pl, pr)
        if ho < 1 or wo < 1:
            raise ShapeError(
                f"{name}: input {fmt_shape(input_shape)} is smaller than the {kh}x{kw} kernel "
                f"(dilation {dh}x{dw}, padding {(pt, pb, pl, pr)})"
            )
        return (pt, pb, pl, pr), (K, ho, wo)

    def init(key, input_shape, *, dtype=np.float32):
        input_shape = tuple(input_shape)
        check_ndim(name, input_shape, 3, "a (C, H, W)")
        dtype = check_init_dtype(name, dtype)
        _, out_shape = geometry(input_shape)
        c = input_shape[0]
        fan_in, fan_out = c * kh * kw, K * kh * kw
        k_w, k_b = random.split(key)
        w = np.asarray(w_init(k_w, (K, c, kh, kw), dtype, fan_in, fan_out), dtype)
        b = np.asarray(b_init(k_b, (K,), dtype, fan_in, fan_out), dtype)
        return seal(w=w, b=b), out_shape

    def check(params, input_shape, dtype):
        check_dtype(name, params, dtype)
        check_ndim(name, tuple(input_shape), 3, "a (C, H, W)")
        c = params["w"].shape[1]
        if input_shape[0] != c:
            raise ShapeError(
                f"{name}: expected input of shape {fmt_shape((c, 'H', 'W'))} ({c} channel(s)), "
                f"got {fmt_shape(input_shape)}"
            )
        return geometry(tuple(input_shape))[1]

    def forward_into(x, w, b, pad, cols, y):
        """y (N, K, Ho*Wo) = w @ im2col(x) + b, via ``cols`` (N, C*kh*kw, Ho*Wo)."""
        kernels.im2col(x, kh, kw, sh, sw, dh, dw, *pad, cols)
        np.matmul(w.reshape(K, -1), cols, out=y)
        y += b[:, None]
        return y

    def grads_into(dy3, cols, dw_n, dw2, db):
        """dw2 (K, C*kh*kw) and db (K,) from dy3 (N, K, Ho*Wo); dw_n is scratch."""
        np.add.reduce(dy3, axis=(0, 2), out=db)
        np.matmul(dy3, cols.transpose(0, 2, 1), out=dw_n)
        np.add.reduce(dw_n, axis=0, out=dw2)

    def dx_into(w, dy3, pad, dcols, dx):
        if K == 1:  # an outer product per sample: a broadcast multiply beats matmul's k=1 path
            np.multiply(w.reshape(1, -1, 1), dy3, out=dcols)
        else:
            np.matmul(w.reshape(K, -1).T, dy3, out=dcols)
        return kernels.col2im(dcols, kh, kw, sh, sw, dh, dw, *pad, dx)

    def apply(params, x, ws=None):
        w, b = params["w"], params["b"]
        n, c, h, wd = x.shape
        pad, (_, ho, wo) = geometry(x.shape[1:])
        cols = buffer(ws, "cols", (n, c * kh * kw, ho * wo), x.dtype)
        y = forward_into(x, w, b, pad, cols, buffer(ws, "y", (n, K, ho * wo), x.dtype))
        return y.reshape(n, K, ho, wo), (cols, w, x.shape, pad)

    def backward(cache, dy, ws=None, need_dx=True):
        cols, w, x_shape, pad = cache
        n = x_shape[0]
        dy3 = np.ascontiguousarray(dy).reshape(n, K, -1)
        db = buffer(ws, "db", (K,), w.dtype)
        dw2 = buffer(ws, "dw", (K, cols.shape[1]), w.dtype)
        grads_into(dy3, cols, buffer(ws, "dw_n", (n, K, cols.shape[1]), w.dtype), dw2, db)
        grads = FrozenDict(w=dw2.reshape(w.shape), b=db)
        if not need_dx:
            return grads, None
        dx = dx_into(w, dy3, pad, buffer(ws, "dcols", cols.shape, w.dtype), buffer(ws, "dx", x_shape, w.dtype))
        return grads, dx

    def grad_params(cache, dy, ws=None):
        return backward(cache, dy, ws, need_dx=False)[0]

    def bind(params, grads, x_shape, dtype, need_dx):
        db = grads["b"]
        n, c = x_shape[:2]
        pad, (_, ho, wo) = geometry(tuple(x_shape[1:]))
        cols = np.empty((n, c * kh * kw, ho * wo), dtype)
        y = np.empty((n, K, ho * wo), dtype)
        dw_n = np.empty((n, K, c * kh * kw), dtype)
        dw2 = grads["w"].reshape(K, -1)  # a view: the gradient lands in place
        dcols, dx = (np.empty_like(cols), np.empty(x_shape, dtype)) if need_dx else (None, None)

        def forward(x):
            return forward_into(x, params["w"], params["b"], pad, cols, y).reshape(n, K, ho, wo)

        def backward(dy):
            dy3 = np.ascontiguousarray(dy).reshape(n, K, -1)
            grads_into(dy3, cols, dw_n, dw2, db)
            return None if dx is None else dx_into(params["w"], dy3, pad, dcols, dx)

        return forward, backward

    layer = Layer.stateless(name, init, apply, backward, check)
    return attrs.evolve(layer, grad_params=grad_params, bind=bind)
