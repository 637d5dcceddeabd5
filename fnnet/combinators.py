"""Layers in, one Layer out: ``serial``, ``residual``; and the ``summary`` table."""

from __future__ import annotations

import numpy as np

from . import random
from ._errors import FnnetError, ShapeError
from .layers._base import NO_STATE, Layer, bind, buffer, check_init_dtype, fmt_shape
from .layers.reshape import identity
from .tree import FrozenDict, param_count


def _reraise(err: FnnetError, key: str) -> FnnetError:
    """The same error class with the sub-layer's key in front of the message."""
    new = type(err)(f"{key}: {err}")
    new.__cause__ = None
    return new


def _sub(ws: dict | None, key: str) -> dict | None:
    """The workspace of a sub-layer (created on first use), or None without a workspace."""
    if ws is None:
        return None
    sub = ws.get(key)
    if sub is None:
        sub = ws[key] = {}
    return sub


def serial(*layers: Layer) -> Layer:
    """Layers applied in sequence.

    Params are a dict keyed by ``"<layer name>_<index>"`` (``conv2d_0``, ``relu_1``...),
    the cache is the tuple of sub-caches, and backward runs in reverse. ``init`` splits
    its key once per layer, and so does the forward pass for random layers (dropout).
    The state is a dict with an entry for each layer that has state (batch norm).
    """
    if not layers:
        raise ValueError("serial: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is a {type(layer).__name__}, not a Layer (did you forget the ()?)")
    keys = tuple(f"{layer.name}_{i}" for i, layer in enumerate(layers))
    children = tuple(zip(keys, layers))

    def init(key, input_shape, *, dtype=np.float32):
        dtype = check_init_dtype("serial", dtype)
        params, shape = {}, tuple(input_shape)
        for (k, layer), sub in zip(children, random.split(key, len(layers))):
            try:
                params[k], shape = layer.init(sub, shape, dtype=dtype)
            except FnnetError as err:
                raise _reraise(err, k) from None
        return FrozenDict(params), shape

    def check(params, input_shape, dtype):
        shape = tuple(input_shape)
        for k, layer in children:
            try:
                shape = layer.check(params[k], shape, dtype)
            except FnnetError as err:
                raise _reraise(err, k) from None
        return shape

    stateful = tuple(layer.stateful for layer in layers)
    stochastic = any(layer.stochastic for layer in layers)

    def init_state(params):
        return FrozenDict((k, layer.init_state(params[k])) for (k, layer), s in zip(children, stateful) if s)

    def apply(params, state, x, ws=None, key=None, train=True):
        caches, new_state = [], {}
        keys = random.split(key, len(layers)) if stochastic and key is not None else (None,) * len(layers)
        for (k, layer), has_state, sub in zip(children, stateful, keys):
            x, cache, s = layer.apply(params[k], state[k] if has_state else NO_STATE, x, _sub(ws, k), sub, train)
            caches.append(cache)
            if has_state:
                new_state[k] = s
        return x, tuple(caches), FrozenDict(new_state) if new_state else NO_STATE

    def backward_from(caches, dy, ws, need_dx):
        """Layers n..1; the first may skip its input gradient when it is not needed."""
        grads = {}
        (k0, first), *rest = children
        for (k, layer), cache in zip(reversed(rest), reversed(caches[1:])):
            grads[k], dy = layer.backward(cache, dy, _sub(ws, k))
        if need_dx:
            grads[k0], dy = first.backward(caches[0], dy, _sub(ws, k0))
        else:
            grads[k0], dy = first.param_grads(caches[0], dy, _sub(ws, k0)), None
        return FrozenDict((k, grads[k]) for k in keys), dy

    def backward(caches, dy, ws=None):
        return backward_from(caches, dy, ws, True)

    def grad_params(caches, dy, ws=None):
        return backward_from(caches, dy, ws, False)[0]

    def bind_(params, grads, x_shape, dtype, need_dx):
        forwards, backwards, shape = [], [], tuple(x_shape)
        for i, (k, layer) in enumerate(children):
            f, b = bind(layer, params[k], grads[k], shape, dtype, need_dx or i > 0)
            forwards.append(f)
            backwards.append(b)
            shape = (shape[0], *layer.check(params[k], shape[1:], dtype))
        backwards.reverse()

        def forward(x):
            for f in forwards:
                x = f(x)
            return x

        def backward(dy):
            for b in backwards:
                dy = b(dy)
            return dy

        return forward, backward

    return Layer(
        "serial", init, apply, backward, check, children, init_state, any(stateful), stochastic, grad_params, bind_
    )


def residual(block: Layer, shortcut: Layer | None = None) -> Layer:
    """``y = block(x) + shortcut(x)``; the shortcut is the identity by default.

    Give a shortcut (e.g. a 1x1 ``conv2d`` with a stride) when the block changes the
    shape. Params and state are ``{"block": ..., "shortcut": ...}``.
    """
    shortcut = shortcut if shortcut is not None else identity()
    for what, layer in (("block", block), ("shortcut", shortcut)):
        if not isinstance(layer, Layer):
            raise TypeError(f"residual: {what} is a {type(layer).__name__}, not a Layer")
    parts = (("block", block), ("shortcut", shortcut))
    stochastic = block.stochastic or shortcut.stochastic

    def init(key, input_shape, *, dtype=np.float32):
        k1, k2 = random.split(key)
        pb, sb = block.init(k1, input_shape, dtype=dtype)
        ps, ss = shortcut.init(k2, input_shape, dtype=dtype)
        _same(sb, ss)
        return FrozenDict(block=pb, shortcut=ps), sb

    def _same(sb, ss):
        if tuple(sb) != tuple(ss):
            raise ShapeError(
                f"residual: block output {fmt_shape(sb)} does not match shortcut output {fmt_shape(ss)}; "
                "give a shortcut layer that maps the input to the block's output shape"
            )

    def check(params, input_shape, dtype):
        out = {}
        for k, layer in parts:
            try:
                out[k] = layer.check(params[k], input_shape, dtype)
            except FnnetError as err:
                raise _reraise(err, f"residual/{k}") from None
        _same(out["block"], out["shortcut"])
        return out["block"]

    def init_state(params):
        return FrozenDict((k, layer.init_state(params[k])) for k, layer in parts if layer.stateful)

    def apply(params, state, x, ws=None, key=None, train=True):
        keys = random.split(key) if stochastic and key is not None else (None, None)
        outs, caches, new_state = [], [], {}
        for (k, layer), sub in zip(parts, keys):
            y, c, s = layer.apply(
                params[k], state[k] if layer.stateful else NO_STATE, x,
                _sub(ws, k), sub, train,
            )
            outs.append(y)
            caches.append(c)
            if layer.stateful:
                new_state[k] = s
        y = np.add(outs[0], outs[1], out=buffer(ws, "y", outs[0].shape, outs[0].dtype))
        return y, tuple(caches), FrozenDict(new_state) if new_state else NO_STATE

    def backward(caches, dy, ws=None):
        gb, dxb = block.backward(caches[0], dy, _sub(ws, "block"))
        gs, dxs = shortcut.backward(caches[1], dy, _sub(ws, "shortcut"))
        return FrozenDict(block=gb, shortcut=gs), np.add(dxb, dxs, out=buffer(ws, "dx", dxb.shape, dxb.dtype))

    return Layer(
        "residual", init, apply, backward, check,
        init_state=init_state, stateful=block.stateful or shortcut.stateful, stochastic=stochastic,
    )


def summary(model: Layer, input_shape: tuple, dtype=np.float32, *, print_fn=print) -> str:
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
