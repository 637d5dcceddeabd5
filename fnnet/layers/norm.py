"""Normalisation: batch norm, with its running statistics as explicit state; layer norm
and group norm, which normalise each sample alone and have no state."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import kernels
from .._errors import ShapeError, check_real
from ..random import Key
from ..tree import FrozenDict
from ..typing import Array, Params, PyTree, Shape
from ._checks import check_params, fmt_shape, positive_int, seal
from ._fusion import Fusion, normalized
from ._layer import Layer
from ._sig import Sig


def batch_norm(momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch norm over the batch (dense input (N, F)) or batch and space (conv input
    (N, C, H, W)), per feature or channel.

    Params ``{"scale": (F,), "shift": (F,)}`` (ones, zeros). State ``{"mean": (F,),
    "var": (F,)}`` (zeros, ones), passed in and returned by ``forward_with_state``.
    Train mode normalises with the batch statistics and returns the running statistics
    updated as ``running = momentum * running + (1 - momentum) * batch`` (the variance
    unbiased, as in PyTorch); eval mode (``train=False``) normalises with the running
    statistics and returns the state unchanged. Statistics are summed in float64 by the
    compiled kernels (``fnnet.kernels.bn_*``); jit reuses its buffers from step to step.
    A training batch cut into shards is normalised with the whole batch's statistics:
    each shard's moments, and in backward its gradient sums, are pooled in shard order
    (:class:`fnnet.shards.ShardGroup`), so any thread count gives the same bits.
    """
    momentum = check_real("batch_norm", "momentum", momentum, 0.0, 1.0, high_open=True)
    eps = check_real("batch_norm", "eps", eps, 0.0, low_open=True)
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

    def buffers(params: Params, sig: Sig) -> _Buffers:
        c = sig.x_shape[1]
        group = sig.carry.group if sig.train else None
        return _Buffers(sig.train, sig.empty(), sig.empty(), sig.dx_buffer(), np.empty((2, c)),
                        np.empty((4, c), sig.dtype), group, sig.carry.shard, sig.path)

    def head(params: Params, x: Array, buf: _Buffers, state: PyTree) -> tuple[Array, Any, PyTree]:
        # the forward pass up to the normalisation: its coefficients and the new state
        m = x.size // x.shape[1]  # values a channel's statistics are over
        if buf.train:
            sums = kernels.bn_moments(x, buf.sums)  # float64 mean, and sum of squared deviations
            mean, m2 = sums[0], sums[1]
            if buf.group is not None:  # a shard: the whole batch's, from every shard's
                m, mean, m2 = buf.group.combine((buf.path, "moments"), buf.shard, (m, mean.copy(), m2.copy()),
                                                _pooled_moments)
            var, unbiased = m2 / max(m, 1), m2 / max(m - 1, 1)
            new_state = seal(
                mean=(momentum * state["mean"] + (1 - momentum) * mean).astype(x.dtype),
                var=(momentum * state["var"] + (1 - momentum) * unbiased).astype(x.dtype),
            )
        else:
            mean, var, new_state = state["mean"], state["var"], state
        inv_std = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
        coef = buf.factors
        coef[0], coef[1], coef[2], coef[3] = mean, inv_std, params["scale"], params["shift"]
        return coef, (buf, inv_std, params["scale"], m), new_state

    def backward(cache: Any, dy: Array) -> tuple[Params, Array | None]:
        buf, inv_std, scale, m = cache
        sums = kernels.bn_grad_sums(dy, buf.xhat, buf.sums)  # sum of dy, of dy * xhat (float64)
        grads = FrozenDict(scale=sums[1].astype(dy.dtype), shift=sums[0].astype(dy.dtype))  # (a shard: its share)
        if buf.group is not None:  # dx needs the whole batch's sums
            sums = buf.group.combine((buf.path, "grad sums"), buf.shard, sums.copy(), _summed)
        if buf.dx is None:
            return grads, None
        k = buf.factors
        k[0] = k1 = scale * inv_std  # dx = k1 dy (eval: the statistics are constants)
        if buf.train:  # ... - k1 (sum dy + xhat sum dy xhat) / m: the batch's statistics depend on x
            k[1], k[2] = k1 * sums[0] / m, k1 * sums[1] / m
        else:
            k[1:] = 0
        return grads, kernels.bn_backward(dy, buf.xhat, k, buf.dx)

    def onnx(g: Any, params: Params, state: PyTree, x: str, input_shape: Shape) -> str:  # (eval mode)
        return g.op("BatchNormalization", x, g.param("scale", params["scale"]), g.param("shift", params["shift"]),
                    g.param("mean", state["mean"]), g.param("var", state["var"]), epsilon=eps)

    return Layer(name, init, normalized(head), backward, check, init_state=init_state, buffers=buffers,
                 shard_sums=True, fusion=Fusion("normalize", head=head), onnx=onnx)


