"""Optimizers as composable gradient transformations, in the style of optax.

A :class:`GradientTransformation` is a pair of pure functions:

* ``init(params) -> state``
* ``update(updates, state, params=None) -> (updates, state)``

``chain`` composes them left to right; :func:`apply_updates` adds the final updates to
the params. States are pytrees (FrozenDicts and tuples of arrays), so they can be
checkpointed and compared. Learning rates are floats or schedules ``step -> value``;
``state["learning_rate"]`` holds the rate of the latest update, for logging.

Transforms flagged ``elementwise=True`` act on each element independently, so
:func:`fnnet.jit` may run them on all params packed in one flat buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from ._errors import InvalidTypeError, InvalidValueError, as_float, check_int, check_real
from .tree import FrozenDict, tree_flatten, tree_leaves, tree_leaves_with_path, tree_map, tree_unflatten
from .typing import OptState, Params, PyTree, Schedule

__all__ = [
    "GradientTransformation",
    "Schedule",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "piecewise_constant",
    "identity",
    "inverse_time_decay",
    "keras_sgd",
    "learning_rate",
    "masked",
    "params_ema",
    "rmsprop",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "set_to_zero",
    "sgd",
    "trace",
    "track_ema",
]



@attrs.frozen
class GradientTransformation:
    """``init(params) -> state`` and ``update(updates, state, params=None) -> (updates, state)``."""

    init: Callable[[PyTree], OptState]
    update: Callable[..., tuple[PyTree, OptState]]  # (updates, state, params=None)
    elementwise: bool = False


_INT64, _FLOAT64 = np.dtype(np.int64), np.dtype(np.float64)


def _count(n: int) -> np.ndarray:
    c = np.array(n, _INT64)
    c.setflags(write=False)  # (setflags is twice as fast as the flags attribute; per step)
    return c


def _scalar(v: float) -> np.ndarray:
    a = np.array(v, _FLOAT64)
    a.setflags(write=False)
    return a


def _zeros_like(tree: Any) -> Any:
    return tree_map(np.zeros_like, tree)


def _check_rate(name: str, value: Any) -> Schedule:
    """A float becomes a constant schedule; a callable is taken as a schedule (its values
    are checked at each step by :func:`_value_at`)."""
    if callable(value):
        return value
    return constant(check_real(name, "learning_rate", value, low=0.0))


def _value_at(name: str, what: str, schedule: Schedule, step: int, low: float | None = None) -> float:
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


def _check_unit(name: str, what: str, value: float, closed: bool = True) -> float:
    return check_real(name, what, value, 0.0, 1.0, high_open=not closed)


# -- schedules ---------------------------------------------------------------------------


def constant(value: float) -> Schedule:
    """``step -> value``."""
    value = check_real("constant", "value", value)
    return lambda step: value


def inverse_time_decay(init_value: float, decay: float) -> Schedule:
    """``step -> init_value / (1 + decay * step)`` (Keras' legacy ``decay``)."""
    init_value = check_real("inverse_time_decay", "init_value", init_value)
    decay = check_real("inverse_time_decay", "decay", decay, low=0.0)
    return lambda step: init_value / (1.0 + decay * step)


def exponential_decay(init_value: float, decay_rate: float, transition_steps: int, staircase: bool = False) -> Schedule:
    """``step -> init_value * decay_rate ** (step / transition_steps)`` (floored if ``staircase``)."""
    init_value = check_real("exponential_decay", "init_value", init_value)
    decay_rate = check_real("exponential_decay", "decay_rate", decay_rate, low=0.0, low_open=True)
    transition_steps = check_int("exponential_decay", "transition_steps", transition_steps, 1)

    def schedule(step: int) -> float:
        p = step // transition_steps if staircase else step / transition_steps
        return init_value * decay_rate**p

    return schedule


def piecewise_constant(boundaries: list[int], values: list[float]) -> Schedule:
    """``values[i]`` for ``boundaries[i-1] <= step < boundaries[i]`` (``len(values) == len(boundaries) + 1``)."""
    boundaries = [check_int("piecewise_constant", f"boundaries[{i}]", b, 0) for i, b in enumerate(boundaries)]
    values = [check_real("piecewise_constant", f"values[{i}]", v) for i, v in enumerate(values)]
    if len(values) != len(boundaries) + 1 or boundaries != sorted(boundaries):
        raise InvalidValueError(
            f"piecewise_constant: needs sorted boundaries and one more value than boundaries, got boundaries "
            f"{boundaries} and {len(values)} values"
        )
    return lambda step: values[int(np.searchsorted(boundaries, step, side="right"))]


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0, warmup_steps: int = 0) -> Schedule:
    """Linear warm-up from 0 over ``warmup_steps``, then half a cosine from ``init_value``
    down to ``alpha * init_value`` at ``decay_steps`` (counted after the warm-up), then flat."""
    init_value = check_real("cosine_decay", "init_value", init_value)
    alpha = check_real("cosine_decay", "alpha", alpha, 0.0, 1.0)
    decay_steps = check_int("cosine_decay", "decay_steps", decay_steps, 1)
    warmup_steps = check_int("cosine_decay", "warmup_steps", warmup_steps, 0)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return init_value * step / warmup_steps
        t = min(step - warmup_steps, decay_steps) / decay_steps
        return init_value * (alpha + (1 - alpha) * 0.5 * (1 + np.cos(np.pi * t)))

    return schedule


