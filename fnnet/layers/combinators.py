"""Layers in, one Layer out: ``serial``, ``residual``, ``parallel``, and the layers that
make and join branches, ``fan_out``, ``fan_in_sum``, ``fan_in_concat`` (JAX stax's
``parallel``, ``FanOut``, ``FanInSum``, ``FanInConcat``); and the ``summary`` table.

Between ``fan_out`` and a fan-in, values are tuples of arrays and shapes tuples of
shapes (``((C, H, W), (C, H, W))`` per sample): ``parallel`` runs its i-th layer on the
i-th array. A combinator's buffers hook prepares its sub-layers
(``fnnet/layers/_runner.py``'s ``prepare``) and its forward and backward run them through the
runner, so every sub-layer is checked and sped up as a top-level layer is.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from .. import random
from .._errors import FnnetError, InvalidTypeError, InvalidValueError, ShapeError
from ..random import Key
from ..tree import EMPTY, FrozenDict
from ..typing import Array, Params, PyTree, Shape
from ._checks import check_keys, fmt_shape, is_multi, positive_int, with_batch, without_params
from ._fuse import prepare_chain
from ._layer import Layer
from ._runner import prepare, run, run_backward, run_chain, run_chain_backward
from ._sig import Sig
from .reshape import identity


def _reraise(err: FnnetError, key: str) -> FnnetError:
    """The same error class with the sub-layer's key in front of the message."""
    new = type(err)(f"{key}: {err}")
    new.__cause__ = None
    return new


def _layers(name: str, layers: tuple) -> tuple[tuple[str, Layer], ...]:
    """``(("<layer name>_<i>", layer), ...)``, or an error naming the argument that is no Layer."""
    if not layers:
        raise InvalidValueError(f"{name}: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise InvalidTypeError(
                f"{name}: argument {i} is a {type(layer).__name__}, not a Layer (did you forget the ()?)"
            )
    return tuple((f"{layer.name}_{i}", layer) for i, layer in enumerate(layers))


def _run_parts(parts: tuple, sites: tuple, params: Params, xs: Any, key: Key | None, state: PyTree
               ) -> tuple[list, list, dict]:
    """The forward pass of each ``(key, layer)`` of ``parts`` on its input of ``xs``, a key
    each (``split(key, len(parts))``) and its state: ``(outputs, caches, new_state)``
    (``parallel``'s branches, and ``residual``'s block and shortcut)."""
    keys = random.split(key, len(parts)) if key is not None else (None,) * len(parts)
    ys, caches, new_state = [], [], {}
    for (k, layer), site, xi, sub in zip(parts, sites, xs, keys):
        y, cache, s = run(site, params[k], xi, sub, state[k] if layer.stateful else EMPTY)
        ys.append(y)
        caches.append(cache)
        if layer.stateful:
            new_state[k] = s
    return ys, caches, new_state


def serial(*layers: Layer) -> Layer:
    """Layers applied in sequence.

    Params are a dict keyed by ``"<layer name>_<index>"`` (``conv2d_0``, ``relu_1``...),
    and backward runs in reverse. ``init`` splits its key once per layer, and so does
    the forward pass for random layers (dropout). The state is a dict with an entry for
    each layer that has state (batch norm). The runs ``conv2d|dense|batch_norm -> relu
    [-> max_pool2d]`` run fused, with the bits of the layers run one by one
    (``fnnet/layers/_fuse.py``).
    """
    children = _layers("serial", layers)
    names = tuple(k for k, _ in children)
    stateful = tuple(layer.stateful for layer in layers)

    def init(key: Key, input_shape: Shape, dtype: np.dtype) -> tuple[Params, Shape]:
        params, shape = {}, input_shape
        for (k, layer), sub in zip(children, random.split(key, len(layers))):
            try:
                params[k], shape = layer.init(sub, shape, dtype=dtype)
            except FnnetError as err:
                raise _reraise(err, k) from None
        return FrozenDict(params), shape

    def check(params: Params, input_shape: Shape, dtype: np.dtype) -> Shape:
        check_keys("serial", params, names)
        shape = input_shape
        for k, layer in children:
            try:
                shape = layer.output_shape(params[k], shape, dtype)
            except FnnetError as err:
                raise _reraise(err, k) from None
        return shape

    def init_state(params: Params) -> PyTree:
        return FrozenDict((k, layer.init_state(params[k])) for (k, layer), s in zip(children, stateful) if s)

    def buffers(params: Params, sig: Sig) -> Any:
        return prepare_chain(children, params, sig), sig.grads

    def forward(params: Params, x: Array, buf: Any, key: Key | None = None, state: PyTree = EMPTY) -> tuple[Any, ...]:
        x, caches, new_state = run_chain(buf[0], params, x, key, state)
        if new_state:
            return x, (caches, buf), FrozenDict(new_state)
        return x, (caches, buf)

    def backward(cache: Any, dy: Array) -> tuple[Params, Array | None]:
        caches, (chain, grads) = cache
        return grads, run_chain_backward(chain, caches, dy)

    def onnx(g: Any, params: Params, state: PyTree, x: str, input_shape: Shape) -> str:
        shape = input_shape
        for k, layer in children:
            x, shape = g.layer(k, layer, params[k], state[k] if layer.stateful else EMPTY, x, shape)
        return x

    return Layer(
        "serial", init, forward, backward, check, buffers=buffers, onnx=onnx,
        init_state=init_state if any(stateful) else None,
        stochastic=any(layer.stochastic for layer in layers), children=children,
        shard_sums=all(layer.cuttable for layer in layers),
    )


