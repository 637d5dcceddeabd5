"""Layers in, one Layer out: ``serial``, ``residual``; and the ``summary`` table.

A combinator's buffers hook prepares its sub-layers (:func:`fnnet.layers._layer.prepare`)
and its forward and backward run them through the runner, so every sub-layer is
checked and sped up as a top-level layer is.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from .. import random
from .._errors import FnnetError, InvalidTypeError, InvalidValueError, ShapeError
from ..random import Key
from ..tree import EMPTY, FrozenDict, param_count
from ..typing import Array, DTypeLike, Params, PyTree, Shape
from ._checks import check_keys, fmt_shape
from ._fuse import prepare_chain
from ._layer import Layer, Sig, prepare, run, run_backward, run_chain, run_chain_backward
from .reshape import identity


def _reraise(err: FnnetError, key: str) -> FnnetError:
    """The same error class with the sub-layer's key in front of the message."""
    new = type(err)(f"{key}: {err}")
    new.__cause__ = None
    return new


def serial(*layers: Layer) -> Layer:
    """Layers applied in sequence.

    Params are a dict keyed by ``"<layer name>_<index>"`` (``conv2d_0``, ``relu_1``...),
    and backward runs in reverse. ``init`` splits its key once per layer, and so does
    the forward pass for random layers (dropout). The state is a dict with an entry for
    each layer that has state (batch norm). The runs ``conv2d|dense|batch_norm -> relu
    [-> max_pool2d]`` run fused, with the bits of the layers run one by one
    (``fnnet/layers/_fuse.py``).
    """
    if not layers:
        raise InvalidValueError("serial: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise InvalidTypeError(
                f"serial: argument {i} is a {type(layer).__name__}, not a Layer (did you forget the ()?)"
            )
    names = tuple(f"{layer.name}_{i}" for i, layer in enumerate(layers))
    children = tuple(zip(names, layers))
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
        subkeys = random.split(key) if key is not None else (None, None)
        outs, caches, new_state = [], [], {}
        for (k, _), site, sub, has_state in zip(parts, buf.sites, subkeys, stateful):
            y, cache, s = run(site, params[k], x, sub, state[k] if has_state else EMPTY)
            outs.append(y)
            caches.append(cache)
            if has_state:
                new_state[k] = s
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
        shard_sums=block.cuttable and shortcut.cuttable,
    )


def summary(
    model: Layer, input_shape: tuple, dtype: DTypeLike = np.float32, *, print_fn: Callable[[str], Any] = print
) -> str:
    """A table of layers, output shapes and parameter counts; printed and returned.

    Shapes are found without data, by ``init`` with a fixed key.
    """
    rows = [("layer", "output shape", "params")]
    total = 0

    def walk(layer: Layer, key_name: str, shape: tuple, prefix: str) -> tuple:
        nonlocal total
        if layer.children:
            for k, child in layer.children:
                shape = walk(child, k, shape, prefix + key_name + "/" if key_name else prefix)
            return shape
        params, shape = layer.init(random.key(0), shape, dtype=dtype)
        count = param_count(params)
        total += count
        rows.append((prefix + (key_name or layer.name), fmt_shape(shape), f"{count:,}"))
        return shape

    walk(model, "", tuple(input_shape), "")
    rows.append(("total", "", f"{total:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    line = "-" * (sum(widths) + 4)
    fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
    out = "\n".join([fmt(rows[0]), line, *map(fmt, rows[1:-1]), line, fmt(rows[-1])])
    print_fn(out)
    return out

