"""Nearest-neighbour upsampling by an integer factor (a decoder's way back up)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tree import EMPTY
from ..typing import Array, Params, Shape
from ._checks import check_ndim, pair, without_params
from ._layer import Layer
from ._sig import Sig


def upsample2d(factor: int | tuple[int, int] = 2) -> Layer:
    """Each pixel repeated ``factor`` times down and across: (N, C, H, W) -> (N, C, fh*H,
    fw*W), as PyTorch's ``Upsample(scale_factor=factor, mode="nearest")``. Backward sums
    each block's gradient. No params."""
    name = "upsample2d"
    fh, fw = pair(factor, "factor", name)

    def out_shape(input_shape: Shape) -> Shape:
        check_ndim(name, input_shape, 3, "a (C, H, W)")
        c, h, w = input_shape
        return (c, h * fh, w * fw)

    init, check = without_params(name, out_shape)

    def buffers(params: Params, sig: Sig) -> Any:
        n, c, h, w = sig.x_shape
        return sig.empty((n, c, h, fh, w, fw)), sig.dx_buffer()

    def forward(params: Params, x: Array, buf: Any) -> tuple[Array, Any]:
        y6, dx = buf
        y6[...] = x[:, :, :, None, :, None]
        n, c, h, _, w, _ = y6.shape
        return y6.reshape(n, c, h * fh, w * fw), buf

    def backward(buf: Any, dy: Array) -> tuple[Params, Array | None]:
        y6, dx = buf
        if dx is None:
            return EMPTY, None
        return EMPTY, np.add.reduce(dy.reshape(y6.shape), axis=(3, 5), out=dx)

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Shape) -> str:
        scales = g.const(np.array([1, 1, fh, fw], np.float32))
        return g.op("Resize", x, "", scales, mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor")

    return Layer(name, init, forward, backward, check, buffers=buffers, onnx=onnx)
