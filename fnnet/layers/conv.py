"""2-D convolution (cross-correlation, as in PyTorch), NCHW, weights (K, C, kh, kw).

Forward: the compiled im2col kernel lays the receptive fields out as a matrix
(N, C*kh*kw, Ho*Wo) and BLAS contracts it with the weights. Backward reuses those
columns for the weight gradient; dx is a BLAS product followed by the col2im kernel.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import init as initializers
from .. import kernels, random
from .._errors import InvalidValueError, ShapeError
from ..random import Key
from ..typing import Array, Params, Shape
from ._checks import check_ndim, check_params, fmt_shape, initializers_of, pair, positive_int, seal
from ._geometry import out_size, same_pad
from ._layer import Fusion, Layer, Sig, with_bias


class _Buffers(NamedTuple):
    """What a conv2d layer writes into for one input signature (a tuple: the backward
    pass unpacks it in one go)."""

    # the kernels' kh, kw, sh, sw, dil_h, dil_w, pt, pb, pl, pr
    args: tuple[int, int, int, int, int, int, int, int, int, int]
    cols: np.ndarray  # (N, C*kh*kw, Ho, Wo): im2col's layout
    cols3: np.ndarray  # the same memory as (N, C*kh*kw, Ho*Wo), for BLAS
    y: np.ndarray  # (N, K, Ho*Wo)
    y_shape: tuple  # (N, K, Ho, Wo)
    dw_n: np.ndarray | None  # (N, K, C*kh*kw): the weight gradient of each sample (None: no backward)
    dw: Any  # grads["w"] seen as (K, C*kh*kw) (a view: grads are C-contiguous), or None
    db: Any  # grads["b"], or None
    grads: Any
    dcols: Any  # like cols, and dcols3 like cols3, when dx is needed; else None
    dcols3: Any
    dx: Any


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
    K = positive_int(out_channels, "out_channels", name)
    kh, kw = pair(kernel_size, "kernel_size", name)
    sh, sw = pair(stride, "stride", name)
    dil_h, dil_w = pair(dilation, "dilation", name)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise InvalidValueError(f"{name}: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
    else:
        ph, pw = pair(padding, "padding", name, minimum=0)
    w_init, b_init = initializers_of(name, w_init, b_init, initializers.he_normal(), initializers.zeros)
    window = (kh, kw, sh, sw, dil_h, dil_w)  # the kernels' geometry arguments, before the padding

    def geometry(input_shape: Shape) -> tuple[tuple[int, int, int, int], Shape]:
        """Padding (top, bottom, left, right) and per-sample output shape."""
        c, h, w = input_shape
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            pads = (*same_pad(h, kh, sh, dil_h), *same_pad(w, kw, sw, dil_w))
        else:
            pads = (ph, ph, pw, pw)
        ho, wo = out_size(h, kh, sh, dil_h, pads[0] + pads[1]), out_size(w, kw, sw, dil_w, pads[2] + pads[3])
        if ho < 1 or wo < 1:
            raise ShapeError(
                f"{name}: input {fmt_shape(input_shape)} is smaller than the {kh}x{kw} kernel "
                f"(dilation {dil_h}x{dil_w}, padding {pads})"
            )
        return pads, (K, ho, wo)

    def init(key: Key, input_shape: Shape, dtype: np.dtype) -> tuple[Params, Shape]:
        check_ndim(name, input_shape, 3, "a (C, H, W)")
        _, out_shape = geometry(input_shape)
        c = input_shape[0]
        fan_in, fan_out = c * kh * kw, K * kh * kw
        k_w, k_b = random.split(key)
        w = np.asarray(w_init(k_w, (K, c, kh, kw), dtype, fan_in, fan_out), dtype)
        b = np.asarray(b_init(k_b, (K,), dtype, fan_in, fan_out), dtype)
        return seal(w=w, b=b), out_shape

    def check(params: Params, input_shape: Shape, dtype: np.dtype) -> Shape:
        check_params(name, params, dtype, w=(K, None, kh, kw), b=(K,))
        check_ndim(name, input_shape, 3, "a (C, H, W)")
        c = params["w"].shape[1]
        if input_shape[0] != c:
            raise ShapeError(
                f"{name}: expected input of shape {fmt_shape((c, 'H', 'W'))} ({c} channel(s)), "
                f"got {fmt_shape(input_shape)}"
            )
        return geometry(tuple(input_shape))[1]

    def buffers(params: Params, sig: Sig) -> Any:
        n, c = sig.x_shape[:2]
        pads, (_, ho, wo) = geometry(sig.x_shape[1:])
        cols = sig.empty((n, c * kh * kw, ho, wo))
        dcols = sig.empty(cols.shape) if sig.need_dx else None
        grads = sig.grads or {}
        return _Buffers(
            (*window, *pads), cols, cols.reshape(n, -1, ho * wo), sig.empty((n, K, ho * wo)), (n, K, ho, wo),
            sig.empty((n, K, c * kh * kw)) if grads else None,  # no backward in eval mode (predict)
            grads["w"].reshape(K, -1) if grads else None, grads.get("b"), sig.grads,
            dcols, None if dcols is None else dcols.reshape(n, -1, ho * wo), sig.dx_buffer(),
        )

    def linear(params: Params, x: Array, buf: _Buffers) -> tuple[Array, Any]:  # the forward pass before the bias
        w = params["w"]
        kernels.im2col(x, *buf.args, buf.cols)
        return np.matmul(w.reshape(K, -1), buf.cols3, out=buf.y).reshape(buf.y_shape), (w, buf)

    def backward(cache: tuple[Array, _Buffers], dy: Array) -> tuple[Params, Array | None]:
        w, (args, _, cols3, y, _, dw_n, dw, db, grads, dcols, dcols3, dx) = cache
        assert dw_n is not None  # made wherever a backward can run (sig.grads given)
        dy3 = np.ascontiguousarray(dy).reshape(y.shape)
        np.add.reduce(dy3, axis=(0, 2), out=db)
        np.matmul(dy3, cols3.transpose(0, 2, 1), out=dw_n)
        np.add.reduce(dw_n, axis=0, out=dw)
        if dx is None:
            return grads, None
        if K == 1:  # an outer product per sample: a broadcast multiply beats matmul's k=1 path
            np.multiply(w.reshape(1, -1, 1), dy3, out=dcols3)
        else:
            np.matmul(w.reshape(K, -1).T, dy3, out=dcols3)
        return grads, kernels.col2im(dcols, *args, dx)

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Shape) -> str:
        (pt, pb, pl, pr), _ = geometry(input_shape)
        return g.op("Conv", x, g.param("w", params["w"]), g.param("b", params["b"]), kernel_shape=[kh, kw],
                    strides=[sh, sw], dilations=[dil_h, dil_w], pads=[pt, pl, pb, pr])

    return Layer(name, init, with_bias(linear), backward, check, buffers=buffers,
                 fusion=Fusion("affine", head=linear), onnx=onnx)
