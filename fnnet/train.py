"""One pure training step, its one body, and ``predict``.

The flow of ``step(state, batch) -> (state, metrics)``::

    for each shard of the batch (rows, decided by the input signature):
        forward (layer 1..n) -> loss -> backward (layer n..1, into the shard's flat gradient)
    -> the shards' gradients summed in shard order (each weighted by its share of the rows)
    -> optimizer.update -> params + updates -> TrainState(params', opt_state', step + 1)

``run_step`` is that flow, parameterised by a ``Plan`` (the model prepared for
one input signature: a set of buffers and a flat gradient per shard). The plain step
makes a fresh plan for every call and runs the shards one after the other;
:func:`fnnet.jit` keeps one plan per signature and may run the shards on several
threads. All run the same body and add the shards' gradients in the same order, so
they give the same bits by construction, whatever the number of threads.

Shards are what several threads can run at once: a batch is cut into 2 shards of at
least :func:`shard_rows` rows (the rows whose buffers: activations, im2col columns,
gradients of activations, fill ``SHARD_BYTES``), into 4 of at least twice that, up to
``MAX_SHARDS``; thinner shards ran slower on every network measured.
"""

from __future__ import annotations

import functools
import math
import warnings
import weakref
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Literal, NamedTuple

import attrs
import numpy as np
from numpy.typing import ArrayLike

from . import random, threads
from ._errors import (
    DivergenceError,
    InvalidTypeError,
    InvalidValueError,
    ShapeError,
    TreeMismatchError,
    check_int,
    instance_of,
    is_callable,
)
from .flat import Layout, pack_state, unpack_state
from .layers._checks import as_batch
from .layers._group import ShardGroup
from .layers._layer import Layer, Site, prepare_checked, run, run_backward
from .metrics import accuracy
from .optim import GradientTransformation, apply_updates, learning_rate
from .threads import blas_share, thread_count
from .tree import EMPTY, _path_str, check_like, freeze, tree_leaves, tree_leaves_with_path
from .typing import Batch, LossFn, OptState, Params, PyTree

__all__ = ["CHUNK_BYTES", "MAX_SHARDS", "SHARD_BYTES", "TrainState", "Step", "cut", "shard_rows", "train_step",
           "predict"]

