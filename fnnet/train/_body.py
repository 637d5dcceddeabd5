"""The one body of a training step, and the plan it runs on.

The flow of ``step(state, batch) -> (state, metrics)``::

    for each shard of the batch this process runs (rows, decided by the input signature):
        forward (layer 1..n) -> loss -> backward (layer n..1, into the shard's flat gradient)
    [over MPI: every rank's shards' gradients gathered, every rank's metrics]
    -> the shards' gradients summed in shard order (each weighted by its share of the rows)
    -> optimizer.update -> params + updates -> TrainState(params', opt_state', step + 1)

The gradients are views of one flat vector: an elementwise optimizer
(:func:`fnnet.optim.elementwise`) runs once over it, and returns params and state as
views of flat vectors too, so the next step runs on vectors without packing anything.

:func:`run_step` is that flow, parameterised by a :class:`Plan` (the model prepared for
one input signature: a set of buffers and a flat gradient per shard). The plain step
makes a fresh plan for every call and runs the shards one after the other;
:func:`fnnet.jit` keeps one plan per signature and may run the shards on several
threads; a step with ``comm`` runs this rank's whole shards of the global batch. All run
this body and add the shards' gradients in global shard order, so they give the same
bits by construction, whatever the number of threads or ranks.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import Executor
from typing import Any, NamedTuple

import attrs
import numpy as np

from .. import random
from .._errors import DivergenceError, FnnetError, InvalidValueError, TreeMismatchError
from ..flat import Layout, check_written, flat_of, unwritten
from ..layers import Layer
from ..metrics import accuracy
from ..optim import GradientTransformation, apply_updates
from ..runner import Site, run, run_backward
from ..shards import ShardGroup, add_in_order, gather
from ..tree import EMPTY, check_like, freeze, tree_leaves
from ..typing import LossFn, PyTree
from ._diverge import diverged, finite, nonfinite_outputs
from ._state import TrainState

__all__ = ["TAIL_BYTES", "Plan", "Shard", "check_state", "run_step"]


class Shard(NamedTuple):
    """One shard of a plan: its rows of the batch, its share of them (the weight of its
    gradient), the model prepared for them, with its own flat gradient, and its position
    in the batch's cut (its random layers' key: ``fold_in(step key, index)``)."""

    rows: slice
    weight: float
    site: Site
    grads: np.ndarray
    position: int = 0


class _Part(NamedTuple):
    """What one shard's pass gives: its weighted loss and accuracy (None: not a
    classifier's), the model state, and the error its loss raised (None)."""

    loss: float
    acc: float | None
    model_state: PyTree
    error: Exception | None


@attrs.define
class Plan:
    """The model prepared for one input signature: what a step needs besides its inputs.

    ``model``, ``loss``, ``optimizer`` and ``key`` are the step's. ``count``: the shards
    the batch is cut into (see :func:`fnnet.train.cut`); ``shards``: the :class:`Shard`
    of each that this process runs (all of them, or under MPI this rank's), each with the
    buffers the layers' hooks made and gradient views into its flat gradient. ``checked``
    turns True once a backward pass has been seen to write every gradient. ``group``: for
    a cut batch of a model with state (batch norm), the
    :class:`fnnet.shards.ShardGroup` its shards run in and pool their statistics
    through (None otherwise). ``product``: the multiply-adds of the largest matrix product
    of a shard's pass (:func:`fnnet.threads.largest_product`), which decides whether BLAS
    gets threads (:func:`fnnet.threads.blas_share`); ``bound``, an upper bound of any of
    its products (:func:`fnnet.threads.product_bound`), whether a cap may be skipped.
    ``comm``: the ranks that share the batch (an mpi4py
    communicator), with ``gathered``, the (count, P + tail) buffer every shard's gradient
    and metrics are gathered into (:data:`TAIL_BYTES`), ``summed``, the gradient tree that
    views its first row, and ``sending``, the rows of this rank's shards. Made by
    :meth:`fnnet.train.Step.plan`.
    """

    signature: tuple
    model: Layer
    loss: LossFn
    optimizer: GradientTransformation
    key: random.Key | None
    layout: Layout
    shards: tuple[Shard, ...]
    count: int = 1
    group: ShardGroup | None = None
    product: int | None = None
    bound: int | None = None
    checked: bool = False
    # ((path, grads, marker views), ...) of every shard's layers whose backward is not fnnet's (Carry.watch)
    watch: tuple = ()
    comm: Any = None
    gathered: np.ndarray | None = None
    summed: PyTree = None
    sending: np.ndarray | None = None


