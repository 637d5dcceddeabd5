"""One rank of the data-parallel tests: ``mpiexec -n N python -m mpi4py tests/mpi_worker.py``.

Trains a small CNN for a few steps on fixed global batches, each rank on its slice, and
writes its params to ``<out>/rank<r>.npz``. ``test_distributed.py`` imports the model,
data and optimizers from here to compute its one-process references.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

import fnnet as fn
from fnnet import optim

SHAPE = (1, 10, 10)


def model() -> fn.Layer:
    return fn.serial(fn.conv2d(4, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(16), fn.relu(),
                     fn.dense(5))


def optimizer(name: str) -> optim.GradientTransformation:
    """``adam`` and ``sgd`` are elementwise (they run on the step's flat gradient); ``clip``
    first takes the norm over the tree's leaves."""
    if name == "adam":
        return optim.adam(1e-2)
    if name == "sgd":
        return optim.sgd(0.1, momentum=0.9)
    return optim.chain(optim.clip_by_global_norm(0.5), optim.sgd(0.1))


def batches(steps: int, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The global batches: the same on every rank (a fixed seed)."""
    rng = np.random.default_rng(7)
    return [(rng.standard_normal((batch, *SHAPE)).astype(np.float32), rng.integers(0, 5, batch))
            for _ in range(steps)]


def initial_state(opt: optim.GradientTransformation) -> fn.TrainState:
    params, _ = model().init(fn.random.key(0), SHAPE)
    return fn.TrainState.create(params, opt)


def main() -> None:
    from mpi4py import MPI

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--deterministic", action="store_true")
    ap.add_argument("--plain", action="store_true", help="the plain step instead of jit(step)")
    ap.add_argument("--fail-rank", type=int, default=-1, help="this rank raises before --fail-step")
    ap.add_argument("--fail-step", type=int, default=1)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    opt = fn.distributed.data_parallel(optimizer(args.optimizer), comm, deterministic=args.deterministic)
    step = fn.train_step(model(), fn.softmax_cross_entropy, opt)
    step = step if args.plain else fn.jit(step, threads=1)  # one thread a rank
    state = initial_state(opt)
    fn.distributed.check_replicated(state.params, comm)
    rows = fn.distributed.rank_rows(args.batch, comm)
    for t, (x, y) in enumerate(batches(args.steps, args.batch)):
        if comm.Get_rank() == args.fail_rank and t == args.fail_step:
            raise RuntimeError(f"rank {args.fail_rank} fails on purpose at step {t}")
        state, _ = step(state, (x[rows], y[rows]))
        fn.distributed.check_replicated(state.params, comm)  # identical on every rank after every step
    fn.checkpoint.save(pathlib.Path(args.out) / f"rank{comm.Get_rank()}.npz", {"params": state.params})


if __name__ == "__main__":
    main()
