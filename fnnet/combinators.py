"""Layers in, one Layer out: ``serial`` and the ``summary`` table."""

from __future__ import annotations

import numpy as np

from . import random
from ._errors import FnnetError
from .layers._base import Layer, check_init_dtype, fmt_shape
from .tree import FrozenDict, param_count


def _reraise(err: FnnetError, key: str) -> FnnetError:
    """The same error class with the sub-layer's key in front of the message."""
    new = type(err)(f"{key}: {err}")
    new.__cause__ = None
    return new


def serial(*layers: Layer) -> Layer:
    """Layers applied in sequence.

    Params are a dict keyed by ``"<layer name>_<index>"`` (``conv2d_0``, ``relu_1``...),
    the cache is the tuple of sub-caches, and backward runs in reverse. ``init`` splits
    its key once per layer.
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

    def apply(params, x, ws=None):
        caches = []
        for k, layer in children:
            x, cache = layer.apply(params[k], x, None if ws is None else ws.setdefault(k, {}))
            caches.append(cache)
        return x, tuple(caches)

    def backward(caches, dy, ws=None):
        grads = {}
        for (k, layer), cache in zip(reversed(children), reversed(caches)):
            grads[k], dy = layer.backward(cache, dy, None if ws is None else ws.setdefault(k, {}))
        return FrozenDict((k, grads[k]) for k in keys), dy

    return Layer("serial", init, apply, backward, check, children)


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