def _branches(name: str, input_shape: Any, n: int | None = None) -> Any:
    """``input_shape`` as the shapes of a tuple of inputs (of ``n``), or a ShapeError."""
    if not is_multi(input_shape) or (n is not None and len(input_shape) != n):
        what = f"a tuple of {n} inputs" if n is not None else "a tuple of inputs"
        raise ShapeError(f"{name}: takes {what} (from fan_out or parallel), got {fmt_shape(input_shape)}")
    return input_shape


def parallel(*layers: Layer) -> Layer:
    """Layers side by side: a tuple of ``len(layers)`` inputs in, the tuple of their
    outputs out, layer ``i`` on input ``i`` (stax's ``parallel``).

    Params (and state) are a dict keyed as ``serial``'s (``"conv2d_0"``, ``"dense_1"``...):
    a path names its branch. ``init`` and the forward pass split their key once per
    layer. Typically ``serial(fan_out(n), parallel(...), fan_in_concat())``.
    """
    children = _layers("parallel", layers)
    names = tuple(k for k, _ in children)
    stateful = tuple(layer.stateful for layer in layers)

    def init(key: Key, input_shape: Any, dtype: np.dtype) -> tuple[Params, Any]:
        shapes = _branches("parallel", input_shape, len(children))
        params, out = {}, []
        for (k, layer), sub, shape in zip(children, random.split(key, len(children)), shapes):
            try:
                params[k], s = layer.init(sub, shape, dtype=dtype)
            except FnnetError as err:
                raise _reraise(err, k) from None
            out.append(s)
        return FrozenDict(params), tuple(out)

    def check(params: Params, input_shape: Any, dtype: np.dtype) -> Any:
        check_keys("parallel", params, names)
        out = []
        for (k, layer), shape in zip(children, _branches("parallel", input_shape, len(children))):
            try:
                out.append(layer.output_shape(params[k], shape, dtype))
            except FnnetError as err:
                raise _reraise(err, k) from None
        return tuple(out)

    def init_state(params: Params) -> PyTree:
        return FrozenDict((k, layer.init_state(params[k])) for (k, layer), s in zip(children, stateful) if s)

    def buffers(params: Params, sig: Sig) -> Any:
        sites = tuple(prepare(layer, params[k], sig.child(k, s)) for (k, layer), s in zip(children, sig.x_shape))
        return sites, sig.grads

    def forward(params: Params, x: tuple, buf: Any, key: Key | None = None, state: PyTree = EMPTY) -> tuple:
        ys, caches, new_state = _run_parts(children, buf[0], params, x, key, state)
        if new_state:
            return tuple(ys), (caches, buf), FrozenDict(new_state)
        return tuple(ys), (caches, buf)

    def backward(cache: Any, dy: tuple) -> tuple[Params, Any]:
        caches, (sites, grads) = cache
        return grads, tuple(run_backward(site, c, dyi) for site, c, dyi in zip(sites, caches, dy))

    def onnx(g: Any, params: Params, state: PyTree, x: tuple, input_shape: Any) -> tuple:
        return tuple(g.layer(k, layer, params[k], state[k] if layer.stateful else EMPTY, xi, shape)[0]
                     for (k, layer), xi, shape in zip(children, x, input_shape))

    return Layer(
        "parallel", init, forward, backward, check, buffers=buffers, onnx=onnx,
        init_state=init_state if any(stateful) else None,
        stochastic=any(layer.stochastic for layer in layers), children=children,
        shard_sums=all(layer.cuttable for layer in layers),
    )


