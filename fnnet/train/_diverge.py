"""What a step says when its numbers stop being finite: the cause, and that the state passed in is unchanged."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._errors import DivergenceError, InvalidValueError
from ..optim import learning_rate
from ..tree import _path_str, tree_leaves, tree_leaves_with_path

__all__ = ["diverged", "finite", "nonfinite_outputs"]


def finite(a: np.ndarray) -> bool:
    """Whether every element of ``a`` is finite: one BLAS dot product (a NaN or inf makes
    it NaN or inf), and the exact test only when that overflows or fails."""
    return math.isfinite(np.vdot(a, a)) or bool(np.isfinite(a).all())


def nonfinite_outputs(step: int, x: np.ndarray) -> InvalidValueError:
    """The error of a forward pass whose outputs are NaN or inf: bad inputs, or overflow."""
    if not finite(x):
        return InvalidValueError(f"step {step}: the inputs contain NaN or inf; the state passed in is unchanged")
    return DivergenceError(
        f"step {step}: the model's outputs are NaN or inf (the forward pass overflowed: params or inputs too large); "
        "the state passed in is unchanged"
    )


def diverged(step: int, params: Any, grads: Any, opt_state: Any) -> DivergenceError:
    """The error of a step whose update made ``params`` non-finite, with the likely cause."""
    bad = [_path_str(path) for path, leaf in tree_leaves_with_path(params) if not np.isfinite(leaf).all()]
    lr = learning_rate(opt_state)
    if all(np.isfinite(g).all() for g in tree_leaves(grads)):
        cause = (f"the gradients were finite, so the optimizer's update overflowed: the learning rate "
                 f"{'' if lr is None else f'({lr:g}) '}is likely too large")
    else:
        cause = ("the gradients were already NaN or inf: the forward or backward pass overflowed (params or inputs "
                 "too large)")
    return DivergenceError(
        f"step {step}: the update would make the params NaN or inf (at {', '.join(bad[:4])}"
        f"{'...' if len(bad) > 4 else ''}); the state passed in is unchanged. Likely cause: {cause}"
    )
