"""``jit``: the training step with its plans kept, one per input signature.

A :class:`JitStep` runs ``run_step`` (``fnnet/train/_body.py``), the body the plain step
runs; it only keeps the plan of each input signature (checks once, buffers made once,
gradients in one flat vector). Each thread gets its own plans (kept by thread id), so
one JitStep can serve several threads.

A plan cut into shards (see :func:`fnnet.train_step`) runs them on a pool of
``threads`` threads; the shards' gradients are added in shard order afterwards, so the
bits do not depend on the number of threads. numpy and the compiled kernels release the
GIL. While shards run on several threads, BLAS gets the rest of the cores' budget
(:func:`fnnet.threads.blas_share`: one thread each on a machine with as many cores as
shard threads), and its own setting back afterwards.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from threading import Lock, get_ident
from typing import Any

from .._errors import InvalidTypeError
from ..flat import flat_of
from ..threads import blas_share, thread_count
from ._body import run_step
from ._state import TrainState
from ._step import Step, check_inputs

__all__ = ["JitStep", "jit"]


class JitStep:
    """``step`` specialised per input signature: same signature, bit-identical results.

    For each new ``(x.shape, x.dtype, labels.shape, labels.dtype)``, and whenever the
    params change structure, shape or dtype, it checks the params against the model
    (errors name the layer, as the plain step's do) and prepares the model's buffers;
    later calls reuse them. The states it returns own fresh read-only buffers: a state
    you hold is never overwritten. Plans are kept per thread.
    """

    def __init__(self, step: Step, threads: int | None = None) -> None:
        if not isinstance(step, Step):
            raise InvalidTypeError(f"jit: expected a step made by train_step, got {type(step).__name__}")
        self.step = step
        self.threads = thread_count("jit", threads)
        self._plans: dict[int, dict] = {}  # {thread id: {signature: Plan}} (a finished thread's id is reused)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = Lock()

    def _workers(self) -> ThreadPoolExecutor:
        """The pool that runs shards (made on first use)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fnnet-jit")
        return self._pool

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, float]]:
        step = self.step
        x, labels = check_inputs(step, state, batch)
        plans = self._plans.get(get_ident())
        if plans is None:  # this thread's first call
            plans = self._plans[get_ident()] = {}
        plan = plans.get((x.shape, x.dtype, labels.shape, labels.dtype))
        found = flat_of(state.params)  # (params a step returned view one vector: their layout is known)
        if plan is None or not ((found is not None and found[1] is plan.layout) or plan.layout.matches(state.params)):
            plan = step.plan(state, x, labels, self.threads)
            plans[plan.signature] = plan
        threads = min(self.threads, len(plan.shards))
        with blas_share(threads, product=plan.product, bound=plan.bound):
            return run_step(plan, state, x, labels, self._workers() if threads > 1 else None)


def jit(step: Step, threads: int | None = None) -> JitStep:
    """Specialise ``step`` (from :func:`fnnet.train_step`): same signature, bit-identical
    results, checks once per input signature, buffers reused between calls.

    ``threads``: how many threads run the shards of a batch the step cuts (default:
    :func:`fnnet.threads.cores`, every core this process may use; 1: none). While they
    run, BLAS is held to the cores left to each, and where one thread runs the step, BLAS
    keeps its own threads only for large products (:func:`fnnet.threads.blas_share`).
    The bits are the same for any number."""
    return JitStep(step, threads)
