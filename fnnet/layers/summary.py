"""``summary``: a model's layers, output shapes and parameter counts as a table, found
from the input shape alone (``init`` with a fixed key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import random
from ..tree import param_count
from ..typing import DTypeLike
from ._checks import fmt_shape, is_multi
from ._layer import Layer

__all__ = ["summary"]


def summary(
    model: Layer, input_shape: tuple, dtype: DTypeLike = np.float32, *, print_fn: Callable[[str], Any] = print
) -> str:
    """A table of layers, output shapes and parameter counts; printed and returned.

    Shapes are found without data, by ``init`` with a fixed key. The layers of ``serial``
    are rows in turn; the branches of ``parallel`` and ``residual`` are rows each, under
    their path (``parallel_1/conv2d_0``, ``residual_2/shortcut``).
    """
    rows = [("layer", "output shape", "params")]
    total = 0

    def walk(layer: Layer, key_name: str, shape: tuple, prefix: str) -> tuple:
        nonlocal total
        inner = prefix + key_name + "/" if key_name else prefix
        if layer.name == "serial" and layer.children:
            for k, child in layer.children:
                shape = walk(child, k, shape, inner)
            return shape
        if layer.name == "parallel" and layer.children and is_multi(shape):
            return tuple(walk(child, k, s, inner) for (k, child), s in zip(layer.children, shape))
        if layer.name == "residual" and layer.children:
            return [walk(child, k, shape, inner) for k, child in layer.children][0]
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

