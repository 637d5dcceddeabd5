"""2-D transposed convolution (the adjoint of conv2d, as PyTorch's ``ConvTranspose2d``),
NCHW, weights (C, K, kh, kw): a product per sample, then the col2im kernel; backward is
im2col of the output gradient and two products."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import init as initializers
from .. import kernels, random
from .._errors import InvalidValueError, ShapeError
from ..random import Key
from ..typing import Array, Params, Shape
from ._checks import check_ndim, check_params, fmt_shape, initializers_of, pair, positive_int, seal
from ._layer import Layer
from ._sig import Sig


class _TransposeBuffers(NamedTuple):
    """What a conv_transpose2d layer writes into for one input signature."""

    cols: np.ndarray  # (N, K*kh*kw, H, W): the output's patches, col2im's input
    cols3: np.ndarray  # the same memory as (N, K*kh*kw, H*W)
    y: np.ndarray  # (N, K, Ho, Wo)
    dx: Any  # (N, C, H, W), or None when dx is not needed
    grads: Any
    dw_n: np.ndarray | None  # (N, C, K*kh*kw): each sample's weight gradient (None: no backward)
    dw: Any  # grads["w"] seen as (C, K*kh*kw), or None
    db: Any  # grads["b"], or None


def conv_transpose2d(
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    *,
    w_init: initializers.Initializer | None = None,
    b_init: initializers.Initializer = initializers.zeros,
) -> Layer:
    """The transposed convolution (the gradient of ``conv2d`` with respect to its input),
    as PyTorch's ``ConvTranspose2d``.

    Input (N, C, H, W), output (N, K, Ho, Wo) with ``Ho = (H - 1) * stride - 2 * padding +
    dilation * (kh - 1) + output_padding + 1`` (and so for W): ``padding`` removes rows and
    columns on both sides, ``output_padding`` (smaller than ``stride``) adds them at the
    bottom and right. Params ``{"w": (C, K, kh, kw), "b": (K,)}`` (PyTorch's layout);
    defaults: ``w`` he_normal (fan_in C*kh*kw), ``b`` zeros. Forward is a BLAS product
    and the col2im kernel; backward the im2col kernel and BLAS products.
    """
    name = "conv_transpose2d"
    K = positive_int(out_channels, "out_channels", name)
    kh, kw = pair(kernel_size, "kernel_size", name)
    sh, sw = pair(stride, "stride", name)
    ph, pw = pair(padding, "padding", name, minimum=0)
    oph, opw = pair(output_padding, "output_padding", name, minimum=0)
    dil_h, dil_w = pair(dilation, "dilation", name)
    if oph >= sh or opw >= sw:
        raise InvalidValueError(f"{name}: output_padding {(oph, opw)} must be smaller than the stride {(sh, sw)}")
    w_init, b_init = initializers_of(name, w_init, b_init, initializers.he_normal(), initializers.zeros)
    args = (kh, kw, sh, sw, dil_h, dil_w, ph, ph, pw, pw)  # the geometry of the conv this one transposes

    def out_shape(input_shape: Shape) -> Shape:
        check_ndim(name, input_shape, 3, "a (C, H, W)")
        _, h, w = input_shape
        ho = (h - 1) * sh - 2 * ph + dil_h * (kh - 1) + oph + 1
        wo = (w - 1) * sw - 2 * pw + dil_w * (kw - 1) + opw + 1
        if ho < 1 or wo < 1:
            raise ShapeError(f"{name}: input {fmt_shape(input_shape)} gives no output with padding {(ph, pw)}")
        return (K, ho, wo)

    def init(key: Key, input_shape: Shape, dtype: np.dtype) -> tuple[Params, Shape]:
        shape = out_shape(input_shape)
        c = input_shape[0]
        k_w, k_b = random.split(key)
        w = np.asarray(w_init(k_w, (c, K, kh, kw), dtype, c * kh * kw, K * kh * kw), dtype)
        b = np.asarray(b_init(k_b, (K,), dtype, c * kh * kw, K * kh * kw), dtype)
        return seal(w=w, b=b), shape

    def check(params: Params, input_shape: Shape, dtype: np.dtype) -> Shape:
        check_params(name, params, dtype, w=(None, K, kh, kw), b=(K,))
        check_ndim(name, input_shape, 3, "a (C, H, W)")
        c = params["w"].shape[0]
        if input_shape[0] != c:
            raise ShapeError(f"{name}: expected input of shape {fmt_shape((c, 'H', 'W'))} ({c} channel(s)), "
                             f"got {fmt_shape(input_shape)}")
        return out_shape(tuple(input_shape))

    def buffers(params: Params, sig: Sig) -> Any:
        n, c, h, w = sig.x_shape
        y_shape = (n, *out_shape(sig.x_shape[1:]))
        cols = sig.empty((n, K * kh * kw, h, w))
        grads = sig.grads or {}
        return _TransposeBuffers(
            cols=cols, cols3=cols.reshape(n, -1, h * w), y=sig.empty(y_shape), dx=sig.dx_buffer(), grads=sig.grads,
            dw_n=sig.empty((n, c, K * kh * kw)) if grads else None, dw=grads["w"].reshape(c, -1) if grads else None,
            db=grads.get("b"),
        )

    def forward(params: Params, x: Array, buf: Any) -> tuple[Array, Any]:
        w = params["w"]
        n, c = x.shape[:2]
        x3 = np.ascontiguousarray(x).reshape(n, c, -1)
        np.matmul(w.reshape(c, -1).T, x3, out=buf.cols3)
        y = kernels.col2im(buf.cols, *args, buf.y)
        y += params["b"].reshape(-1, 1, 1)
        return y, (w, x3, buf)

    def backward(cache: Any, dy: Array) -> tuple[Params, Array | None]:
        w, x3, buf = cache
        n, c = x3.shape[:2]
        kernels.im2col(np.ascontiguousarray(dy), *args, buf.cols)  # (the forward's cols are no longer needed)
        np.add.reduce(dy, axis=(0, 2, 3), out=buf.db)
        np.matmul(x3, buf.cols3.transpose(0, 2, 1), out=buf.dw_n)
        np.add.reduce(buf.dw_n, axis=0, out=buf.dw)
        if buf.dx is None:
            return buf.grads, None
        np.matmul(w.reshape(c, -1), buf.cols3, out=buf.dx.reshape(n, c, -1))
        return buf.grads, buf.dx

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Shape) -> str:
        return g.op("ConvTranspose", x, g.param("w", params["w"]), g.param("b", params["b"]), kernel_shape=[kh, kw],
                    strides=[sh, sw], dilations=[dil_h, dil_w], pads=[ph, pw, ph, pw], output_padding=[oph, opw])

    return Layer(name, init, forward, backward, check, buffers=buffers, onnx=onnx)
