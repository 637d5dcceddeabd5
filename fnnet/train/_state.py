"""The record of what changes during training: :class:`TrainState`."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from .._errors import InvalidValueError
from ..layers import Layer
from ..optim import GradientTransformation
from ..tree import EMPTY, freeze
from ..typing import OptState, Params, PyTree

__all__ = ["TrainState"]


def _nonneg_int(inst: Any, attr: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidValueError(f"TrainState.{attr.name} must be an int >= 0, got {value!r}")


@attrs.frozen
class TrainState:
    """Everything that changes during training: params, optimizer state, step count and
    the model's own state (batch norm's running statistics; empty for most models)."""

    params: Params
    opt_state: OptState
    step: int = attrs.field(default=0, validator=_nonneg_int)
    model_state: PyTree = EMPTY

    @classmethod
    def create(cls, params: Params, optimizer: GradientTransformation, model: Layer | None = None) -> TrainState:
        """Step 0: frozen ``params``, a fresh optimizer state and, given ``model``, its
        initial state (``model.init_state(params)``)."""
        params = freeze(params)
        model_state = freeze(model.init_state(params)) if model is not None else EMPTY
        return cls(params, freeze(optimizer.init(params)), 0, model_state)
