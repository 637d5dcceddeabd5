"""The Layer record and the checks every layer shares.

Shapes passed to ``init`` and ``check`` are per-sample shapes: they exclude the batch
axis (``(C, H, W)`` for images, ``(features,)`` for vectors). Arrays passed to
``forward`` carry the batch axis first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from .._errors import DTypeError, ShapeError
from ..tree import FrozenDict, tree_leaves

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


NO_STATE = FrozenDict()


@attrs.frozen
class Layer:
    """A layer as pure functions (all shapes exclude the batch axis unless said).

    * ``init(key, input_shape, *, dtype=np.float32) -> (params, output_shape)``:
      parameters from a key, and shape inference without data.
    * ``forward(params, x, *, key=None, train=True) -> (y, cache)``: checked forward
      pass (method below). ``key`` is needed only by random layers (dropout) in train
      mode; ``train=False`` selects eval behaviour (dropout off, running statistics).
      Layers that use neither ignore both.
    * ``backward(cache, dy) -> (dparams, dx)``: ``dparams`` has the structure of params.
    * ``init_state(params) -> state`` and
      ``forward_with_state(params, state, x, *, key=None, train=True) -> (y, cache, state)``
      for layers with state (batch norm's running statistics): the state is passed in and
      returned, never kept inside. Stateless layers have an empty state.
    * ``check(params, input_shape, dtype) -> output_shape``: raises a ShapeError or
      DTypeError naming the layer, the expected and the received value.
    * ``apply(params, state, x, ws, key, train) -> (y, cache, state)``: forward without
      checks; ``ws`` is a dict of workspace buffers the layer may reuse between calls (or
      None), as :func:`fnnet.jit` does. ``backward`` takes the same optional ``ws``.
    * ``children``: ``((key, layer), ...)`` for combinators, empty otherwise.
    * ``stateful`` / ``stochastic``: whether the layer has state / needs a key to train.
    * ``grad_params(cache, dy, ws=None) -> dparams``: optional, backward without ``dx``.
    * ``bind(params, grads, x_shape, dtype, need_dx) -> (forward, backward)``: optional,
      the layer fixed to one input shape ``x_shape`` (with the batch axis), as
      :func:`fnnet.jit` runs it: ``forward(x) -> y`` and ``backward(dy) -> dx`` (None
      unless ``need_dx``) reuse buffers made once and write the parameter gradients into
      ``grads`` (C-contiguous writeable arrays with the params' structure). ``params``
      has the params' structure, but jit swaps its leaves before each step: look them
      up at each call, never keep them. Train mode, no key, no state; the arrays
      returned are overwritten by the next call. :func:`bind` adapts a layer without it.
    """

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    init: Callable = attrs.field(repr=False)
    apply: Callable = attrs.field(repr=False)
    backward: Callable = attrs.field(repr=False)
    check: Callable = attrs.field(repr=False)
    children: tuple = attrs.field(default=(), repr=False)
    init_state: Callable = attrs.field(default=lambda params: NO_STATE, repr=False)
    stateful: bool = False
    stochastic: bool = False
    grad_params: Callable | None = attrs.field(default=None, repr=False)
    bind: Callable | None = attrs.field(default=None, repr=False)

    def param_grads(self, cache: Any, dy: np.ndarray, ws: dict | None = None) -> Any:
        """``dparams`` alone, skipping ``dx`` where the layer can (a training step never
        needs the gradient of the input images: for a first conv layer that is its costliest
        half)."""
        if self.grad_params is not None:
            return self.grad_params(cache, dy, ws)
        return self.backward(cache, dy, ws)[0]

    @classmethod
    def stateless(cls, name: str, init: Callable, apply: Callable, backward: Callable, check: Callable) -> Layer:
        """A layer from ``apply(params, x, ws=None) -> (y, cache)`` (no key, mode or state)."""

        def full(params, state, x, ws=None, key=None, train=True):
            y, cache = apply(params, x, ws)
            return y, cache, state

        return cls(name, init, full, backward, check)

    def forward(self, params: Any, x: np.ndarray, *, key: Any = None, train: bool = True) -> tuple[np.ndarray, Any]:
        """Checked forward pass: ``x`` is (N, *input_shape); returns ``(y, cache)``."""
        if self.stateful:
            raise TypeError(f"{self.name} has state (e.g. batch norm): use forward_with_state(params, state, x)")
        y, cache, _ = self.forward_with_state(params, NO_STATE, x, key=key, train=train)
        return y, cache

    def forward_with_state(
        self, params: Any, state: Any, x: np.ndarray, *, key: Any = None, train: bool = True
    ) -> tuple[np.ndarray, Any, Any]:
        """Checked forward pass threading ``state``; returns ``(y, cache, new_state)``."""
        x = as_batch(x, self.name)
        self.check(params, x.shape[1:], x.dtype)
        if train and self.stochastic and key is None:
            raise TypeError(f"{self.name} is random in train mode: pass key=fnnet.random.key(...) (or train=False)")
        return self.apply(params, state, x, None, key, train)

    def output_shape(self, params: Any, input_shape: tuple, dtype=np.float32) -> tuple:
        """Per-sample output shape for ``input_shape`` (checks compatibility)."""
        return self.check(params, tuple(input_shape), np.dtype(dtype))


def bind(
    layer: Layer, params: Any, grads: Any, x_shape: tuple, dtype: np.dtype, need_dx: bool
) -> tuple[Callable, Callable]:
    """``layer.bind(...)``, or the same contract built from ``apply`` and ``backward``
    (workspace reused; gradients copied into ``grads``). Train mode; the layer must be
    neither stateful nor random."""
    if layer.stateful or layer.stochastic:
        raise TypeError(f"bind: {layer.name} has state or is random; run it with apply")
    if layer.bind is not None:
        return layer.bind(params, grads, x_shape, dtype, need_dx)
    ws_forward: dict = {}
    ws_backward: dict = {}
    targets = tree_leaves(grads)
    saved = [None]

    def forward(x):
        y, saved[0], _ = layer.apply(params, NO_STATE, x, ws_forward, None, True)
        return y

    def backward(dy):
        if need_dx:
            g, dx = layer.backward(saved[0], dy, ws_backward)
        else:
            g, dx = layer.param_grads(saved[0], dy, ws_backward), None
        for target, leaf in zip(targets, tree_leaves(g)):
            np.copyto(target, leaf)
        return dx

    return forward, backward


def as_batch(x: Any, name: str) -> np.ndarray:
    """``x`` as an ndarray with a batch axis, or a ShapeError naming the layer."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim < 1:
        raise ShapeError(f"{name}: input must have a batch axis, got a scalar")
    return x


def fmt_shape(shape: tuple) -> str:
    """``(N, 1, 28, 28)``-style text for a per-sample shape."""
    return "(" + ", ".join(["N", *map(str, shape)]) + ")"


def check_dtype(name: str, params: Any, dtype: np.dtype) -> None:
    """Inputs must be float32/float64 and match the params' dtype (no silent upcast)."""
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: input dtype must be float32 or float64, got {dtype}")
    for leaf in tree_leaves(params):
        if leaf.dtype != dtype:
            raise DTypeError(f"{name}: input dtype {dtype} does not match the params' dtype {leaf.dtype}")


def check_init_dtype(name: str, dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: params dtype must be float32 or float64, got {dtype}")
    return dtype


def check_ndim(name: str, shape: tuple, ndim: int, what: str) -> None:
    if len(shape) != ndim:
        raise ShapeError(f"{name}: expected {what} input {ndim}-D per sample, got shape {fmt_shape(shape)}")


def buffer(ws: dict | None, key: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A fresh array, or the workspace's buffer for ``key`` (reallocated if it changed)."""
    if ws is None:
        return np.empty(shape, dtype)
    buf = ws.get(key)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = ws[key] = np.empty(shape, dtype)
    return buf


def seal(**arrays: np.ndarray) -> FrozenDict:
    """Params from freshly made arrays: a FrozenDict of read-only leaves (no copy)."""
    for a in arrays.values():
        a.flags.writeable = False
    return FrozenDict(arrays)


def pair(v: Any, what: str, name: str, minimum: int = 1) -> tuple[int, int]:
    """``v`` or ``(v, v)`` as a pair of ints >= minimum, or a ValueError naming it."""
    t = (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= minimum for i in t):
        raise ValueError(f"{name}: {what} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])


NO_PARAMS = FrozenDict()