SHARD_BYTES = 16 << 20
"""The least working set of a shard of a training batch: 16 MiB of buffers (LeNet: 64
rows, the default preset's CNN: 32). Measured on this project's CNNs on two cores,
interleaved, the thickest cut that still gives each core a shard was the fastest in every
cell: the default CNN at batch 64 in 2 shards of 32 rows 1.10x 4 of 16 (1.05x on one
thread), LeNet at 128 in 2 of 64 1.13x 4 of 32, LeNet at 32 whole 1.08x 2 shards of 16,
the default CNN with batch norm at 64 in 2 shards 1.33x 4 (docs/jit.md). (At 4 MiB, the
earlier budget, the finer cuts had measured within a few % of these on the same kind of
machine.)"""
CHUNK_BYTES = 4 << 20
"""The working set of an inference chunk from which :func:`predict` shares chunks between
threads by default (LeNet: a chunk of more than 16 rows; the tutorial's network, whose
64-row chunks are lighter, ran 0.7-0.97x on two threads)."""
MAX_SHARDS = 64
"""Shards a batch is cut into at most. The cut doubles the shard count only while each
shard doubles in rows too (2 shards of ``rows``, 4 of ``2 rows``, 8 of ``4 rows``...),
so a cut finer than a few cores need stays cheap where few cores run it (8 shards of 32
LeNet rows ran 0.88-0.92x 4 of 64 on 2 cores); a machine with more cores than shards
gives the rest to BLAS inside them (:func:`fnnet.threads.blas_share`)."""
MIN_SHARD_ROWS = 4  # fewer rows make the products too thin to pay for a pass


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
    shards: int | Literal["auto"] | None = attrs.field(default="auto")

    @shards.validator
    def _check_shards(self, attribute: Any, value: Any) -> None:
        if value is None or value == "auto":
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidValueError(f"train_step: shards must be 'auto', None or an int >= 1 (rows a shard), got "
                                    f"{value!r}")
        if not self.model.cuttable:
            raise InvalidValueError(
                f"train_step: the {self.model.name} model has state whose statistics are the whole batch's and "
                "that does not combine shards' sums (shard_sums): it cannot be cut into shards (use shards='auto' "
                "or None)"
            )

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
    model: Layer, loss: LossFn, optimizer: GradientTransformation, *, key: random.Key | None = None,
    shards: int | Literal["auto"] | None = "auto",
) -> Step:
    """Fold a model, a loss ``(outputs, labels) -> (value, d_outputs)`` and an optimizer
    into one pure step; wrap it in :func:`fnnet.jit` for speed. ``key`` drives random
    layers (dropout): step ``t`` uses ``fold_in(key, t)`` (shard ``s`` of a cut batch
    ``fold_in(fold_in(key, t), s)``), so a resumed run draws the same masks.

    ``shards``: how a batch is cut into shards, each a forward and backward pass whose
    gradient is added to the others' in shard order: ``"auto"`` (default) cuts a batch
    into 2 shards when each gets at least :func:`shard_rows` rows, into 4 when each gets
    twice that, and so on up to ``MAX_SHARDS`` (a finer cut than two cores need pays a
    pass a shard, so it must keep shards thick; a model with state is cut only when all
    its state pools the shards' statistics, as batch norm's does); an int
    ``r`` cuts it into ``ceil(n / r)`` shards; None never cuts (one pass over the batch,
    the bits of fnnet before shards).
    Shards differ in size by one row at most. The cut depends on the model, the input
    shape and the batch size alone, never on the number of threads."""
    return Step(model, loss, optimizer, key, shards)


def __getattr__(name: str) -> Any:
    if name == "cores":  # (moved to fnnet.threads with the thread budget)
        warnings.warn("fnnet.train.cores is fnnet.threads.cores", DeprecationWarning, stacklevel=2)
        return threads.cores
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_ROWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # {model: {(shape, dtype, bytes): rows}}


