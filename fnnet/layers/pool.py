"""2-D pooling over (N, C, H, W) without padding; a partial window at the edge is dropped.

Max pooling's tie rule: the first maximal element of a window in row-major order gets
the whole gradient (a NaN counts as the largest); see fnnet/kernels/pool.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import kernels
from .._errors import ShapeError
from ..tree import EMPTY
from ..typing import Array, Params, Shape
from ._checks import check_ndim, fmt_shape, pair, without_params
from ._fusion import Fusion
from ._geometry import out_size
from ._layer import Layer, onnx_op
from ._sig import Sig


def _windowed(name: str, window: int | tuple[int, int], stride: int | tuple[int, int] | None) -> tuple:
    """``(kh, kw, sh, sw)``, and ``init``, ``check`` and the output shape of a pooling layer."""
    kh, kw = pair(window, "window", name)
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride", name)

    def out_shape(input_shape: Shape) -> Shape:
        check_ndim(name, input_shape, 3, "a (C, H, W)")
        c, h, w = input_shape
        if h < kh or w < kw:
            raise ShapeError(f"{name}: input {fmt_shape(input_shape)} is smaller than the {kh}x{kw} window")
        return (c, out_size(h, kh, sh), out_size(w, kw, sw))

    return (kh, kw, sh, sw), *without_params(name, out_shape), out_shape


def max_pool2d(window: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None) -> Layer:
    """Max pooling; ``stride`` defaults to ``window``. (N, C, H, W) -> (N, C, Ho, Wo)."""
    name = "max_pool2d"
    (kh, kw, sh, sw), init, check, out_shape = _windowed(name, window, stride)

    def buffers(params: Params, sig: Sig) -> Any:
        y_shape = (sig.x_shape[0], *out_shape(sig.x_shape[1:]))
        idx = sig.empty(y_shape, np.int64) if sig.train else None  # eval mode needs no positions
        return SimpleNamespace(y=sig.empty(y_shape), idx=idx, dx=sig.dx_buffer())

    def forward(params: Params, x: Array, buf: Any) -> tuple[Array, Any]:
        if buf.idx is None:  # eval mode: maxima alone (3x faster); positions found if backward asks
            return kernels.max_pool_values(x, kh, kw, sh, sw, buf.y), (x, buf)
        kernels.max_pool_forward(x, kh, kw, sh, sw, buf.y, buf.idx)
        return buf.y, (None, buf)

    def backward(cache: Any, dy: Array) -> tuple[Params, Array | None]:
        x, buf = cache
        if buf.dx is None:
            return EMPTY, None
        idx = buf.idx
        if idx is None:  # after an eval-mode forward: find the winners from the input now
            idx = np.empty(dy.shape, np.int64)
            kernels.max_pool_forward(x, kh, kw, sh, sw, np.empty(dy.shape, x.dtype), idx)
        return EMPTY, kernels.max_pool_backward(dy, idx, buf.dx)

    return Layer(name, init, forward, backward, check, buffers=buffers, fusion=Fusion("max_pool", (kh, kw, sh, sw)),
                 onnx=onnx_op("MaxPool", kernel_shape=[kh, kw], strides=[sh, sw]))


def avg_pool2d(window: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None) -> Layer:
    """Average pooling; ``stride`` defaults to ``window``. (N, C, H, W) -> (N, C, Ho, Wo)."""
    name = "avg_pool2d"
    (kh, kw, sh, sw), init, check, out_shape = _windowed(name, window, stride)

    def buffers(params: Params, sig: Sig) -> Any:
        return SimpleNamespace(y=sig.empty((sig.x_shape[0], *out_shape(sig.x_shape[1:]))), dx=sig.dx_buffer())

    def forward(params: Params, x: Array, buf: Any) -> tuple[Array, Any]:
        return kernels.avg_pool_forward(x, kh, kw, sh, sw, buf.y), buf

    def backward(buf: Any, dy: Array) -> tuple[Params, Array | None]:
        return EMPTY, None if buf.dx is None else kernels.avg_pool_backward(dy, kh, kw, sh, sw, buf.dx)

    return Layer(name, init, forward, backward, check, buffers=buffers,
                 onnx=onnx_op("AveragePool", kernel_shape=[kh, kw], strides=[sh, sw]))


def global_avg_pool2d() -> Layer:
    """The mean over all of H and W: (N, C, H, W) -> (N, C)."""
    name = "global_avg_pool2d"

    def out_shape(input_shape: Shape) -> Shape:
        check_ndim(name, input_shape, 3, "a (C, H, W)")
        return input_shape[:1]

    init, check = without_params(name, out_shape)

    def buffers(params: Params, sig: Sig) -> Any:
        return SimpleNamespace(y=sig.empty(sig.x_shape[:2]), dx=sig.dx_buffer())

    def forward(params: Params, x: Array, buf: Any) -> tuple[Array, Any]:
        return np.mean(x, axis=(2, 3), out=buf.y), buf

    def backward(buf: Any, dy: Array) -> tuple[Params, Array | None]:
        if buf.dx is None:
            return EMPTY, None
        h, w = buf.dx.shape[2:]
        return EMPTY, np.multiply(dy[:, :, None, None], 1.0 / (h * w), out=buf.dx)

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Shape) -> str:
        return g.op("Flatten", g.op("GlobalAveragePool", x), axis=1)  # (N, C, 1, 1) -> (N, C)

    return Layer(name, init, forward, backward, check, buffers=buffers, onnx=onnx)