def _pooled_moments(parts: list) -> tuple[int, np.ndarray, np.ndarray]:
    """``(count, mean, sum of squared deviations)`` of shards' ``(count, mean, M2)``, pooled
    in shard order (Chan, Golub and LeVeque's update: stable, no cancellation)."""
    n, mean, m2 = parts[0]
    for nb, mb, m2b in parts[1:]:
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta * delta * (n * nb / total)
        n = total
    return n, mean, m2


def _summed(parts: list) -> np.ndarray:
    """The shards' float64 sums, added in shard order."""
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


class _Buffers(NamedTuple):
    """What batch norm writes into, made once per input signature: its output, the
    normalised input (backward's), dx (None without), the float64 (2, C) sums, and the
    (4, C) per-channel factors of the forward kernel (then of backward's)."""

    train: bool
    y: np.ndarray
    xhat: np.ndarray
    dx: np.ndarray | None
    sums: np.ndarray
    factors: np.ndarray
    group: Any  # the step's ShardGroup (train mode, a cut batch), else None
    shard: int
    path: str  # (names this layer's meeting points in the group)


def _normalized(x: Array, axes: tuple, eps: float) -> tuple[Array, Array]:
    """``(xhat, inv_std)``: ``x`` standardised over ``axes`` (the biased variance, as PyTorch's)."""
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    inv_std = 1.0 / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + eps)
    return centred * inv_std, inv_std


def _normalized_grad(dxhat: Array, xhat: Array, inv_std: Array, axes: tuple) -> Array:
    """The gradient through ``_normalized``: ``inv_std (dxhat - mean dxhat - xhat mean(dxhat xhat))``."""
    return inv_std * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                      - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))


def layer_norm(normalized_ndim: int | None = None, eps: float = 1e-5) -> Layer:
    """Layer norm: each sample standardised over its last ``normalized_ndim`` axes (default:
    all of them, (C, H, W) for images), then scaled and shifted per element of those axes,
    as PyTorch's ``LayerNorm(normalized_shape=input_shape[-normalized_ndim:])``.

    Params ``{"scale": S, "shift": S}`` with S the normalised axes' shape (ones, zeros);
    no state: train and eval mode are the same (unlike batch norm, no statistics cross
    the batch, so shards need nothing)."""
    name = "layer_norm"
    if normalized_ndim is not None:
        normalized_ndim = positive_int(normalized_ndim, "normalized_ndim", name)
    eps = check_real(name, "eps", eps, 0.0, low_open=True)

    def normalized_shape(input_shape: Shape) -> Shape:
        d = len(input_shape) if normalized_ndim is None else normalized_ndim
        if not 1 <= d <= len(input_shape):
            raise ShapeError(f"{name}: cannot normalise the last {d} axes of inputs {fmt_shape(input_shape)}")
        return tuple(input_shape[len(input_shape) - d:])

    def init(key: Key, input_shape: Shape, dtype: np.dtype) -> tuple[Params, Shape]:
        s = normalized_shape(input_shape)
        return seal(scale=np.ones(s, dtype), shift=np.zeros(s, dtype)), tuple(input_shape)

    def check(params: Params, input_shape: Shape, dtype: np.dtype) -> Shape:
        s = normalized_shape(tuple(input_shape))
        check_params(name, params, dtype, scale=s, shift=s)
        return tuple(input_shape)

    def forward(params: Params, x: Array, sig: Sig) -> tuple[Array, Any]:
        axes = tuple(range(x.ndim - params["scale"].ndim, x.ndim))
        xhat, inv_std = _normalized(x, axes, eps)
        return xhat * params["scale"] + params["shift"], (xhat, inv_std, params["scale"], axes)

    def backward(cache: Any, dy: Array) -> tuple[Params, Array]:
        xhat, inv_std, scale, axes = cache
        lead = tuple(range(xhat.ndim - scale.ndim))
        grads = {"scale": (dy * xhat).sum(axis=lead), "shift": dy.sum(axis=lead)}
        return grads, _normalized_grad(dy * scale, xhat, inv_std, axes)

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Shape) -> str:
        return g.op("LayerNormalization", x, g.param("scale", params["scale"]), g.param("shift", params["shift"]),
                    axis=-params["scale"].ndim, epsilon=eps)

    return Layer(name, init, forward, backward, check, onnx=onnx)


