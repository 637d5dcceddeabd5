"""Shards and ranks: how a batch is cut, which shards a rank runs, where the shards
meet, and how their gradients are gathered and summed.

A training step cuts its batch into shards (:func:`cut`): a function of values (the
batch's rows, the setting, the model's cost of a row), never of the number of threads or
ranks, so the bits are not either. Each rank of an MPI run takes an equal run of whole
shards (:func:`rank_shards`); every rank passes the same global batch
(:func:`check_same_batch`). The shards' gradients are summed in shard order, on one
process (:func:`add_in_order`) or after one collective that puts every rank's shard rows
in global shard order (:func:`gather`). Batch norm's statistics are the whole batch's:
its shards meet in a :class:`ShardGroup` and combine their parts, again in shard order.

The model's cost of a row, which sets the least rows of a shard, is the step's to find
(:func:`fnnet.train.least_shard_rows`); this module needs nothing of the model.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import numpy as np

from ._errors import InvalidTypeError, InvalidValueError

__all__ = ["MAX_SHARDS", "MIN_SHARD_ROWS", "SHARD_BYTES", "Setting", "ShardGroup", "add_in_order", "check_comm",
           "check_same_batch", "cut", "gather", "rank_shards"]

SHARD_BYTES = 16 << 20
"""The least working set of a shard of a training batch: 16 MiB of buffers (LeNet: 64
rows, the default preset's CNN: 32). Measured on this project's CNNs on two cores,
interleaved, the thickest cut that still gives each core a shard was the fastest in every
cell: the default CNN at batch 64 in 2 shards of 32 rows 1.10x 4 of 16 (1.05x on one
thread), LeNet at 128 in 2 of 64 1.13x 4 of 32, LeNet at 32 whole 1.08x 2 shards of 16,
the default CNN with batch norm at 64 in 2 shards 1.33x 4 (docs/jit.md). (At 4 MiB, the
earlier budget, the finer cuts had measured within a few % of these on the same kind of
machine.)"""
MAX_SHARDS = 64
"""Shards a batch is cut into at most. The cut doubles the shard count only while each
shard doubles in rows too (2 shards of ``rows``, 4 of ``2 rows``, 8 of ``4 rows``...),
so a cut finer than a few cores need stays cheap where few cores run it (8 shards of 32
LeNet rows ran 0.88-0.92x 4 of 64 on 2 cores); a machine with more cores than shards
gives the rest to BLAS inside them (:func:`fnnet.threads.blas_share`)."""
MIN_SHARD_ROWS = 4
"""The least rows of a shard under ``"auto"``: fewer make the products too thin to pay for a pass."""

Setting = int | Literal["auto"] | None
"""How a step cuts a batch (``rows_per_shard``): ``"auto"``, rows a shard, or None (whole)."""


def cut(n: int, rows_per_shard: Setting, least_rows: int = MIN_SHARD_ROWS, *old: Any) -> tuple[int, ...]:
    """The rows of each shard of a batch of ``n`` rows: sizes that differ by at most one,
    larger first. ``rows_per_shard``: None keeps the batch whole; an int ``r`` cuts it
    into ``ceil(n / r)`` shards; ``"auto"`` into 2 shards when each gets at least
    ``least_rows`` (see :func:`fnnet.train.least_shard_rows`), into 4 when each gets twice that, and so on
    up to :data:`MAX_SHARDS`. (0.2.0's ``cut(step, params, x_shape, dtype)`` warns and
    is ``step.cut(params, x_shape, dtype)``.)"""
    if hasattr(n, "cut"):  # (0.2.0's signature: a Step first)
        warnings.warn("fnnet.train.cut(step, params, x_shape, dtype) is step.cut(params, x_shape, dtype)",
                      DeprecationWarning, stacklevel=2)
        return n.cut(rows_per_shard, least_rows, *old)
    if rows_per_shard is None or (rows_per_shard == "auto" and n < 2 * max(least_rows, MIN_SHARD_ROWS)):
        return (n,)
    if rows_per_shard == "auto":
        count = 1
        while 2 * count <= MAX_SHARDS and n // (2 * count) >= least_rows * count:  # 2 shards of rows, 4 of 2 rows...
            count *= 2
    else:
        count = max(1, -(-n // int(rows_per_shard)))  # (an empty batch: one empty shard)
    return tuple(n // count + (i < n % count) for i in range(count))


def rank_shards(sizes: tuple[int, ...], ranks: int, rank: int) -> range:
    """The shards of a batch cut into ``sizes`` that rank ``rank`` of ``ranks`` runs: the
    ``rank``-th of ``ranks`` equal runs of consecutive whole shards, so that each shard,
    and the order the shards' gradients are summed in, is the same on any number of ranks.
    A batch of one shard (too small to cut) runs on rank 0 alone. Any other shard count
    that ``ranks`` does not divide is an InvalidValueError naming the shard count, the rank
    counts that divide it, and a finer cut (``rows_per_shard``) that ``ranks`` would share."""
    count = len(sizes)
    if count == 1:
        return range(1) if rank == 0 else range(0)
    if count % ranks:
        n = sum(sizes)
        fits = [r for r in range(1, count + 1) if count % r == 0]
        finer = next((r for r in range(-(-n // ranks), 0, -1) if -(-n // r) % ranks == 0), None)
        raise InvalidValueError(
            f"a batch of {n} rows is cut into {count} shards, which {ranks} ranks cannot share as whole shards "
            f"(the bits would then depend on the ranks): run on {_either(fits)} ranks"
            + ("" if finer is None else f", or cut it so that they can: rows_per_shard={finer} gives "
               f"{-(-n // finer)} shards")
        )
    per = count // ranks
    return range(rank * per, (rank + 1) * per)


def check_comm(name: str, comm: Any) -> Any:
    """``comm``, or an InvalidTypeError from ``name`` unless it has the mpi4py
    communicator methods fnnet calls."""
    methods = ("Get_rank", "Get_size", "Allreduce", "Allgather", "bcast", "allgather")
    missing = [m for m in methods if not callable(getattr(comm, m, None))]
    if missing:
        raise InvalidTypeError(
            f"{name}: comm must be an mpi4py communicator (e.g. mpi4py.MPI.COMM_WORLD), got {type(comm).__name__} "
            f"without {', '.join(missing)}"
        )
    return comm


def check_same_batch(comm: Any, x: np.ndarray, labels: np.ndarray) -> None:
    """InvalidValueError on every rank unless every rank passed the same batch (one
    ``allgather`` of a digest): a rank that passed its own slice, as with
    ``fnnet.distributed.rank_rows``, would train on a part of the batch without a word."""
    h = hashlib.blake2b(repr((x.shape, x.dtype.str, labels.shape, labels.dtype.str)).encode(), digest_size=16)
    h.update(np.ascontiguousarray(x).data)
    h.update(np.ascontiguousarray(labels).data)
    digests = comm.allgather(h.hexdigest())
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise InvalidValueError(
            f"step: the ranks passed different batches (rank 0 and rank{'s' if len(differ) > 1 else ''} "
            f"{', '.join(map(str, differ))}): with comm, every rank passes the whole global batch and the step "
            f"runs its own shards' rows"
        )


def gather(comm: Any, sending: np.ndarray, gathered: np.ndarray, count: int) -> None:
    """Every rank's shard rows (``sending``: this rank's, one row a shard) into
    ``gathered`` (``count`` rows), in global shard order: one ``Allgather``; a batch of one
    shard (``count`` 1, run by rank 0 alone) is rank 0's row, by ``Bcast``. Collective."""
    if count == 1:
        if len(sending):
            gathered[0] = sending[0]
        comm.Bcast(gathered[0], root=0)
    else:
        comm.Allgather(sending, gathered)