def fan_out(n: int) -> Layer:
    """One input to a tuple of ``n`` (read-only views of it), for ``parallel`` (stax's
    ``FanOut``); backward sums the branches' gradients. No params."""
    name = "fan_out"
    n = positive_int(n, "n", name)

    def out_shape(input_shape: Any) -> Any:
        if is_multi(input_shape):
            raise ShapeError(f"{name}: takes one input, got a tuple {fmt_shape(input_shape)}: join them first")
        return (tuple(input_shape),) * n

    init, check = without_params(name, out_shape)

    def buffers(params: Params, sig: Sig) -> Any:
        return sig.dx_buffer()

    def forward(params: Params, x: Array, dx: Any) -> tuple[tuple, Any]:
        view = x.view()
        view.flags.writeable = False
        return (view,) * n, dx

    def backward(dx: Any, dy: tuple) -> tuple[Params, Array | None]:
        if dx is None:
            return EMPTY, None
        np.copyto(dx, dy[0])
        for d in dy[1:]:
            dx += d
        return EMPTY, dx

    def onnx(g: Any, params: Params, state: PyTree, x: str, input_shape: Any) -> tuple:
        return (x,) * n

    return Layer(name, init, forward, backward, check, buffers=buffers, onnx=onnx)


def fan_in_sum() -> Layer:
    """A tuple of inputs of one shape to their sum (stax's ``FanInSum``); backward hands
    each input the output's gradient. No params."""
    name = "fan_in_sum"

    def out_shape(input_shape: Any) -> Any:
        shapes = _branches(name, input_shape)
        if len(set(shapes)) != 1:
            raise ShapeError(f"{name}: the inputs must have one shape, got {fmt_shape(shapes)}")
        return shapes[0]

    init, check = without_params(name, out_shape)

    def buffers(params: Params, sig: Sig) -> Any:
        return sig.empty(sig.x_shape[0])

    def forward(params: Params, x: tuple, y: Array) -> tuple[Array, int]:
        np.copyto(y, x[0])
        for xi in x[1:]:
            y += xi
        return y, len(x)

    def backward(count: Any, dy: Array) -> tuple[Params, tuple]:
        view = dy.view()
        view.flags.writeable = False
        return EMPTY, (view,) * count

    def onnx(g: Any, params: Params, state: PyTree, x: tuple, input_shape: Any) -> str:
        return g.op("Sum", *x)

    return Layer(name, init, forward, backward, check, buffers=buffers, onnx=onnx)


def fan_in_concat(axis: int = 1) -> Layer:
    """A tuple of inputs to one array, joined along ``axis`` of the batched arrays (stax's
    ``FanInConcat``; the default 1 is the channels of NCHW images and the features of
    (N, F) vectors; negative counts from the end, 0 is the batch and refused); backward
    hands each input its slice of the output's gradient. No params."""
    name = "fan_in_concat"
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis == 0:
        raise InvalidValueError(f"{name}: axis must be a nonzero int (0 is the batch axis), got {axis!r}")
    axis = int(axis)

    def where(input_shape: Any) -> int:  # the axis of the per-sample shapes
        ndim = len(input_shape[0]) + 1
        if not -ndim <= axis < ndim:
            raise ShapeError(f"{name}: axis {axis} is out of range for inputs {fmt_shape(input_shape)}")
        return (axis % ndim) - 1

    def out_shape(input_shape: Any) -> Any:
        shapes, a = _branches(name, input_shape), where(_branches(name, input_shape))
        rest = {s[:a] + s[a + 1:] for s in shapes}
        if len({len(s) for s in shapes}) != 1 or len(rest) != 1:
            raise ShapeError(f"{name}: the inputs must agree on every axis but {axis}, got {fmt_shape(shapes)}")
        return (*shapes[0][:a], sum(s[a] for s in shapes), *shapes[0][a + 1:])

    init, check = without_params(name, out_shape)

    def buffers(params: Params, sig: Sig) -> Any:
        per_sample = tuple(s[1:] for s in sig.x_shape)
        a = where(per_sample) + 1
        bounds = np.cumsum([s[a] for s in sig.x_shape])[:-1]
        return sig.empty(with_batch(sig.x_shape[0][0], out_shape(per_sample))), a, tuple(int(b) for b in bounds)

    def forward(params: Params, x: tuple, buf: Any) -> tuple[Array, Any]:
        y, a, _ = buf
        return np.concatenate(x, axis=a, out=y), buf

    def backward(buf: Any, dy: Array) -> tuple[Params, tuple]:
        _, a, bounds = buf
        parts = np.split(dy, bounds, axis=a)
        for p in parts:
            p.flags.writeable = False
        return EMPTY, tuple(parts)

    def onnx(g: Any, params: Params, state: PyTree, x: tuple, input_shape: Any) -> str:
        return g.op("Concat", *x, axis=where(input_shape) + 1)

    return Layer(name, init, forward, backward, check, buffers=buffers, onnx=onnx)


