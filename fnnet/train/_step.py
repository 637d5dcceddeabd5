"""The pure training step: :class:`Step`, made by :func:`train_step`."""

from __future__ import annotations

import math
import warnings
from typing import Any

import attrs
import numpy as np

from .. import memory, random
from .._errors import InvalidTypeError, InvalidValueError, ShapeError, instance_of, is_callable
from ..flat import Layout, marker_views
from ..layers import Layer
from ..optim import GradientTransformation
from ..runner import as_batch, check_batch, prepare_checked
from ..shards import MIN_SHARD_ROWS, Setting, ShardGroup, check_comm, check_same_batch, cut, rank_shards
from ..threads import blas_share, largest_product, product_bound
from ..typing import Batch, LossFn
from ._body import TAIL_BYTES, Plan, Shard, run_step
from ._sizing import least_shard_rows, row_bytes
from ._state import TrainState

__all__ = ["Step", "check_inputs", "train_step"]


@attrs.frozen
class Step:
    """``step(state, batch) -> (state, metrics)``: pure; ``state`` is never changed.

    ``batch`` is ``(x, labels)`` with ``x`` (N, *input_shape). ``metrics`` has ``"loss"``
    and, for integer labels, ``"accuracy"`` on this batch (before the update). The model
    runs in train mode; random layers get the key ``fold_in(key, state.step)``. With
    ``comm``, every rank passes the same global batch and runs its whole shards of it
    (see :func:`train_step`).
    """

    model: Layer = attrs.field(validator=instance_of(Layer))
    loss: LossFn = attrs.field(validator=is_callable)
    optimizer: GradientTransformation = attrs.field(validator=instance_of(GradientTransformation))
    key: random.Key | None = attrs.field(default=None)
    rows_per_shard: Setting = attrs.field(default="auto")
    comm: Any = attrs.field(default=None, eq=False)

    @comm.validator
    def _check_comm(self, attribute: Any, value: Any) -> None:
        if value is not None:
            check_comm("train_step", value)

    @rows_per_shard.validator
    def _check_rows(self, attribute: Any, value: Any) -> None:
        if value is None or value == "auto":
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidValueError(f"train_step: rows_per_shard must be 'auto', None or an int >= 1, got {value!r}")
        if not self.model.cuttable:
            raise InvalidValueError(
                f"train_step: the {self.model.name} model has state whose statistics are the whole batch's and "
                "that does not combine shards' sums (shard_sums): it cannot be cut into shards (use "
                "rows_per_shard='auto' or None)"
            )

    @key.validator
    def _key_if_random(self, attribute: Any, value: Any) -> None:
        if value is not None and not isinstance(value, random.Key):
            raise InvalidTypeError(f"train_step: key must be a fnnet.random.Key (fnnet.random.key(seed)), "
                                   f"got {value!r}")
        if self.model.stochastic and value is None:
            raise InvalidValueError(
                "train_step: the model is random in train mode (dropout): pass key=fnnet.random.key(...)"
            )

    @property
    def shards(self) -> Setting:
        """Deprecated name of ``rows_per_shard``."""
        warnings.warn("Step.shards is Step.rows_per_shard", DeprecationWarning, stacklevel=2)
        return self.rows_per_shard

    def step_key(self, step: int) -> random.Key | None:
        """The key of the random layers at ``step``."""
        return None if self.key is None else random.fold_in(self.key, step)

    def cut(self, params: Any, x_shape: tuple, dtype: np.dtype) -> tuple[int, ...]:
        """The rows of each shard of a batch of ``x_shape`` (see :func:`train_step`)."""
        n, rows = x_shape[0], self.rows_per_shard
        if rows == "auto" and (not self.model.cuttable or n < 2 * MIN_SHARD_ROWS):
            return (n,)  # (no two shards of MIN_SHARD_ROWS: no need to ask least_shard_rows)
        least = least_shard_rows(self.model, params, x_shape[1:], dtype) if rows == "auto" else MIN_SHARD_ROWS
        return cut(n, rows, least)

    def plan(self, state: TrainState, x: np.ndarray, labels: np.ndarray, threads: int = 1) -> Plan:
        """Check the params against the model and the input (errors name the layer),
        then prepare the model in train mode for each shard this process runs (all, or
        this rank's: :func:`fnnet.shards.rank_shards`), without the input's gradient (a
        model with state: in a group whose ``threads`` shards compute at once)."""
        sizes = self.cut(state.params, x.shape, x.dtype)
        comm = self.comm
        mine = range(len(sizes)) if comm is None else rank_shards(sizes, comm.Get_size(), comm.Get_rank())
        if comm is not None:
            check_same_batch(comm, x, labels)
        check_batch(self.model, state.params, x.shape, x.dtype)  # (every rank: one with no shard too)
        # every shard's buffers are mapped here, and take their pages mid-pass: refused now, not killed then
        memory.require(row_bytes(self.model, state.params, x.shape[1:], x.dtype) * sum(sizes[i] for i in mine),
                       f"a training step on a batch of shape {tuple(x.shape)}",
                       "train on smaller batches (the shards' buffers are all made at once; under MPI, more ranks "
                       "share them)")
        layout, shards = Layout.of(state.params), []
        watch: list = []  # (the layers of the user's, in every shard)
        group = ShardGroup(len(mine), threads, comm) if len(sizes) > 1 and self.model.stateful else None
        starts = np.cumsum((0, *sizes)).tolist()
        for j, i in enumerate(mine):
            site, layout, grads = prepare_checked(
                self.model, state.params, (sizes[i], *x.shape[1:]), x.dtype, train=True, need_dx=False, group=group,
                shard=j, watch=watch)
            weight = sizes[i] / x.shape[0] if len(sizes) > 1 else 1.0
            shards.append(Shard(slice(starts[i], starts[i + 1]), weight, site, grads, i))
        gathered = sending = summed = None
        if comm is not None:  # (a row: a shard's gradient, then its loss and accuracy)
            width = layout.size + TAIL_BYTES // layout.dtype.itemsize
            gathered = np.empty((len(sizes), width), layout.dtype)
            sending = np.empty((len(shards), width), layout.dtype)
            summed = layout.views(gathered[0, :layout.size])
        return Plan((x.shape, x.dtype, labels.shape, labels.dtype), self.model, self.loss, self.optimizer, self.key,
                    layout, tuple(shards), len(sizes), group, largest_product(state.params, max(sizes)),
                    product_bound(state.params, max(sizes), math.prod(x.shape[2:])),
                    watch=tuple((p, t, marker_views(t)) for p, t in watch),
                    comm=comm, gathered=gathered, summed=summed, sending=sending)

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, float]]:
        x, labels = check_inputs(self, state, batch)
        plan = self.plan(state, x, labels)
        with blas_share(1, product=plan.product, bound=plan.bound):  # (as jit's one thread)
            return run_step(plan, state, x, labels)


