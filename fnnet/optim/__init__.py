"""Optimizers as composable gradient transformations, in the style of optax.

A :class:`GradientTransformation` is a plain pair of pure functions:

* ``init(params) -> state``
* ``update(updates, state, params=None) -> (updates, state)``

``chain`` composes them left to right; :func:`apply_updates` adds the final updates to
the params. States are pytrees (FrozenDicts and tuples of arrays), so they can be
checkpointed and compared. Learning rates are floats or schedules ``step -> value``;
``state["learning_rate"]`` holds the rate of the latest update, for logging.

:func:`elementwise` lifts a per-array rule to trees and runs it once over all params
when they are views of one vector (as a training step's gradients are): the built-in
elementwise transforms are written that way. The modules: ``_base.py`` (the protocol,
``chain``, ``apply_updates``, the state readers), ``_lift.py`` (``elementwise``),
``_transforms.py``, ``_schedules.py``, ``_aliases.py``.
"""

from ..typing import Schedule
from ._aliases import adagrad, adam, adamw, keras_sgd, rmsprop, sgd
from ._base import GradientTransformation, apply_updates, chain, learning_rate, params_ema
from ._lift import elementwise
from ._schedules import constant, cosine_decay, exponential_decay, inverse_time_decay, piecewise_constant
from ._transforms import (
    add_decayed_weights,
    clip_by_global_norm,
    identity,
    masked,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    set_to_zero,
    trace,
    track_ema,
)

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
    "elementwise",
    "exponential_decay",
    "identity",
    "inverse_time_decay",
    "keras_sgd",
    "learning_rate",
    "masked",
    "params_ema",
    "piecewise_constant",
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