# -- transforms --------------------------------------------------------------------------


def identity() -> GradientTransformation:
    """Updates pass through unchanged."""
    return GradientTransformation(lambda params: FrozenDict(), lambda u, s, p=None: (u, s), elementwise=True)


def scale(factor: float) -> GradientTransformation:
    """``u -> factor * u``."""
    factor = check_real("scale", "factor", factor)

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        return tree_map(lambda u: u * factor, updates), state

    return GradientTransformation(lambda params: FrozenDict(), update, elementwise=True)


def scale_by_learning_rate(learning_rate: float | Schedule) -> GradientTransformation:
    """``u -> -lr(t) * u``, with ``t`` the number of updates already applied."""
    name = "scale_by_learning_rate"
    schedule = _check_rate(name, learning_rate)

    def init(params: PyTree) -> OptState:
        return FrozenDict(count=_count(0), learning_rate=_scalar(_value_at(name, "a learning rate", schedule, 0, 0.0)))

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        t = int(state["count"])
        lr = _value_at(name, "a learning rate", schedule, t, low=0.0)
        new = tree_map(lambda u: u * -lr, updates)
        return new, FrozenDict(count=_count(t + 1), learning_rate=_scalar(lr))

    return GradientTransformation(init, update, elementwise=True)


def trace(decay: float, nesterov: bool = False) -> GradientTransformation:
    """Momentum: ``m = u + decay * m``; emits ``m`` (or ``u + decay * m`` for Nesterov)."""
    decay = _check_unit("trace", "decay", decay)

    def init(params: PyTree) -> OptState:
        return FrozenDict(trace=_zeros_like(params))

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        m = tree_map(lambda u, t: u + decay * t, updates, state["trace"])
        out = tree_map(lambda u, t: u + decay * t, updates, m) if nesterov else m
        return out, FrozenDict(trace=m)

    return GradientTransformation(init, update, elementwise=True)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam's direction (Kingma & Ba 2015, Alg. 1) before the learning rate:

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``u = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`` with ``t`` counting from 1.
    """
    b1 = _check_unit("scale_by_adam", "b1", b1, closed=False)
    b2 = _check_unit("scale_by_adam", "b2", b2, closed=False)
    eps = check_real("scale_by_adam", "eps", eps, low=0.0)

    def init(params: PyTree) -> OptState:
        return FrozenDict(count=_count(0), mu=_zeros_like(params), nu=_zeros_like(params))

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        t = int(state["count"]) + 1
        mu = tree_map(lambda g, m: b1 * m + (1 - b1) * g, updates, state["mu"])
        nu = tree_map(lambda g, v: b2 * v + (1 - b2) * (g * g), updates, state["nu"])
        c1, c2 = 1.0 - b1**t, 1.0 - b2**t
        out = tree_map(lambda m, v: (m / c1) / (np.sqrt(v / c2) + eps), mu, nu)
        return out, FrozenDict(count=_count(t), mu=mu, nu=nu)

    return GradientTransformation(init, update, elementwise=True)


def scale_by_schedule(schedule: Schedule) -> GradientTransformation:
    """``u -> schedule(t) * u``, with ``t`` the number of updates already applied."""
    if not callable(schedule):
        raise InvalidTypeError(f"scale_by_schedule: schedule must be a callable step -> value, got {schedule!r}")

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        t = int(state["count"])
        factor = _value_at("scale_by_schedule", "a scale factor", schedule, t)
        return tree_map(lambda u: u * factor, updates), FrozenDict(count=_count(t + 1))

    return GradientTransformation(lambda params: FrozenDict(count=_count(0)), update, elementwise=True)


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8) -> GradientTransformation:
    """RMSprop's direction: ``nu = decay nu + (1-decay) g^2``, ``u = g / (sqrt(nu) + eps)``."""
    decay = _check_unit("scale_by_rms", "decay", decay, closed=False)
    eps = check_real("scale_by_rms", "eps", eps, low=0.0)

    def init(params: PyTree) -> OptState:
        return FrozenDict(nu=_zeros_like(params))

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        nu = tree_map(lambda g, v: decay * v + (1 - decay) * (g * g), updates, state["nu"])
        return tree_map(lambda g, v: g / (np.sqrt(v) + eps), updates, nu), FrozenDict(nu=nu)

    return GradientTransformation(init, update, elementwise=True)


