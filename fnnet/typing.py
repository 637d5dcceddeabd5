"""The types of fnnet's API, for annotations and type checkers.

Trees are nested mappings, tuples and lists of arrays; a type checker cannot follow a
tree's structure, so :data:`PyTree` is ``Any`` under a name that says what is meant,
and :data:`Params` is the one kind of tree with a fixed outer shape: a mapping. The
layer protocol's function types (``InitFn``, ``ForwardFn``...) live with the runner,
in :mod:`fnnet.layers`. This module imports nothing of fnnet's: everything may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "Array",
    "Batch",
    "DTypeLike",
    "LossFn",
    "Metrics",
    "OptState",
    "Params",
    "PyTree",
    "Schedule",
    "Shape",
]

Array: TypeAlias = np.ndarray
"""A numpy array (params and gradients are float32 or float64; labels are integers)."""

Shape: TypeAlias = tuple[int, ...]
"""An array shape; the shapes given to ``init`` exclude the batch axis."""

DTypeLike: TypeAlias = npt.DTypeLike
"""Anything ``np.dtype`` accepts (``np.float32``, ``"float64"``...)."""

PyTree: TypeAlias = Any
"""A nested structure of mappings, tuples and lists whose leaves are (usually) arrays."""

Params: TypeAlias = Mapping[str, Any]
"""A model's or layer's params: a mapping (a FrozenDict) of arrays and sub-mappings."""

OptState: TypeAlias = Any
"""An optimizer state: a tree of arrays (FrozenDicts and tuples)."""

Batch: TypeAlias = tuple[Array, Array]
"""``(inputs, labels)`` with the batch axis first in both."""

Metrics: TypeAlias = dict[str, float]
"""What a step reports: ``"loss"`` and, for class labels, ``"accuracy"``."""

Schedule: TypeAlias = Callable[[int], float]
"""A learning-rate (or scale) schedule: the number of updates applied -> a value."""

LossFn: TypeAlias = Callable[[Array, Array], tuple[float | Array, Array]]
"""``loss(outputs, labels) -> (value, d_outputs)``; the value a float or a 0-d array."""
