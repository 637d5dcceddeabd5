"""Transforms: small composable steps of an optimizer, each a ``(init, update)`` pair.

The elementwise ones are per-array rules lifted by :func:`~fnnet.optim.elementwise`;
:func:`clip_by_global_norm` (a reduction over all leaves) and :func:`masked` (which
follows the params' structure) act on the tree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import kernels
from .._errors import InvalidTypeError, check_real
from ..tree import FrozenDict, tree_flatten, tree_leaves, tree_map, tree_unflatten
from ..typing import OptState, PyTree, Schedule
from ._base import GradientTransformation, check_rate, check_unit, count, scalar, value_at
from ._lift import elementwise

__all__ = ["add_decayed_weights", "clip_by_global_norm", "identity", "masked", "scale", "scale_by_adam",
           "scale_by_learning_rate", "scale_by_rms", "scale_by_rss", "scale_by_schedule", "set_to_zero", "trace",
           "track_ema"]


def _counter() -> Mapping[str, Any]:
    return {"count": count(0)}


def identity() -> GradientTransformation:
    """Updates pass through unchanged."""
    return elementwise(lambda ctx, u: (u, ()))


def set_to_zero() -> GradientTransformation:
    """All updates become zero: with :func:`masked`, freezes params."""
    return elementwise(lambda ctx, u: (np.zeros_like(u), ()))


def scale(factor: float) -> GradientTransformation:
    """``u -> factor * u``."""
    factor = check_real("scale", "factor", factor)
    return elementwise(lambda ctx, u: (u * factor, ()))


def scale_by_learning_rate(learning_rate: float | Schedule) -> GradientTransformation:
    """``u -> -lr(t) * u``, with ``t`` the number of updates already applied."""
    name = "scale_by_learning_rate"
    schedule = check_rate(name, learning_rate)

    def scalars() -> Mapping[str, Any]:
        return {"count": count(0), "learning_rate": scalar(value_at(name, "a learning rate", schedule, 0, 0.0))}

    def advance(state: Mapping) -> tuple[float, Mapping[str, Any]]:
        t = int(state["count"])
        lr = value_at(name, "a learning rate", schedule, t, low=0.0)
        return -lr, {"count": count(t + 1), "learning_rate": scalar(lr)}

    return elementwise(lambda neg_lr, u: (u * neg_lr, ()), scalars=scalars, advance=advance)


def trace(decay: float, nesterov: bool = False) -> GradientTransformation:
    """Momentum: ``m = u + decay * m``; emits ``m`` (or ``u + decay * m`` for Nesterov)."""
    decay = check_unit("trace", "decay", decay)

    def rule(ctx: None, u: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, tuple]:
        m = u + decay * t
        return (u + decay * m if nesterov else m), (m,)

    return elementwise(rule, {"trace": np.zeros_like})


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam's direction (Kingma & Ba 2015, Alg. 1) before the learning rate:

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``u = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`` with ``t`` counting from 1.
    """
    b1 = check_unit("scale_by_adam", "b1", b1, closed=False)
    b2 = check_unit("scale_by_adam", "b2", b2, closed=False)
    eps = check_real("scale_by_adam", "eps", eps, low=0.0)

    def advance(state: Mapping) -> tuple[tuple[float, float], Mapping[str, Any]]:
        t = int(state["count"]) + 1
        return (1.0 - b1**t, 1.0 - b2**t), {"count": count(t)}

    def rule(c: tuple[float, float], g: np.ndarray, m: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, tuple]:
        u, mu, nu = kernels.adam_update(g, m, v, b1, b2, eps, *c)  # (one compiled pass; numpy's bits)
        return u, (mu, nu)

    return elementwise(rule, {"mu": np.zeros_like, "nu": np.zeros_like}, scalars=_counter, advance=advance)


def scale_by_schedule(schedule: Schedule) -> GradientTransformation:
    """``u -> schedule(t) * u``, with ``t`` the number of updates already applied."""
    if not callable(schedule):
        raise InvalidTypeError(f"scale_by_schedule: schedule must be a callable step -> value, got {schedule!r}")

    def advance(state: Mapping) -> tuple[float, Mapping[str, Any]]:
        t = int(state["count"])
        return value_at("scale_by_schedule", "a scale factor", schedule, t), {"count": count(t + 1)}

    return elementwise(lambda factor, u: (u * factor, ()), scalars=_counter, advance=advance)


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8) -> GradientTransformation:
    """RMSprop's direction: ``nu = decay nu + (1-decay) g^2``, ``u = g / (sqrt(nu) + eps)``."""
    decay = check_unit("scale_by_rms", "decay", decay, closed=False)
    eps = check_real("scale_by_rms", "eps", eps, low=0.0)

    def rule(ctx: None, g: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, tuple]:
        nu = decay * v + (1 - decay) * (g * g)
        return g / (np.sqrt(nu) + eps), (nu,)

    return elementwise(rule, {"nu": np.zeros_like})


