"""The shards of one training step, for layers whose math needs the whole batch.

A step cuts its batch into shards (:func:`fnnet.train.cut`) and runs a forward and a
backward pass on each. Batch norm's statistics are the whole batch's, so its passes
cannot run on a shard alone: each shard hands in its partial sums, waits for the other
shards', and continues with their combination. :class:`ShardGroup` is that meeting
point. The combination is made once, from the parts in shard order, so its bits do not
depend on which thread ran which shard, nor on the order they arrived in.

Under MPI (a step with ``comm``) each rank runs whole shards of the batch: the last of a
rank's shards to arrive gathers every rank's parts (one ``allgather``, ranks in order, so
the parts are in global shard order) and combines them, the same on every rank.

Every shard runs on a carrier thread of its own (a shard waiting for the others must
not hold up the ones it waits for), and a semaphore lets at most ``threads`` of them
compute at once: one for the plain step, the jit's thread count otherwise. A shard
gives its permit back while it waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["ShardGroup"]

T = TypeVar("T")


class _Aborted(Exception):
    """Another shard failed: this one stops at its next meeting point."""


class ShardGroup:
    """The meeting point of ``count`` shards of one step, ``threads`` of which compute at
    once; with ``comm`` (an mpi4py communicator), of every rank's ``count`` shards."""

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