def run_step(
    plan: Plan, state: TrainState, x: np.ndarray, labels: np.ndarray, pool: Executor | None = None,
) -> tuple[TrainState, dict[str, float]]:
    """The one body of a training step, on a plan that fits ``state`` and ``x``.

    ``pool``: threads to run the plan's shards on (None: one after the other; the bits
    are the same). Returns the new state and the metrics.

    The state is checked against the optimizer and the model only when the step fails
    (:func:`check_state` costs more than a small step): a state of another optimizer or
    model then gets an error that says so, not the KeyError or broadcast error it caused.
    """
    try:
        return _body(plan, state, x, labels, pool)
    except Exception:
        try:
            check_state(plan.model, plan.optimizer, state)
        except TreeMismatchError as mismatch:
            raise mismatch from None
        raise


def _pass(
    plan: Plan, shard: Shard, state: TrainState, x: np.ndarray, labels: np.ndarray, key: random.Key | None
) -> _Part:
    """Forward, loss and backward of one shard (its gradient, weighted by its share of
    the rows, lands in ``shard.grads``). An error of the loss's (bad labels, non-finite
    outputs) is returned, not raised, after a backward pass of zeros: every shard, on
    every rank, then reaches the meeting points of its group and the step's collectives,
    and the step raises the first shard's error on every rank."""
    weight = shard.weight
    if weight != 1.0:  # (a shard of a cut batch; one shard is the whole batch)
        x, labels = x[shard.rows], labels[shard.rows]
    logits, cache, model_state = run(shard.site, state.params, x, key, state.model_state)
    error, acc = None, None
    try:  # the built-in losses refuse NaN and inf logits; any loss may return a non-finite value
        loss, dlogits = plan.loss(logits, labels)
        loss = float(loss)
        if not math.isfinite(loss):
            raise DivergenceError(f"step {state.step}: the loss is {loss}; the state passed in is unchanged")
    except FnnetError as exc:  # (DivergenceError is one): outputs that are NaN or inf say why
        error = nonfinite_outputs(state.step, x) if isinstance(exc, InvalidValueError) and not finite(logits) else exc
        loss, dlogits = math.nan, np.zeros_like(logits)
    if error is None and logits.ndim == 2 and labels.ndim == 1 and labels.dtype.kind in "iu":
        acc = accuracy(logits, labels) * weight
    if weight != 1.0:  # the batch's mean loss: each shard's mean weighted by its rows
        dlogits = np.multiply(dlogits, weight, dtype=dlogits.dtype)
    run_backward(shard.site, cache, dlogits)
    return _Part(loss * weight, acc, model_state, error)


def _body(
    plan: Plan, state: TrainState, x: np.ndarray, labels: np.ndarray, pool: Executor | None,
) -> tuple[TrainState, dict[str, float]]:
    key = None if plan.key is None else random.fold_in(plan.key, state.step)
    shards = plan.shards
    for _, _, views in plan.watch:  # a layer of the user's: what its backward leaves unwritten must not be stale
        for bits, marker in views:
            bits.fill(marker)
    # a shard's key: the step's for a whole batch, else folded with the shard's index in the cut
    keys = [key if key is None or plan.count == 1 else random.fold_in(key, s.position) for s in shards]
    if plan.group is not None:  # shards that meet (batch norm): each on a carrier of the group's
        parts = plan.group.run([functools.partial(_pass, plan, s, state, x, labels, k) for s, k in zip(shards, keys)])
    elif pool is None or len(shards) == 1:
        parts = [_pass(plan, s, state, x, labels, k) for s, k in zip(shards, keys)]
    else:
        parts = list(pool.map(lambda s, k: _pass(plan, s, state, x, labels, k), shards, keys))
    if not plan.checked:  # (before the sum: an unwritten leaf holds a marker a sum would lose)
        for s in shards:
            plan.layout.check_written(s.grads, plan.model.name)
        plan.checked = True
    for path, tree, views in plan.watch:  # (and on every step, the gradients of the user's layers)
        if unwritten(views):
            check_written(tree, plan.model.name, path)
    parts, grads, model_state = (_sum if plan.comm is None else _gather)(plan, parts)
    for part in parts:  # (the first shard's error, on every rank)
        if part.error is not None:
            raise part.error
    loss = parts[0].loss if len(parts) == 1 else math.fsum(p.loss for p in parts)
    acc = parts[0].acc if len(parts) == 1 or parts[0].acc is None else math.fsum(p.acc for p in parts)  # type: ignore[misc]
    metrics = {"loss": loss} if acc is None else {"loss": loss, "accuracy": acc}
    updates, opt_state = plan.optimizer.update(grads, state.opt_state, state.params)
    params = apply_updates(state.params, updates)
    found = flat_of(params)  # (finite, on the one vector the params view when they do)
    if not (finite(found[0]) if found is not None else all(map(finite, tree_leaves(params)))):
        raise diverged(state.step, params, grads, opt_state)
    model_state = EMPTY if not model_state else freeze(model_state)
    return TrainState(params, freeze(opt_state), state.step + 1, model_state), metrics