def shard_rows(model: Layer, params: Params, input_shape: tuple, dtype: Any = np.float32,
               budget: int = SHARD_BYTES) -> int:
    """The least rows a shard of a training batch gets under ``shards="auto"``: the
    power of two of rows whose buffers fill at most ``budget`` (:data:`SHARD_BYTES`; at
    least 4 rows). The bytes a row costs are what the model's buffers (unfused) grow by from a
    batch of 1 to a batch of 2: a pure function of the model, the params' shapes,
    ``input_shape`` (without the batch axis) and ``dtype``, found once per process."""
    dtype = np.dtype(dtype)
    known = _ROWS.setdefault(model, {})
    # (params that fit the model and the input shape have one set of shapes: no need to walk them,
    # which would cost a plain step more than the rest of the lookup)
    key = (tuple(input_shape), dtype, budget)
    rows = known.get(key)
    if rows is None:
        one, two = (_buffer_bytes(model, params, (n, *input_shape), dtype) for n in (1, 2))
        per_row = max(two - one, 1)
        rows = known[key] = max(MIN_SHARD_ROWS, 1 << max(0, (budget // per_row).bit_length() - 1))
    return rows


def _buffer_bytes(model: Layer, params: Params, x_shape: tuple, dtype: np.dtype) -> int:
    """The bytes of the distinct arrays a training pass on ``x_shape`` writes into, its
    layers unfused: fusion saves memory, but must not move the shard cut (and the bits)."""
    site, _, grads = prepare_checked(model, params, x_shape, dtype, train=True, need_dx=False, fuse=False)
    bases: dict[int, int] = {}
    todo, seen = [site.buf], set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, np.generic)) or obj is None:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            while isinstance(obj.base, np.ndarray):
                obj = obj.base
            bases[id(obj)] = obj.nbytes
        elif isinstance(obj, (tuple, list)):
            todo.extend(obj)
        elif isinstance(obj, Mapping):
            todo.extend(obj.values())
        elif hasattr(obj, "__dict__"):
            todo.extend(vars(obj).values())
        elif hasattr(obj, "__attrs_attrs__"):
            todo.extend(getattr(obj, a.name) for a in obj.__attrs_attrs__)
    bases.pop(id(grads), None)  # the flat gradient: params-sized, not rows
    return sum(bases.values())


def cut(step: Step, params: Params, x_shape: tuple, dtype: np.dtype) -> tuple[int, ...]:
    """The rows of each shard of a batch of ``x_shape`` under ``step.shards`` (see
    :func:`train_step`): sizes that differ by at most one, larger first."""
    n = x_shape[0]
    if step.shards is None or (step.shards == "auto" and (not step.model.cuttable or n < 2 * MIN_SHARD_ROWS)):
        return (n,)  # (no two shards of MIN_SHARD_ROWS: no need to ask shard_rows)
    if step.shards == "auto":
        rows, count = shard_rows(step.model, params, x_shape[1:], dtype), 1
        while 2 * count <= MAX_SHARDS and n // (2 * count) >= rows * count:  # 2 shards of rows, 4 of 2 rows, ...
            count *= 2
    else:
        count = max(1, -(-n // int(step.shards)))  # (an empty batch: one empty shard)
    return tuple(n // count + (i < n % count) for i in range(count))


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


class Shard(NamedTuple):
    """One shard of a plan: its rows of the batch, its share of them (the weight of its
    gradient), and the model prepared for them, with its own flat gradient."""

    rows: slice
    weight: float
    site: Site
    grads: np.ndarray


@attrs.define
class Plan:
    """The model prepared for one input signature: what a step needs besides its inputs.

    ``shards``: one :class:`Shard` per part of the batch (see :func:`cut`), each with the
    buffers the layers' hooks made and gradient views into its flat gradient. The
    shards' gradients are summed into the first's, which then holds the batch's. ``flat`` says the optimizer
    runs on flat vectors (it is elementwise). ``checked`` turns True once a backward
    pass has been seen to write every gradient. ``group``: for a cut batch of a model
    with state (batch norm), the :class:`~fnnet.layers._group.ShardGroup` its shards run
    in and pool their statistics through (None otherwise).
    """

    signature: tuple
    layout: Layout
    shards: tuple[Shard, ...]
    flat: bool
    group: ShardGroup | None = None
    checked: bool = False

    @classmethod
    def make(cls, step: Step, state: TrainState, x: np.ndarray, labels: np.ndarray, threads: int = 1) -> Plan:
        """Check the params against the model and the input (errors name the layer),
        then prepare the model in train mode for each shard, without the input's gradient
        (a model with state: in a group whose ``threads`` shards compute at once)."""
        shards, start, sizes = [], 0, cut(step, state.params, x.shape, x.dtype)
        group = ShardGroup(len(sizes), threads) if len(sizes) > 1 and step.model.stateful else None
        for i, n in enumerate(sizes):
            site, layout, grads = prepare_checked(
                step.model, state.params, (n, *x.shape[1:]), x.dtype, train=True, need_dx=False, group=group,
                shard=i)
            # (a whole batch weighs 1, an empty one too: its loss then names the problem)
            shards.append(Shard(slice(start, start + n), n / x.shape[0] if len(sizes) > 1 else 1.0, site, grads))
            start += n
        return cls((x.shape, x.dtype, labels.shape, labels.dtype), layout, tuple(shards), step.optimizer.elementwise,
                   group)


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
    step: Step, plan: Plan, state: TrainState, x: np.ndarray, labels: np.ndarray, carry: Carry | None = None,
    pool: Executor | None = None,
) -> tuple[TrainState, dict[str, float], Carry | None]:
    """The one body of a training step, on a plan that fits ``state`` and ``x``.

    ``carry``: the :class:`Carry` of the previous call when ``state`` is the state that
    call returned on this plan (it saves packing the params and the optimizer state
    again), else None. ``pool``: threads to run the plan's shards on (None: one after
    the other; the bits are the same). Returns the new state, the metrics and the new
    carry.

    A state the plan has not seen is checked against the optimizer and the model only
    when the step fails (:func:`check_state` costs more than a small step): a state of
    another optimizer or model then gets an error that says so, not the KeyError or
    broadcast error it caused.
    """
    try:
        return _body(step, plan, state, x, labels, carry, pool)
    except Exception:
        if carry is not None:
            raise
        try:
            check_state(step, state)
        except TreeMismatchError as mismatch:
            raise mismatch from None
        raise


def _pass(
    step: Step, shard: Shard, state: TrainState, x: np.ndarray, labels: np.ndarray, key: random.Key | None
) -> tuple[float, float | None, PyTree]:
    """Forward, loss and backward of one shard (its gradient, weighted by its share of
    the rows, lands in ``shard.grads``): ``(weighted loss, weighted accuracy or None,
    model state)``."""
    weight = shard.weight
    if weight != 1.0:  # (a shard of a cut batch; one shard is the whole batch)
        x, labels = x[shard.rows], labels[shard.rows]
    logits, cache, model_state = run(shard.site, state.params, x, key, state.model_state)
    try:  # the built-in losses refuse NaN and inf logits; any loss may return a non-finite value
        loss, dlogits = step.loss(logits, labels)
        loss = float(loss)
        if not math.isfinite(loss):
            raise DivergenceError(f"step {state.step}: the loss is {loss}; the state passed in is unchanged")
    except InvalidValueError:  # (DivergenceError is one): outputs that are NaN or inf say why
        if not _finite(logits):
            raise _nonfinite_outputs(state.step, x) from None
        raise
    acc = None
    if logits.ndim == 2 and labels.ndim == 1 and labels.dtype.kind in "iu":
        acc = accuracy(logits, labels) * weight
    if weight != 1.0:  # the batch's mean loss: each shard's mean weighted by its rows
        dlogits = np.multiply(dlogits, weight, dtype=dlogits.dtype)
    run_backward(shard.site, cache, dlogits)
    return loss * weight, acc, model_state


def _body(
    step: Step, plan: Plan, state: TrainState, x: np.ndarray, labels: np.ndarray, carry: Carry | None,
    pool: Executor | None,
) -> tuple[TrainState, dict[str, float], Carry | None]:
    key, shards = step.step_key(state.step), plan.shards
    first = shards[0]  # the shards' gradients are summed into its own: its site and grads are the batch's
    if len(shards) == 1:  # (every small batch: no list, no sums)
        loss, acc, model_state = _pass(step, first, state, x, labels, key)
    else:
        keys = [None if key is None else random.fold_in(key, i) for i in range(len(shards))]
        if plan.group is not None:  # shards that meet (batch norm): each on a carrier of the group's
            parts = plan.group.run([functools.partial(_pass, step, s, state, x, labels, k)
                                    for s, k in zip(shards, keys)])
        elif pool is None:
            parts = [_pass(step, s, state, x, labels, k) for s, k in zip(shards, keys)]
        else:
            parts = list(pool.map(lambda s, k: _pass(step, s, state, x, labels, k), shards, keys))
        loss = math.fsum(p[0] for p in parts)
        acc = None if parts[0][1] is None else math.fsum(p[1] for p in parts)  # type: ignore[misc]
        model_state = parts[0][2]  # (every shard's is the whole batch's)
    if not plan.checked:  # (before the sum: an unwritten leaf holds a marker a sum would lose)
        for s in shards:
            plan.layout.check_written(s.grads, step.model.name)
        plan.checked = True
    grads = first.grads
    for s in shards[1:]:  # in shard order, whatever ran them
        np.add(grads, s.grads, out=grads)
    metrics = {"loss": loss} if acc is None else {"loss": loss, "accuracy": acc}
    model_state = model_state if model_state is EMPTY else freeze(model_state)
    if not plan.flat:  # the optimizer needs the tree (clip_by_global_norm, masked)
        updates, opt_state = step.optimizer.update(first.site.grads, state.opt_state, state.params)
        params = apply_updates(state.params, updates)
        if not all(map(_finite, tree_leaves(params))):
            raise _diverged(state.step, params, first.site.grads, opt_state)
        new = TrainState(params, freeze(opt_state), state.step + 1, model_state)
        return new, metrics, None
    if carry is not None:
        flat, opt_state, packed = carry.params, carry.opt_state, carry.packed
    else:
        flat = plan.layout.pack(state.params)
        opt_state, packed = pack_state(state.opt_state, plan.layout)
    updates, opt_state = step.optimizer.update(grads, opt_state, flat)
    new_flat = np.add(flat, updates, dtype=plan.layout.dtype)
    if not math.isfinite(np.vdot(new_flat, new_flat)) and not np.isfinite(new_flat).all():  # (_finite, inlined)
        raise _diverged(state.step, plan.layout.views(new_flat), grads, opt_state)
    params = plan.layout.unpack(new_flat)
    new_opt, aliased = unpack_state(opt_state, packed, plan.layout, grads)
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
    model: Layer, params: Params, x: ArrayLike, batch_size: int = 64, model_state: PyTree = EMPTY,
    threads: int | None = None,
) -> np.ndarray:
    """Model outputs for ``x`` (N, *input_shape) in eval mode, in chunks of ``batch_size``.

    Eval mode: dropout is off and batch norm uses the running statistics in
    ``model_state``. Checks the model once, then reuses the buffers of one chunk for the
    next. The default chunk keeps the im2col buffers in cache: on a LeNet-size model,
    chunks of 64 run about twice as fast as chunks of 1000. ``threads`` share the
    chunks, each with its own buffers; a chunk's outputs do not depend on which thread
    ran it. The default, None, is every core when a chunk is heavy enough to pay for a
    thread (its training buffers would pass :data:`CHUNK_BYTES`), else one thread (the
    tutorial's network ran 0.7-0.97x on two). Returns a new array (N, *output_shape).
    """
    x = as_batch(x, "predict")
    check_int("predict", "batch_size", batch_size, 1)
    auto, threads = threads is None, thread_count("predict", threads)
    if model.stateful and not model_state:
        raise InvalidValueError(
            f"predict: the {model.name} model has state (batch norm): pass model_state=state.model_state"
        )
    out = np.empty((x.shape[0], *model.output_shape(params, x.shape[1:], x.dtype)), x.dtype)
    starts = range(0, x.shape[0], batch_size)
    if auto and threads > 1 and len(starts) > 1 and batch_size <= shard_rows(
            model, params, x.shape[1:], x.dtype, CHUNK_BYTES):
        threads = 1
    parts = [starts[i::threads] for i in range(min(threads, len(starts)))]
    if len(parts) <= 1:
        _predict_chunks(model, params, x, out, starts, batch_size, model_state)
    else:
        with blas_share(len(parts)), ThreadPoolExecutor(len(parts), thread_name_prefix="fnnet-predict") as pool:
            list(pool.map(lambda part: _predict_chunks(model, params, x, out, part, batch_size, model_state), parts))
    return out


def _predict_chunks(
    model: Layer, params: Params, x: np.ndarray, out: np.ndarray, starts: range, batch_size: int, model_state: PyTree
) -> None:
    """The outputs of the chunks of ``x`` that begin at ``starts``, into ``out``."""
    site = None
    for i in starts:
        chunk = x[i : i + batch_size]
        if site is None or site.sig.x_shape != chunk.shape:  # the first chunk, or a shorter last one
            site = None  # one set of buffers at a time: release the previous one first
            site, _, _ = prepare_checked(
                model, params, chunk.shape, x.dtype, train=False, need_dx=False, backward=False
            )
        y, _, _ = run(site, params, chunk, None, model_state)
        out[i : i + batch_size] = y