def scale_by_rss(initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> GradientTransformation:
    """Adagrad's direction: ``s = s + g^2`` (from ``initial_accumulator_value``),
    ``u = g / (sqrt(s) + eps)``."""
    init_value = check_real("scale_by_rss", "initial_accumulator_value", initial_accumulator_value, low=0.0)
    eps = check_real("scale_by_rss", "eps", eps, low=0.0)

    def init(params: PyTree) -> OptState:
        return FrozenDict(sum_of_squares=tree_map(lambda p: np.full_like(p, init_value), params))

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        s = tree_map(lambda g, a: a + g * g, updates, state["sum_of_squares"])
        return tree_map(lambda g, a: g / (np.sqrt(a) + eps), updates, s), FrozenDict(sum_of_squares=s)

    return GradientTransformation(init, update, elementwise=True)


def add_decayed_weights(
    weight_decay: float, mask: PyTree | Callable[[PyTree], PyTree] = None
) -> GradientTransformation:
    """``u -> u + weight_decay * params`` (decoupled weight decay, applied before the
    learning rate). ``mask`` (a tree of bools like params, or ``params -> tree``) limits
    it to some leaves, e.g. ``lambda p: tree_map(lambda a: a.ndim > 1, p)`` skips biases."""
    weight_decay = check_real("add_decayed_weights", "weight_decay", weight_decay, low=0.0)

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        if params is None:
            raise InvalidValueError("add_decayed_weights needs params: call update(grads, state, params)")
        return tree_map(lambda u, p: u + weight_decay * p, updates, params), state

    t = GradientTransformation(lambda params: FrozenDict(), update, elementwise=True)
    return t if mask is None else masked(t, mask)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale all updates by ``max_norm / global_norm`` when their global L2 norm exceeds
    ``max_norm`` (the norm over all leaves together)."""
    max_norm = check_real("clip_by_global_norm", "max_norm", max_norm, low=0.0, low_open=True)

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        norm = float(np.sqrt(sum(np.vdot(u, u).real for u in tree_leaves(updates))))
        if norm <= max_norm:
            return updates, state
        factor = max_norm / norm
        return tree_map(lambda u: u * factor, updates), state

    # a reduction over all leaves: its result depends on how the leaves are laid out
    return GradientTransformation(lambda params: FrozenDict(), update, elementwise=False)


def track_ema(decay: float) -> GradientTransformation:
    """Keep an exponential moving average of the params in the state, for evaluation
    (Polyak averaging): after update ``t`` (counting from 0),
    ``ema = d_t * ema + (1 - d_t) * params'`` with ``params' = params + updates`` and
    ``d_t = min(decay, (1 + t) / (10 + t))``, starting from the initial params. The
    warm-up of ``d_t`` (as TensorFlow's ``ExponentialMovingAverage(num_updates=...)``)
    keeps a short run's average from clinging to the initial params. Put it last in a
    :func:`chain`, where it sees the final updates; updates pass through unchanged.
    :func:`params_ema` reads the average from an optimizer state."""
    decay = _check_unit("track_ema", "decay", decay, closed=False)

    def init(params: PyTree) -> OptState:
        return FrozenDict(count=_count(0), ema=tree_map(np.array, params))

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        if params is None:
            raise InvalidValueError("track_ema needs params: call update(grads, state, params)")
        t = int(state["count"])
        d = min(decay, (1 + t) / (10 + t))
        ema = tree_map(lambda p, u, e: d * e + (1 - d) * (p + u), params, updates, state["ema"])
        return updates, FrozenDict(count=_count(t + 1), ema=ema)

    return GradientTransformation(init, update, elementwise=True)


def set_to_zero() -> GradientTransformation:
    """All updates become zero: with :func:`masked`, freezes params."""
    return GradientTransformation(
        lambda params: FrozenDict(), lambda u, s, p=None: (tree_map(np.zeros_like, u), s), elementwise=True
    )


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
        it = iter(new_sel)
        merged = [next(it) if keep else leaf for leaf, keep in zip(leaves, fl)]
        return tree_unflatten(treedef, merged), FrozenDict(inner=inner_state)

    # the mask follows the params' structure, so this cannot run on one flat buffer
    return GradientTransformation(init, update, elementwise=False)


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

    return GradientTransformation(init, update, elementwise=all(t.elementwise for t in transforms))


# -- aliases -----------------------------------------------------------------------------


def sgd(learning_rate: float | Schedule, momentum: float = 0.0, nesterov: bool = False) -> GradientTransformation:
    """SGD, optionally with (Nesterov) momentum in optax's form: ``m = g + momentum m``,
    ``w -= lr m``."""
    momentum = _check_unit("sgd", "momentum", momentum)
    if nesterov and momentum == 0:
        raise InvalidValueError("sgd: nesterov=True needs momentum > 0, got momentum=0")
    lr = scale_by_learning_rate(_check_rate("sgd", learning_rate))
    return chain(trace(momentum, nesterov), lr) if momentum else lr


def adam(
    learning_rate: float | Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    """Adam: :func:`scale_by_adam` then the learning rate."""
    return chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(_check_rate("adam", learning_rate)))


def adamw(
    learning_rate: float | Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    mask: Any = None,
) -> GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay,
    ``w -= lr * (adam_direction + weight_decay * w)``; ``mask`` as in
    :func:`add_decayed_weights` (e.g. to skip biases)."""
    return chain(
        scale_by_adam(b1, b2, eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(_check_rate("adamw", learning_rate)),
    )


def rmsprop(
    learning_rate: float | Schedule, decay: float = 0.9, eps: float = 1e-8, momentum: float = 0.0
) -> GradientTransformation:
    """RMSprop (Tieleman & Hinton 2012): :func:`scale_by_rms`, optional momentum, then the rate."""
    momentum = _check_unit("rmsprop", "momentum", momentum)
    parts = [scale_by_rms(decay, eps)] + ([trace(momentum)] if momentum else [])
    return chain(*parts, scale_by_learning_rate(_check_rate("rmsprop", learning_rate)))


def adagrad(
    learning_rate: float | Schedule, initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> GradientTransformation:
    """Adagrad (Duchi et al. 2011): :func:`scale_by_rss` then the rate."""
    rate = scale_by_learning_rate(_check_rate("adagrad", learning_rate))
    return chain(scale_by_rss(initial_accumulator_value, eps), rate)


def keras_sgd(learning_rate: float, momentum: float = 0.0, decay: float = 0.0) -> GradientTransformation:
    """The tutorial's Keras-style SGD, exactly:

    ``lr_t = lr0 / (1 + decay * t)``, ``v = momentum * v + lr_t * g``, ``w = w - v``,
    with ``t`` the number of updates already applied (0 for the first).
    """
    momentum = _check_unit("keras_sgd", "momentum", momentum)
    learning_rate = check_real("keras_sgd", "learning_rate", learning_rate, low=0.0)
    schedule = inverse_time_decay(learning_rate, check_real("keras_sgd", "decay", decay, low=0.0))

    def init(params: PyTree) -> OptState:
        return FrozenDict(count=_count(0), learning_rate=_scalar(schedule(0)), velocity=_zeros_like(params))

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        t = int(state["count"])
        lr = float(schedule(t))
        v = tree_map(lambda g, v: momentum * v + lr * g, updates, state["velocity"])
        out = tree_map(np.negative, v)
        return out, FrozenDict(count=_count(t + 1), learning_rate=_scalar(lr), velocity=v)

    return GradientTransformation(init, update, elementwise=True)


def apply_updates(params: Params, updates: PyTree) -> Params:
    """``params + updates`` leafwise, as new read-only arrays of the params' dtypes."""

    def add(p: np.ndarray, u: np.ndarray) -> np.ndarray:
        out = np.add(p, u, dtype=p.dtype)
        out.flags.writeable = False
        return out

    return tree_map(add, params, updates)


def params_ema(state: OptState) -> PyTree | None:
    """The moving average of the params that :func:`track_ema` keeps in an optimizer
    state (its last ``"ema"`` entry), or None if the state keeps none."""
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