def _sum(plan: Plan, parts: list[_Part]) -> tuple[list[_Part], PyTree, PyTree]:
    """One process's shards: their gradients summed into the first's, in shard order;
    ``(parts, gradients, model state)``."""
    first = plan.shards[0]
    if not any(p.error for p in parts):
        add_in_order(first.grads, [s.grads for s in plan.shards[1:]])
    # (views of first.grads: an elementwise optimizer runs on that one vector; every shard's state is the batch's)
    return parts, first.site.grads, parts[0].model_state


TAIL_BYTES = 16
"""What a gathered row carries after a shard's gradient: its weighted loss and accuracy, as
two float64 (NaN: an error, and no accuracy), so that one collective a step moves both."""


def _gather(plan: Plan, parts: list[_Part]) -> tuple[list[_Part], PyTree, PyTree]:
    """Every rank's shards: each shard's gradient and metrics in one row of the (count, P +
    tail) buffer, gathered by one ``Allgather`` (a batch of one shard: rank 0's ``Bcast``),
    the gradients summed in global shard order, as :func:`_sum` does on one process. Only an
    error (a NaN loss) or the state of a one-shard batch of a stateful model (rank 0's) takes
    a second collective."""
    comm, gathered, sending = plan.comm, plan.gathered, plan.sending
    assert gathered is not None and sending is not None
    size = plan.layout.size
    for j, (shard, part) in enumerate(zip(plan.shards, parts)):
        sending[j, :size] = shard.grads
        sending[j, size:].view(np.float64)[:] = (part.loss, math.nan if part.acc is None else part.acc)
    gather(comm, sending, gathered, plan.count)
    metrics = [row[size:].view(np.float64) for row in gathered]
    errors: list = [None] * len(metrics)
    if any(math.isnan(m[0]) for m in metrics):  # (every rank sees it: every rank asks which)
        errors = [e for theirs in comm.allgather([p.error for p in parts]) for e in theirs]
    model_state = parts[0].model_state if parts else EMPTY
    if plan.count == 1 and plan.model.stateful:  # (a cut batch's state is every shard's already)
        model_state = comm.bcast(model_state, root=0)
    parts = [_Part(float(m[0]), None if math.isnan(m[1]) else float(m[1]), model_state, e)
             for m, e in zip(metrics, errors)]
    if not any(errors):  # ((g0 + g1) + g2) + ...: shard order, on every rank
        add_in_order(gathered[0, :size], [row[:size] for row in gathered[1:]])
    return parts, plan.summed, model_state


def check_state(model: Layer, optimizer: GradientTransformation, state: TrainState) -> None:
    """TreeMismatchError unless ``state.opt_state`` (and a stateful model's
    ``state.model_state``) has the structure, shapes and dtypes that ``optimizer`` (and
    ``model``) make for ``state.params``: a state of another optimizer or model is named
    as such, not met as a KeyError deep inside an update."""
    check_like(
        state.opt_state, optimizer.init(state.params),
        "step: state.opt_state does not fit this step's optimizer (a state made by another optimizer or for "
        "other params?)",
    )
    if model.stateful:
        check_like(
            state.model_state, model.init_state(state.params),
            f"step: state.model_state does not fit the {model.name} model (a state of another model?)",
        )