def group_norm(groups: int, eps: float = 1e-5) -> Layer:
    """Group norm: the C channels of each sample cut into ``groups`` groups, each
    standardised over its channels and all positions, then scaled and shifted per
    channel, as PyTorch's ``GroupNorm(groups, C)``. Inputs (N, C, ...), C a multiple of
    ``groups`` (``groups=1``: every channel together; ``groups=C``: instance norm).

    Params ``{"scale": (C,), "shift": (C,)}`` (ones, zeros); no state, the same in train
    and eval mode."""
    name = "group_norm"
    G = positive_int(groups, "groups", name)
    eps = check_real(name, "eps", eps, 0.0, low_open=True)

    def channels(input_shape: Shape) -> int:
        if len(input_shape) < 1 or input_shape[0] % G:
            raise ShapeError(f"{name}: inputs {fmt_shape(input_shape)} do not have a channel count that "
                             f"{G} groups divide")
        return input_shape[0]

    def init(key: Key, input_shape: Shape, dtype: np.dtype) -> tuple[Params, Shape]:
        c = channels(input_shape)
        return seal(scale=np.ones(c, dtype), shift=np.zeros(c, dtype)), tuple(input_shape)

    def check(params: Params, input_shape: Shape, dtype: np.dtype) -> Shape:
        c = channels(tuple(input_shape))
        check_params(name, params, dtype, scale=(c,), shift=(c,))
        return tuple(input_shape)

    def per_channel(a: Array, ndim: int) -> Array:  # (C,) against (N, C, ...)
        return a.reshape(a.shape + (1,) * (ndim - 2))

    def forward(params: Params, x: Array, sig: Sig) -> tuple[Array, Any]:
        xhat, inv_std = _normalized(x.reshape(x.shape[0], G, -1), (2,), eps)
        xhat = xhat.reshape(x.shape)
        scale = per_channel(params["scale"], x.ndim)
        return xhat * scale + per_channel(params["shift"], x.ndim), (xhat, inv_std, scale)

    def backward(cache: Any, dy: Array) -> tuple[Params, Array]:
        xhat, inv_std, scale = cache
        axes = (0, *range(2, dy.ndim))
        grads = {"scale": (dy * xhat).sum(axis=axes), "shift": dy.sum(axis=axes)}
        n = dy.shape[0]
        dx = _normalized_grad((dy * scale).reshape(n, G, -1), xhat.reshape(n, G, -1), inv_std, (2,))
        return grads, dx.reshape(dy.shape)

    def onnx(g: Any, params: Params, state: Any, x: str, input_shape: Shape) -> str:  # (opset 17 has no GroupNorm)
        grouped = g.op("Reshape", x, g.const(np.array([0, G, -1], np.int64)))
        normed = g.op("InstanceNormalization", grouped, g.floats(np.ones(G)), g.floats(np.zeros(G)), epsilon=eps)
        back = g.op("Reshape", normed, g.const(np.array([-1, *input_shape], np.int64)))
        ones = (1,) * (len(input_shape) - 1)
        scaled = g.op("Mul", back, g.param("scale", params["scale"].reshape(-1, *ones)))
        return g.op("Add", scaled, g.param("shift", params["shift"].reshape(-1, *ones)))

    return Layer(name, init, forward, backward, check, onnx=onnx)
