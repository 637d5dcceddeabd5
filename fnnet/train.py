"""One pure training step, its one body, and ``predict``.

The flow of ``step(state, batch) -> (state, metrics)``::

    forward (layer 1..n) -> loss -> backward (layer n..1, gradients into one flat vector)
    -> optimizer.update -> params + updates -> TrainState(params', opt_state', step + 1)

:func:`run_step` is that flow, parameterised by a :class:`Plan` (the model prepared for
one input signature: its buffers, its flat gradient). The plain step makes a fresh plan
for every call; :func:`fnnet.jit` keeps one per signature. Both run the same body, so
they give the same bits by construction.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import attrs
import numpy as np
from numpy.typing import ArrayLike

from . import random
from ._errors import (
    DivergenceError,
    InvalidTypeError,
    InvalidValueError,
    ShapeError,
    TreeMismatchError,
    instance_of,
    is_callable,
)
from .flat import Layout, pack_state, unpack_state
from .layers._checks import as_batch
from .layers._layer import Layer, Site, prepare_checked, run, run_backward
from .metrics import accuracy
from .optim import GradientTransformation, apply_updates, learning_rate
from .tree import EMPTY, _path_str, check_like, freeze, tree_leaves, tree_leaves_with_path
from .typing import Batch, LossFn, OptState, Params, PyTree

__all__ = ["TrainState", "Step", "train_step", "predict"]


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


@attrs.frozen
class Step:
    """``step(state, batch) -> (state, metrics)``: pure; ``state`` is never changed.

    ``batch`` is ``(x, labels)`` with ``x`` (N, *input_shape). ``metrics`` has ``"loss"``
    and, for integer labels, ``"accuracy"`` on this batch (before the update). The model
    runs in train mode; random layers get the key ``fold_in(key, state.step)``.
    """

    model: Layer = attrs.field(validator=instance_of(Layer))
    loss: LossFn = attrs.field(validator=is_callable)
    optimizer: GradientTransformation = attrs.field(validator=instance_of(GradientTransformation))
    key: random.Key | None = attrs.field(default=None)

    @key.validator
    def _key_if_random(self, attribute: Any, value: Any) -> None:
        if self.model.stochastic and value is None:
            raise InvalidValueError(
                "train_step: the model is random in train mode (dropout): pass key=fnnet.random.key(...)"
            )

    def step_key(self, step: int) -> random.Key | None:
        """The key of the random layers at ``step``."""
        return None if self.key is None else random.fold_in(self.key, step)

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, float]]:
        x, labels = check_inputs(self, state, batch)
        new, metrics, _ = run_step(self, Plan.make(self, state, x, labels), state, x, labels)
        return new, metrics


def train_step(
    model: Layer, loss: LossFn, optimizer: GradientTransformation, *, key: random.Key | None = None
) -> Step:
    """Fold a model, a loss ``(outputs, labels) -> (value, d_outputs)`` and an optimizer
    into one pure step; wrap it in :func:`fnnet.jit` for speed. ``key`` drives random
    layers (dropout): step ``t`` uses ``fold_in(key, t)``, so a resumed run draws the
    same masks."""
    return Step(model, loss, optimizer, key)


def check_inputs(step: Step, state: TrainState, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """``(x, labels)`` of ``batch``, or an error naming what is wrong with it or ``state``."""
    if not isinstance(state, TrainState):
        raise InvalidTypeError(f"step: state must be a TrainState, got {type(state).__name__}")
    if step.model.stateful and not state.model_state:
        raise InvalidValueError(
            f"step: the {step.model.name} model has state (batch norm) but the TrainState has none: "
            "create it with TrainState.create(params, optimizer, model)"
        )
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise InvalidTypeError(f"step: batch must be a pair (inputs, labels), got {type(batch).__name__}")
    x, labels = batch
    x = as_batch(x, "step inputs")
    labels = np.asarray(labels)
    if labels.ndim < 1 or labels.shape[0] != x.shape[0]:
        raise ShapeError(f"step: {x.shape[0]} inputs but labels of shape {labels.shape}")
    return x, labels


@attrs.define
class Plan:
    """The model prepared for one input signature: what a step needs besides its inputs.

    ``site`` holds the buffers the layers' hooks made, and gradient views into the flat
    ``grads``; ``flat`` says the optimizer runs on flat vectors (it is elementwise).
    ``checked`` turns True once a backward pass has been seen to write every gradient.
    """

    signature: tuple
    layout: Layout
    site: Site
    grads: np.ndarray
    flat: bool
    checked: bool = False

    @classmethod
    def make(cls, step: Step, state: TrainState, x: np.ndarray, labels: np.ndarray) -> Plan:
        """Check the params against the model and the input (errors name the layer),
        then prepare the model in train mode, without the input's gradient."""
        site, layout, grads = prepare_checked(step.model, state.params, x.shape, x.dtype, train=True, need_dx=False)
        return cls((x.shape, x.dtype, labels.shape, labels.dtype), layout, site, grads, step.optimizer.elementwise)