def residual(block: Layer, shortcut: Layer | None = None) -> Layer:
    """``y = block(x) + shortcut(x)``; the shortcut is the identity by default.

    Give a shortcut (e.g. a 1x1 ``conv2d`` with a stride) when the block changes the
    shape. Params and state are ``{"block": ..., "shortcut": ...}``.
    """
    shortcut = shortcut if shortcut is not None else identity()
    for what, layer in (("block", block), ("shortcut", shortcut)):
        if not isinstance(layer, Layer):
            raise InvalidTypeError(f"residual: {what} is a {type(layer).__name__}, not a Layer")
    parts = (("block", block), ("shortcut", shortcut))
    stateful = (block.stateful, shortcut.stateful)

    def same(sb: Shape, ss: Shape) -> None:
        if tuple(sb) != tuple(ss):
            raise ShapeError(
                f"residual: block output {fmt_shape(sb)} does not match shortcut output {fmt_shape(ss)}; "
                "give a shortcut layer that maps the input to the block's output shape"
            )

    def init(key: Key, input_shape: Shape, dtype: np.dtype) -> tuple[Params, Shape]:
        k1, k2 = random.split(key)
        pb, sb = block.init(k1, input_shape, dtype=dtype)
        ps, ss = shortcut.init(k2, input_shape, dtype=dtype)
        same(sb, ss)
        return FrozenDict(block=pb, shortcut=ps), sb

    def check(params: Params, input_shape: Shape, dtype: np.dtype) -> Shape:
        check_keys("residual", params, ("block", "shortcut"))
        out = {}
        for k, layer in parts:
            try:
                out[k] = layer.output_shape(params[k], input_shape, dtype)
            except FnnetError as err:
                raise _reraise(err, f"residual/{k}") from None
        same(out["block"], out["shortcut"])
        return out["block"]

    def init_state(params: Params) -> PyTree:
        return FrozenDict((k, layer.init_state(params[k])) for (k, layer), s in zip(parts, stateful) if s)

    def buffers(params: Params, sig: Sig) -> Any:
        sites = tuple(prepare(layer, params[k], sig.child(k, sig.x_shape)) for k, layer in parts)
        y_shape = (sig.x_shape[0], *block.output_shape(params["block"], sig.x_shape[1:], sig.dtype))
        return SimpleNamespace(sites=sites, y=sig.empty(y_shape), dx=sig.dx_buffer(), grads=sig.grads)

    def forward(params: Params, x: Array, buf: Any, key: Key | None = None, state: PyTree = EMPTY) -> tuple[Any, ...]:
        outs, caches, new_state = _run_parts(parts, buf.sites, params, (x, x), key, state)
        y = np.add(outs[0], outs[1], out=buf.y)
        if new_state:
            return y, (caches, buf), FrozenDict(new_state)
        return y, (caches, buf)

    def backward(cache: Any, dy: Array) -> tuple[Params, Array | None]:
        caches, buf = cache
        dxb, dxs = (run_backward(site, c, dy) for site, c in zip(buf.sites, caches))
        return buf.grads, None if buf.dx is None else np.add(cast(Array, dxb), cast(Array, dxs), out=buf.dx)

    def onnx(g: Any, params: Params, state: PyTree, x: str, input_shape: Shape) -> str:
        yb, ys = (g.layer(k, layer, params[k], state[k] if layer.stateful else EMPTY, x, input_shape)[0]
                  for k, layer in parts)
        return g.op("Add", yb, ys)

    return Layer(
        "residual", init, forward, backward, check, buffers=buffers, onnx=onnx,
        init_state=init_state if any(stateful) else None, stochastic=block.stochastic or shortcut.stochastic,
        shard_sums=block.cuttable and shortcut.cuttable, children=parts,
    )