def scale_by_rss(initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> GradientTransformation:
    """Adagrad's direction: ``s = s + g^2`` (from ``initial_accumulator_value``),
    ``u = g / (sqrt(s) + eps)``."""
    init_value = check_real("scale_by_rss", "initial_accumulator_value", initial_accumulator_value, low=0.0)
    eps = check_real("scale_by_rss", "eps", eps, low=0.0)

    def rule(ctx: None, g: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, tuple]:
        s = a + g * g
        return g / (np.sqrt(s) + eps), (s,)

    return elementwise(rule, {"sum_of_squares": lambda p: np.full_like(p, init_value)})


def add_decayed_weights(
    weight_decay: float, mask: PyTree | Callable[[PyTree], PyTree] = None
) -> GradientTransformation:
    """``u -> u + weight_decay * params`` (decoupled weight decay, applied before the
    learning rate). ``mask`` (a tree of bools like params, or ``params -> tree``) limits
    it to some leaves, e.g. ``lambda p: tree_map(lambda a: a.ndim > 1, p)`` skips biases."""
    weight_decay = check_real("add_decayed_weights", "weight_decay", weight_decay, low=0.0)
    t = elementwise(lambda ctx, u, p: (u + weight_decay * p, ()), needs_params="add_decayed_weights")
    return t if mask is None else masked(t, mask)


def track_ema(decay: float) -> GradientTransformation:
    """Keep an exponential moving average of the params in the state, for evaluation
    (Polyak averaging): after update ``t`` (counting from 0),
    ``ema = d_t * ema + (1 - d_t) * params'`` with ``params' = params + updates`` and
    ``d_t = min(decay, (1 + t) / (10 + t))``, starting from the initial params. The
    warm-up of ``d_t`` (as TensorFlow's ``ExponentialMovingAverage(num_updates=...)``)
    keeps a short run's average from clinging to the initial params. Put it last in a
    :func:`~fnnet.optim.chain`, where it sees the final updates; updates pass through
    unchanged. :func:`~fnnet.optim.params_ema` reads the average from an optimizer state."""
    decay = check_unit("track_ema", "decay", decay, closed=False)

    def advance(state: Mapping) -> tuple[float, Mapping[str, Any]]:
        t = int(state["count"])
        return min(decay, (1 + t) / (10 + t)), {"count": count(t + 1)}

    def rule(d: float, u: np.ndarray, e: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, tuple]:
        return u, (d * e + (1 - d) * (p + u),)

    return elementwise(rule, {"ema": np.array}, scalars=_counter, advance=advance, needs_params="track_ema")


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale all updates by ``max_norm / global_norm`` when their global L2 norm exceeds
    ``max_norm`` (the norm over all leaves together)."""
    max_norm = check_real("clip_by_global_norm", "max_norm", max_norm, low=0.0, low_open=True)

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        # (a sum over the leaves, in their order: its bits follow the tree, not one vector)
        norm = float(np.sqrt(sum(np.vdot(u, u).real for u in tree_leaves(updates))))
        if norm <= max_norm:
            return updates, state
        factor = max_norm / norm
        return tree_map(lambda u: u * factor, updates), state

    return GradientTransformation(lambda params: FrozenDict(), update)


def masked(inner: GradientTransformation, mask: PyTree | Callable[[PyTree], PyTree]) -> GradientTransformation:
    """Apply ``inner`` to the leaves where ``mask`` is True; other updates pass through.

    ``mask`` is a tree of bools with the structure of params, or a function
    ``params -> mask``. ``inner`` sees (and keeps state for) a tuple of the selected
    leaves. Freeze params with ``masked(set_to_zero(), frozen)`` first in a chain.
    """
    if not isinstance(inner, GradientTransformation):
        raise InvalidTypeError(f"masked: inner is a {type(inner).__name__}, not a GradientTransformation")

    def flags(tree: PyTree) -> list[bool]:
        m = mask(tree) if callable(mask) else mask
        tree_map(lambda a, b: None, tree, m)  # the same structure, or an error naming the path
        return [bool(b) for b in tree_leaves(m)]

    def select(tree: PyTree, fl: list[bool]) -> tuple[Any, ...]:
        return tuple(leaf for leaf, keep in zip(tree_leaves(tree), fl) if keep)

    def init(params: PyTree) -> OptState:
        return FrozenDict(inner=inner.init(select(params, flags(params))))

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        fl = flags(updates if params is None else params)
        leaves, treedef = tree_flatten(updates)
        sub_params = None if params is None else select(params, fl)
        new_sel, inner_state = inner.update(select(updates, fl), state["inner"], sub_params)
        it = iter(tree_leaves(new_sel))
        merged = [next(it) if keep else leaf for leaf, keep in zip(leaves, fl)]
        return tree_unflatten(treedef, merged), FrozenDict(inner=inner_state)

    return GradientTransformation(init, update)