class Carry(NamedTuple):
    """What a step on a plan hands to the next one: the state it returned, with that
    state's params and (packed) optimizer state as the flat vectors they are views of.
    (A NamedTuple, not an attrs record: one is made per step, at a third of the cost.)"""

    plan: Plan
    state: TrainState
    params: np.ndarray
    opt_state: Any
    packed: frozenset  # the paths in opt_state that are packed params-shaped trees


def run_step(
    step: Step, plan: Plan, state: TrainState, x: np.ndarray, labels: np.ndarray, carry: Carry | None = None
) -> tuple[TrainState, dict[str, float], Carry | None]:
    """The one body of a training step, on a plan that fits ``state`` and ``x``.

    ``carry``: the :class:`Carry` of the previous call when ``state`` is the state that
    call returned on this plan (it saves packing the params and the optimizer state
    again), else None. Returns the new state, the metrics and the new carry.

    A state the plan has not seen is checked against the optimizer and the model only
    when the step fails (:func:`check_state` costs more than a small step): a state of
    another optimizer or model then gets an error that says so, not the KeyError or
    broadcast error it caused.
    """
    try:
        return _body(step, plan, state, x, labels, carry)
    except Exception:
        if carry is not None:
            raise
        try:
            check_state(step, state)
        except TreeMismatchError as mismatch:
            raise mismatch from None
        raise


def _body(
    step: Step, plan: Plan, state: TrainState, x: np.ndarray, labels: np.ndarray, carry: Carry | None
) -> tuple[TrainState, dict[str, float], Carry | None]:
    logits, cache, model_state = run(plan.site, state.params, x, step.step_key(state.step), state.model_state)
    try:  # the built-in losses refuse NaN and inf logits; any loss may return a non-finite value
        loss, dlogits = step.loss(logits, labels)
        metrics = {"loss": float(loss)}
        if not math.isfinite(metrics["loss"]):
            raise DivergenceError(f"step {state.step}: the loss is {metrics['loss']}; the state passed in is unchanged")
    except InvalidValueError:  # (DivergenceError is one): outputs that are NaN or inf say why
        if not _finite(logits):
            raise _nonfinite_outputs(state.step, x) from None
        raise
    if logits.ndim == 2 and labels.ndim == 1 and labels.dtype.kind in "iu":
        metrics["accuracy"] = accuracy(logits, labels)
    run_backward(plan.site, cache, dlogits)  # the gradients land in plan.grads
    if not plan.checked:
        plan.layout.check_written(plan.grads, step.model.name)
        plan.checked = True
    model_state = model_state if model_state is EMPTY else freeze(model_state)
    if not plan.flat:  # the optimizer needs the tree (clip_by_global_norm, masked)
        updates, opt_state = step.optimizer.update(plan.site.grads, state.opt_state, state.params)
        params = apply_updates(state.params, updates)
        if not all(map(_finite, tree_leaves(params))):
            raise _diverged(state.step, params, plan.site.grads, opt_state)
        new = TrainState(params, freeze(opt_state), state.step + 1, model_state)
        return new, metrics, None
    if carry is not None:
        flat, opt_state, packed = carry.params, carry.opt_state, carry.packed
    else:
        flat = plan.layout.pack(state.params)
        opt_state, packed = pack_state(state.opt_state, plan.layout)
    updates, opt_state = step.optimizer.update(plan.grads, opt_state, flat)
    new_flat = np.add(flat, updates, dtype=plan.layout.dtype)
    if not math.isfinite(np.vdot(new_flat, new_flat)) and not np.isfinite(new_flat).all():  # (_finite, inlined)
        raise _diverged(state.step, plan.layout.views(new_flat), plan.grads, opt_state)
    params = plan.layout.unpack(new_flat)
    new_opt, aliased = unpack_state(opt_state, packed, plan.layout, plan.grads)
    new = TrainState(params, new_opt, state.step + 1, model_state)
    if aliased:  # the optimizer kept the gradient buffer in its state: carry nothing, pack again next time
        return new, metrics, None
    return new, metrics, Carry(plan, new, new_flat, opt_state, packed)


