"""Batch normalisation with its running statistics as explicit state."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import InvalidValueError, ShapeError
from ..random import Key
from ..tree import FrozenDict
from ..typing import Array, Params, PyTree, Shape
from ._checks import check_params, fmt_shape, seal
from ._layer import Layer, Sig


def batch_norm(momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch norm over the batch (dense input (N, F)) or batch and space (conv input
    (N, C, H, W)), per feature or channel.

    Params ``{"scale": (F,), "shift": (F,)}`` (ones, zeros). State ``{"mean": (F,),
    "var": (F,)}`` (zeros, ones), passed in and returned by ``forward_with_state``.
    Train mode normalises with the batch statistics and returns the running statistics
    updated as ``running = momentum * running + (1 - momentum) * batch`` (the variance
    unbiased, as in PyTorch); eval mode (``train=False``) normalises with the running
    statistics and returns the state unchanged. It has no buffers hook: jit runs it
    through the same forward and backward, with fresh arrays.
    """
    momentum, eps = float(momentum), float(eps)
    if not 0.0 <= momentum < 1.0 or eps <= 0:
        raise InvalidValueError(f"batch_norm: momentum must be in [0, 1) and eps > 0, got {momentum}, {eps}")
    name = "batch_norm"

    def init(key: Key, input_shape: Shape, dtype: np.dtype) -> tuple[Params, Shape]:
        if len(input_shape) not in (1, 3):
            raise ShapeError(f"{name}: expects (F,) or (C, H, W) inputs per sample, got {fmt_shape(input_shape)}")
        f = input_shape[0]
        return seal(scale=np.ones(f, dtype), shift=np.zeros(f, dtype)), input_shape

    def init_state(params: Params) -> PyTree:
        f, dtype = params["scale"].shape, params["scale"].dtype
        return seal(mean=np.zeros(f, dtype), var=np.ones(f, dtype))

    def check(params: Params, input_shape: Shape, dtype: np.dtype) -> Shape:
        check_params(name, params, dtype, scale=(None,), shift=(None,))
        f = params["scale"].shape[0]
        check_params(name, params, dtype, scale=(f,), shift=(f,))
        if len(input_shape) not in (1, 3) or input_shape[0] != f:
            raise ShapeError(
                f"{name}: expected input of shape {fmt_shape((f,))} or {fmt_shape((f, 'H', 'W'))}, "
                f"got {fmt_shape(input_shape)}"
            )
        return tuple(input_shape)

    def forward(params: Params, x: Array, sig: Sig, state: PyTree) -> tuple[Array, Any, PyTree]:
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
        if sig.train:
            m = x.size // x.shape[1]
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            unbiased = var * (m / max(m - 1, 1))
            new_state = seal(
                mean=momentum * state["mean"] + (1 - momentum) * mean,
                var=momentum * state["var"] + (1 - momentum) * unbiased,
            )
        else:
            mean, var, new_state = state["mean"], state["var"], state
        inv_std = 1.0 / np.sqrt(var + eps)
        xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        y = xhat * params["scale"].reshape(shape) + params["shift"].reshape(shape)
        return y, (xhat, inv_std, params["scale"], axes, shape, sig.train), new_state

    def backward(cache: Any, dy: Array) -> tuple[Params, Array | None]:
        xhat, inv_std, scale, axes, shape, train = cache
        dscale = np.sum(dy * xhat, axis=axes)
        dshift = np.sum(dy, axis=axes)
        dxhat = dy * scale.reshape(shape)
        if train:
            m = dy.size // dy.shape[1]
            dx = (inv_std.reshape(shape) / m) * (
                m * dxhat - np.sum(dxhat, axis=axes).reshape(shape)
                - xhat * np.sum(dxhat * xhat, axis=axes).reshape(shape)
            )
        else:
            dx = dxhat * inv_std.reshape(shape)
        return FrozenDict(scale=dscale, shift=dshift), dx

    return Layer(name, init, forward, backward, check, init_state=init_state)
