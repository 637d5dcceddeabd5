"""Aliases: the usual optimizers, each a :func:`~fnnet.optim.chain` of transforms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import InvalidValueError, check_real
from ..typing import Schedule
from ._base import GradientTransformation, chain, check_rate, check_unit, count, scalar
from ._lift import elementwise
from ._schedules import inverse_time_decay
from ._transforms import add_decayed_weights, scale_by_adam, scale_by_learning_rate, scale_by_rms, scale_by_rss, trace

__all__ = ["adagrad", "adam", "adamw", "keras_sgd", "rmsprop", "sgd"]


def sgd(learning_rate: float | Schedule, momentum: float = 0.0, nesterov: bool = False) -> GradientTransformation:
    """SGD, optionally with (Nesterov) momentum in optax's form: ``m = g + momentum m``,
    ``w -= lr m``."""
    momentum = check_unit("sgd", "momentum", momentum)
    if nesterov and momentum == 0:
        raise InvalidValueError("sgd: nesterov=True needs momentum > 0, got momentum=0")
    lr = scale_by_learning_rate(check_rate("sgd", learning_rate))
    return chain(trace(momentum, nesterov), lr) if momentum else lr


def adam(
    learning_rate: float | Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    """Adam: :func:`scale_by_adam` then the learning rate."""
    return chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(check_rate("adam", learning_rate)))


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
        scale_by_learning_rate(check_rate("adamw", learning_rate)),
    )


def rmsprop(
    learning_rate: float | Schedule, decay: float = 0.9, eps: float = 1e-8, momentum: float = 0.0
) -> GradientTransformation:
    """RMSprop (Tieleman & Hinton 2012): :func:`scale_by_rms`, optional momentum, then the rate."""
    momentum = check_unit("rmsprop", "momentum", momentum)
    parts = [scale_by_rms(decay, eps)] + ([trace(momentum)] if momentum else [])
    return chain(*parts, scale_by_learning_rate(check_rate("rmsprop", learning_rate)))


def adagrad(
    learning_rate: float | Schedule, initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> GradientTransformation:
    """Adagrad (Duchi et al. 2011): :func:`scale_by_rss` then the rate."""
    rate = scale_by_learning_rate(check_rate("adagrad", learning_rate))
    return chain(scale_by_rss(initial_accumulator_value, eps), rate)


def keras_sgd(learning_rate: float, momentum: float = 0.0, decay: float = 0.0) -> GradientTransformation:
    """The tutorial's Keras-style SGD, exactly:

    ``lr_t = lr0 / (1 + decay * t)``, ``v = momentum * v + lr_t * g``, ``w = w - v``,
    with ``t`` the number of updates already applied (0 for the first).
    """
    momentum = check_unit("keras_sgd", "momentum", momentum)
    learning_rate = check_real("keras_sgd", "learning_rate", learning_rate, low=0.0)
    schedule = inverse_time_decay(learning_rate, check_real("keras_sgd", "decay", decay, low=0.0))

    def scalars() -> Mapping[str, Any]:
        return {"count": count(0), "learning_rate": scalar(schedule(0))}

    def advance(state: Mapping) -> tuple[float, Mapping[str, Any]]:
        t = int(state["count"])
        lr = float(schedule(t))
        return lr, {"count": count(t + 1), "learning_rate": scalar(lr)}

    def rule(lr: float, g: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, tuple]:
        v = momentum * v + lr * g
        return np.negative(v), (v,)

    return elementwise(rule, {"velocity": np.zeros_like}, scalars=scalars, advance=advance)
