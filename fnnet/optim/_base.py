"""The core protocol: a :class:`GradientTransformation` is a plain ``(init, update)`` pair.

* ``init(params) -> state``
* ``update(updates, state, params=None) -> (updates, state)``

:func:`chain` composes them left to right and :func:`apply_updates` adds the final
updates to the params. States are pytrees (FrozenDicts and tuples of arrays), so they can
be checkpointed and compared. The readers :func:`learning_rate` and :func:`params_ema`
find what a state records.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from .._errors import InvalidTypeError, InvalidValueError, as_float, check_real
from ..flat import flat_of
from ..tree import tree_leaves_with_path, tree_map
from ..typing import OptState, Params, PyTree, Schedule

__all__ = ["GradientTransformation", "apply_updates", "chain", "learning_rate", "params_ema"]


class _Pair(NamedTuple):
    init: Callable[[PyTree], OptState]
    update: Callable[..., tuple[PyTree, OptState]]  # (updates, state, params=None)


class GradientTransformation(_Pair):
    """``init(params) -> state`` and ``update(updates, state, params=None) -> (updates, state)``:
    a plain pair (a NamedTuple, as optax's). A per-array rule becomes one with
    :func:`fnnet.optim.elementwise`, which runs it on all params at once."""

    __slots__ = ()

    def __new__(cls, init: Callable[[PyTree], OptState], update: Callable[..., tuple[PyTree, OptState]],
                elementwise: Any = None) -> GradientTransformation:
        if elementwise is not None:  # (0.2.0's flag, which callers branched on)
            warnings.warn("GradientTransformation(elementwise=) is gone: a transform is an (init, update) pair; "
                          "write a per-array rule with fnnet.optim.elementwise to run it on all params at once",
                          DeprecationWarning, stacklevel=2)
        return super().__new__(cls, init, update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in order; the state is the tuple of their states."""
    for i, t in enumerate(transforms):
        if not isinstance(t, GradientTransformation):
            raise InvalidTypeError(f"chain: argument {i} is a {type(t).__name__}, not a GradientTransformation")

    def init(params: PyTree) -> OptState:
        return tuple(t.init(params) for t in transforms)

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        new_state = []
        for t, s in zip(transforms, state):
            updates, s = t.update(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def apply_updates(params: Params, updates: PyTree) -> Params:
    """``params + updates`` leafwise, as new read-only arrays of the params' dtypes (one
    addition over all params when ``updates`` are views of one vector, as an elementwise
    transform returns them)."""
    found = flat_of(updates)
    if found is not None:
        vector, layout = found
        flat = layout.flat(params)
        if flat is not None:  # (the params' dtype: updates of another dtype are cast, as leaf by leaf)
            same = vector.dtype is flat.dtype
            return layout.unpack(np.add(flat, vector) if same else np.add(flat, vector, dtype=flat.dtype))

    def add(p: np.ndarray, u: np.ndarray) -> np.ndarray:
        out = np.add(p, u, dtype=p.dtype)
        out.flags.writeable = False
        return out

    return tree_map(add, params, updates)


def params_ema(state: OptState) -> PyTree | None:
    """The moving average of the params that :func:`~fnnet.optim.track_ema` keeps in an
    optimizer state (its last ``"ema"`` entry), or None if the state keeps none."""
    found = None

    def walk(node: Any) -> None:
        nonlocal found
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k == "ema":
                    found = v
                else:
                    walk(v)
        elif isinstance(node, (tuple, list)):
            for v in node:
                walk(v)

    walk(state)
    return found


def learning_rate(state: OptState) -> float | None:
    """The learning rate of the latest update recorded in an optimizer state (its last
    ``"learning_rate"`` entry), or None if the state records none."""
    rates = [leaf for path, leaf in tree_leaves_with_path(state) if path and path[-1] == "learning_rate"]
    return float(rates[-1]) if rates else None


# -- what the transforms share ------------------------------------------------------------

_INT64, _FLOAT64 = np.dtype(np.int64), np.dtype(np.float64)


def count(n: int) -> np.ndarray:
    """A state's step counter: a read-only int64 0-d array."""
    c = np.array(n, _INT64)
    c.setflags(write=False)  # (setflags is twice as fast as the flags attribute; per step)
    return c


def scalar(v: float) -> np.ndarray:
    """A state's float entry (a learning rate): a read-only float64 0-d array."""
    a = np.array(v, _FLOAT64)
    a.setflags(write=False)
    return a


def check_rate(name: str, value: Any) -> Schedule:
    """A float becomes a constant schedule; a callable is taken as a schedule (its values
    are checked at each step by :func:`value_at`)."""
    if callable(value):
        return value
    rate = check_real(name, "learning_rate", value, low=0.0)
    return lambda step: rate


def value_at(name: str, what: str, schedule: Schedule, step: int, low: float | None = None) -> float:
    """``schedule(step)`` as a float, or an error before it is used if it is NaN, inf or
    below ``low`` (a negative rate trains the wrong way, an inf one makes NaN params)."""
    value = schedule(step)
    v = as_float(value)
    if not math.isfinite(v) or (low is not None and v < low):
        bound = "" if low is None else f" >= {low:g}"
        raise InvalidValueError(
            f"{name}: the schedule gave {value!r} at step {step}; {what} must be a finite number{bound}"
        )
    return v


def check_unit(name: str, what: str, value: float, closed: bool = True) -> float:
    """A hyper-parameter in [0, 1] (``closed``) or [0, 1)."""
    return check_real(name, what, value, 0.0, 1.0, high_open=not closed)