def check_state(step: Step, state: TrainState) -> None:
    """TreeMismatchError unless ``state.opt_state`` (and a stateful model's
    ``state.model_state``) has the structure, shapes and dtypes that ``step``'s optimizer
    (and model) make for ``state.params``: a state of another optimizer or model is
    named as such, not met as a KeyError deep inside an update."""
    check_like(
        state.opt_state, step.optimizer.init(state.params),
        "step: state.opt_state does not fit this step's optimizer (a state made by another optimizer or for "
        "other params?)",
    )
    if step.model.stateful:
        check_like(
            state.model_state, step.model.init_state(state.params),
            f"step: state.model_state does not fit the {step.model.name} model (a state of another model?)",
        )


def _finite(a: np.ndarray) -> bool:
    """Whether every element of ``a`` is finite: one BLAS dot product (a NaN or inf makes
    it NaN or inf), and the exact test only when that overflows or fails."""
    return math.isfinite(np.vdot(a, a)) or bool(np.isfinite(a).all())


def _nonfinite_outputs(step: int, x: np.ndarray) -> InvalidValueError:
    """The error of a forward pass whose outputs are NaN or inf: bad inputs, or overflow."""
    if not _finite(x):
        return InvalidValueError(f"step {step}: the inputs contain NaN or inf; the state passed in is unchanged")
    return DivergenceError(
        f"step {step}: the model's outputs are NaN or inf (the forward pass overflowed: params or inputs too large); "
        "the state passed in is unchanged"
    )


def _diverged(step: int, params: Any, grads: Any, opt_state: Any) -> DivergenceError:
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


def predict(
    model: Layer, params: Params, x: ArrayLike, batch_size: int = 64, model_state: PyTree = EMPTY
) -> np.ndarray:
    """Model outputs for ``x`` (N, *input_shape) in eval mode, in chunks of ``batch_size``.

    Eval mode: dropout is off and batch norm uses the running statistics in
    ``model_state``. Checks the model once, then reuses the buffers of one chunk for the
    next. The default chunk keeps the im2col buffers in cache: on a LeNet-size model,
    chunks of 64 run about twice as fast as chunks of 1000. Returns a new array
    (N, *output_shape).
    """
    x = as_batch(x, "predict")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidValueError(f"predict: batch_size must be an int >= 1, got {batch_size!r}")
    if model.stateful and not model_state:
        raise InvalidValueError(
            f"predict: the {model.name} model has state (batch norm): pass model_state=state.model_state"
        )
    out = np.empty((x.shape[0], *model.output_shape(params, x.shape[1:], x.dtype)), x.dtype)
    site = None
    for i in range(0, x.shape[0], batch_size):
        chunk = x[i : i + batch_size]
        if site is None or site.sig.x_shape != chunk.shape:  # the first chunk, or a shorter last one
            site = None  # one set of buffers at a time: release the previous one first
            site, _, _ = prepare_checked(
                model, params, chunk.shape, x.dtype, train=False, need_dx=False, backward=False
            )
        y, _, _ = run(site, params, chunk, None, model_state)
        out[i : i + batch_size] = y
    return out