_UNSET: Any = object()


def train_step(
    model: Layer, loss: LossFn, optimizer: GradientTransformation, *, key: random.Key | None = None,
    rows_per_shard: Setting = "auto", comm: Any = None, shards: Setting = _UNSET,
) -> Step:
    """Fold a model, a loss ``(outputs, labels) -> (value, d_outputs)`` and an optimizer
    into one pure step; wrap it in :func:`fnnet.jit` for speed. ``key`` drives random
    layers (dropout): step ``t`` uses ``fold_in(key, t)`` (shard ``s`` of a cut batch
    ``fold_in(fold_in(key, t), s)``), so a resumed run draws the same masks.

    ``rows_per_shard``: how a batch is cut into shards, each a forward and backward pass
    whose gradient is added to the others' in shard order: ``"auto"`` (default) cuts a
    batch into 2 shards when each gets at least :func:`~fnnet.train.least_shard_rows` rows,
    into 4 when each gets twice that, and so on up to ``MAX_SHARDS`` (a finer cut than
    two cores need pays a pass a shard, so it must keep shards thick; a model with
    state is cut only when all its state pools the shards' statistics, as batch norm's
    does); an int ``r`` cuts it into ``ceil(n / r)`` shards of at most ``r`` rows; None
    never cuts (one pass over the batch, the bits of fnnet before shards). Shards differ
    in size by one row at most. The cut depends on the model, the input shape and the
    batch size alone, never on the number of threads or ranks. (``shards=`` is its old name.)

    ``comm``: an mpi4py communicator whose ranks train together (data parallel). Every
    rank calls the step with the same state and the same *global* batch; the batch is cut
    as on one process, each rank runs its equal run of whole shards
    (:func:`fnnet.shards.rank_shards`: a batch of one shard runs on rank 0), and every
    rank gathers every shard's gradient and sums them in shard order, as one process
    does. So the params, the metrics and batch norm's statistics are bit for bit those of
    one process, on any number of threads and of ranks that divides the shard count; any
    other number is refused, naming the counts that work. Each call is collective: every
    rank must make it (launch with ``python -m mpi4py`` so that an error on one aborts
    all); an error of the loss's on one rank is raised on every rank."""
    if shards is not _UNSET:
        warnings.warn("train_step(shards=) is train_step(rows_per_shard=): an int there is rows, not shards",
                      DeprecationWarning, stacklevel=2)
        rows_per_shard = shards
    return Step(model, loss, optimizer, key, rows_per_shard, comm)


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