def add_in_order(total: np.ndarray, rows: Sequence[np.ndarray]) -> np.ndarray:
    """``total`` plus each of ``rows`` in turn, ``((total + r0) + r1) + ...``, in place:
    shard order, whatever ran the shards or on how many ranks."""
    for row in rows:
        np.add(total, row, out=total)
    return total


T = TypeVar("T")


class _Aborted(Exception):
    """Another shard failed: this one stops at its next meeting point."""


class ShardGroup:
    """The meeting point of ``count`` shards of one step, ``threads`` of which compute at
    once; with ``comm`` (an mpi4py communicator), of every rank's ``count`` shards.

    Batch norm's passes cannot run on a shard alone: each shard hands in its partial sums
    (:meth:`combine`), waits for the other shards', and continues with their combination,
    made once from the parts in shard order, so its bits depend neither on which thread
    ran which shard nor on the order they arrived in. Under MPI the last of a rank's
    shards to arrive gathers every rank's parts (one ``allgather``, ranks in order: global
    shard order) and combines them, the same on every rank.

    Every shard runs on a carrier thread of its own (a shard waiting for the others must
    not hold up the ones it waits for), and a semaphore lets at most ``threads`` of them
    compute at once: one for the plain step, the jit's thread count otherwise. A shard
    gives its permit back while it waits."""

    def __init__(self, count: int, threads: int, comm: Any = None) -> None:
        self.count = count
        self.comm = comm
        self.threads = max(1, min(threads, count))
        self._slots = threading.Semaphore(self.threads)
        self._cond = threading.Condition()
        self._parts: dict[Hashable, list] = {}
        self._done: dict[Hashable, Any] = {}
        self._failed = False
        self._pool: ThreadPoolExecutor | None = None

    def run(self, fns: Sequence[Callable[[], T]]) -> list[T]:
        """Run ``fns[i]`` as shard ``i`` (one each), return their results in shard order;
        if any raised, raise the first shard's error (the others stop at their next
        meeting point)."""
        if len(fns) != self.count:
            raise ValueError(f"a group of {self.count} shards got {len(fns)}")
        self._parts, self._done, self._failed = {}, {}, False
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.count, thread_name_prefix="fnnet-shard")
        futures = [self._pool.submit(self._carry, fn) for fn in fns]
        errors = [f.exception() for f in futures]  # (waits for every shard)
        real = [e for e in errors if e is not None and not isinstance(e, _Aborted)]
        if real:
            raise real[0]
        return [f.result() for f in futures]

    def _carry(self, fn: Callable[[], T]) -> T:
        with self._slots:
            try:
                return fn()
            except BaseException:
                with self._cond:
                    self._failed = True
                    self._cond.notify_all()
                raise

    def combine(self, tag: Hashable, shard: int, part: Any, fn: Callable[[list], Any]) -> Any:
        """Hand in shard ``shard``'s ``part`` for ``tag`` (a meeting point: a layer and a
        direction), wait for every shard's, and return ``fn(parts)``: the parts in shard
        order, combined once, by the last to arrive."""
        self._slots.release()  # let a waiting shard compute meanwhile
        try:
            with self._cond:
                parts = self._parts.setdefault(tag, [None] * self.count)
                parts[shard] = (part,)  # (a 1-tuple: a part may be None)
                if all(p is not None for p in parts):
                    ordered = [p[0] for p in parts]
                    if self.comm is not None:  # every rank's shards, in rank order: global shard order
                        ordered = [q for theirs in self.comm.allgather(ordered) for q in theirs]
                    self._done[tag] = fn(ordered)
                    self._cond.notify_all()
                else:
                    self._cond.wait_for(lambda: tag in self._done or self._failed)
                if tag not in self._done:
                    raise _Aborted(f"another shard failed before {tag!r}")
                return self._done[tag]
        finally:
            self._slots.acquire()


def _either(counts: list[int]) -> str:
    return str(counts[0]) if len(counts) == 1 else ", ".join(map(str, counts[:-1])) + f" or {counts[-1]}"
