"""Schedules: plain ``step -> value`` functions (``step``: the number of updates applied)."""

from __future__ import annotations

import math

import numpy as np

from .._errors import InvalidValueError, check_int, check_real
from ..typing import Schedule

__all__ = ["constant", "cosine_decay", "exponential_decay", "inverse_time_decay", "piecewise_constant"]


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
        try:
            return init_value * decay_rate**p
        except OverflowError:  # (a rate above 1 grows without bound: inf, which a transform refuses by name)
            return math.copysign(math.inf, init_value)

    return schedule


def piecewise_constant(boundaries: list[int], values: list[float]) -> Schedule:
    """``values[i]`` for ``boundaries[i-1] <= step < boundaries[i]`` (``len(values) == len(boundaries) + 1``)."""
    for what, given in (("boundaries", boundaries), ("values", values)):
        if not isinstance(given, (tuple, list)):
            raise InvalidValueError(f"piecewise_constant: {what} must be a list, got {given!r}")
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
