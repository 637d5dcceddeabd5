"""Data-parallel training over MPI: helpers, and the gradient all-reduce as an optimizer wrapper.

The step itself spreads a batch over ranks with the bits of one process:
``fn.train_step(model, loss, optimizer, comm=comm)`` (every rank passes the global batch,
runs its whole shards, and sums every shard's gradient in shard order: see
:func:`fnnet.train_step` and docs/scaling.md). This module holds what goes around it
(:func:`broadcast`, :func:`check_replicated`) and, for loops whose gradients do not come
from ``train_step``, the Horovod pattern: every rank takes its own slice of each global
batch (:func:`rank_rows`), and :func:`data_parallel` averages the gradients over all
ranks before the wrapped optimizer's update, so every rank applies the same update::

    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    opt = fn.distributed.data_parallel(fn.optim.adam(1e-3), comm)
    rows = fn.distributed.rank_rows(batch_size, comm)  # this rank's rows of every global batch
    updates, opt_state = opt.update(my_gradients_of(x[rows]), opt_state, params)

Its bits depend on the number of ranks (each rank's partial sum, then the ranks').

Launch with ``mpiexec -n N python -m mpi4py script.py`` (``-m mpi4py`` turns an
uncaught exception on one rank into ``MPI_Abort``, which ends every rank).

``comm`` is an ``mpi4py`` communicator (``MPI.COMM_WORLD`` or a sub-communicator); this
module only calls its methods, so it imports without mpi4py (``pip install
mpi4py``, or the extra ``distributed``, installs it; an MPI runtime comes from the site or ``pip install
mpich``).

Two reductions, both one collective per step on one flat buffer:

* ``deterministic=False``: ``Allreduce`` (sum). The order in which the MPI adds the N
  gradients is its own choice (by algorithm, message size and N). With two ranks every
  order gives the same bits (``a + b == b + a``); with more, the bits can depend on the
  MPI implementation and version, though a given build is repeatable.
* ``deterministic=True``: ``Allgather`` of every rank's gradient, then a sum in rank
  order, ``((g0 + g1) + g2) + ...``, on every rank: the bits are those of that sum in
  numpy whatever the MPI. Cost: each rank receives N gradients instead of one reduced
  gradient, and holds an (N, P) buffer.

Either way the result is divided by N, so a step on N slices of B/N rows updates with the
mean gradient of the B rows, as one process on the whole batch does, up to rounding (the
per-slice gradients are summed in another order than one BLAS product over B rows).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ._errors import InvalidTypeError, InvalidValueError, check_int
from .checkpoint import digest
from .flat import Layout, flat_of
from .optim import GradientTransformation
from .shards import check_comm
from .tree import freeze
from .typing import OptState, PyTree

__all__ = ["broadcast", "check_replicated", "data_parallel", "mean_gradient", "rank_rows"]


def mean_gradient(grad: np.ndarray, comm: Any, deterministic: bool = False) -> np.ndarray:
    """The mean over all ranks of ``grad`` (a flat float array, the same size on every
    rank), as a new array: one ``Allreduce``, or with ``deterministic`` one ``Allgather``
    and a sum in rank order. Collective: every rank of ``comm`` must call it."""
    n = comm.Get_size()
    grad = np.ascontiguousarray(grad)
    if deterministic:
        gathered = np.empty((n, grad.size), grad.dtype)
        comm.Allgather(grad, gathered)
        total = gathered[0]  # (a view: the sum builds up in the buffer MPI filled)
        for row in gathered[1:]:  # ((g0 + g1) + g2) + ...: rank order, on every rank
            total += row
    else:
        total = np.empty_like(grad)
        comm.Allreduce(grad, total)  # (mpi4py's default op is MPI.SUM)
    return np.divide(total, n, out=total)


def data_parallel(
    optimizer: GradientTransformation, comm: Any, *, deterministic: bool = False
) -> GradientTransformation:
    """``optimizer`` applied to the gradient averaged over every rank of ``comm``.

    ``optimizer``: any gradient transformation; its state keeps its structure, so a
    checkpoint moves freely between runs on 1 and on N processes. ``comm``: an mpi4py
    communicator whose ranks train the same model on slices of the same global batch.
    ``deterministic``: reduce with ``Allgather`` and a sum in rank order (bits
    independent of the MPI) instead of ``Allreduce`` (see the module's notes).

    A training step's gradients are views of one flat vector (``fnnet.flat.flat_of``),
    and the reduction is one collective on it; another tree of gradients is packed into
    one vector first, so it is one collective as well. The optimizer gets the mean as
    views of one vector, which an elementwise one runs on whole. Every rank must call
    ``update`` at every step: a rank that stops makes the others wait (launch with
    ``python -m mpi4py`` so that an error on one rank aborts all).
    """
    if not isinstance(optimizer, GradientTransformation):
        raise InvalidTypeError(
            f"data_parallel: optimizer must be a GradientTransformation, got {type(optimizer).__name__}"
        )
    comm = check_comm("data_parallel", comm)
    if not isinstance(deterministic, bool):
        raise InvalidTypeError(f"data_parallel: deterministic must be a bool, got {deterministic!r}")

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        found = flat_of(updates)  # (a step's gradients: the vector they view, as it is)
        layout = Layout.of(updates) if found is None else found[1]
        vector = layout.pack(updates) if found is None else found[0]
        return optimizer.update(layout.views(mean_gradient(vector, comm, deterministic)), state, params)

    return GradientTransformation(optimizer.init, update)


def rank_rows(batch_size: int, comm: Any) -> slice:
    """This rank's rows of a global batch of ``batch_size``: the ``rank``-th of
    ``size`` equal consecutive slices. ``batch_size`` must be divisible by the number
    of ranks (unequal slices would weight the rows of the smaller ones more). (Not the
    shards a step cuts a batch into, which each rank's step cuts its own rows into.)"""
    comm = check_comm("rank_rows", comm)
    batch_size = check_int("rank_rows", "batch_size", batch_size, 1)
    n, rank = comm.Get_size(), comm.Get_rank()
    if batch_size % n:
        raise InvalidValueError(
            f"rank_rows: a global batch of {batch_size} does not split into {n} equal slices (one per rank): "
            f"use a batch size divisible by {n}"
        )
    per = batch_size // n
    return slice(rank * per, (rank + 1) * per)


def broadcast(tree: PyTree, comm: Any, root: int = 0) -> PyTree:
    """Rank ``root``'s ``tree`` on every rank (read-only leaves); the other ranks'
    ``tree`` arguments are ignored (pass None). Collective."""
    comm = check_comm("broadcast", comm)
    return freeze(comm.bcast(tree if comm.Get_rank() == root else None, root=root))


def check_replicated(tree: PyTree, comm: Any, what: str = "params") -> None:
    """InvalidValueError on every rank unless ``tree`` has the same structure and bits on
    every rank of ``comm`` (one ``allgather`` of a sha256 each). Collective."""
    comm = check_comm("check_replicated", comm)
    digests = comm.allgather(digest(tree))
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise InvalidValueError(
            f"check_replicated: the {what} differ between ranks (rank 0 and rank{'s' if len(differ) > 1 else ''} "
            f"{', '.join(map(str, differ))}): start every rank from the same key, or broadcast rank 0's"
        )


def __getattr__(name: str) -> Any:
    if name == "shard":  # (0.2.0's name, which a step's shards made ambiguous)
        warnings.warn("fnnet.distributed.shard is fnnet.distributed.rank_rows", DeprecationWarning, stacklevel=2)
        return rank_rows
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
