"""One rank of the data-parallel tests: ``mpiexec -n N python -m mpi4py tests/mpi_worker.py``.

Trains a small CNN for a few steps on fixed global batches and writes its params (and
model state, and each step's metrics) to ``<out>/rank<r>.npz``: by default with
``train_step(comm=)`` (every rank passes the global batch, runs its whole shards), or with
``--slices`` the Horovod pattern (each rank its slice, ``data_parallel`` averages).
``test_distributed.py`` imports the models, data and optimizers from here to compute its
one-process references.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

import fnnet as fn
from fnnet import optim

SHAPE = (1, 10, 10)
KINDS = ("cnn", "dropout", "bn", "resnet")


def model(kind: str = "cnn") -> fn.Layer:
    """``cnn``; ``dropout`` (random in train mode: a key a shard); ``bn`` (batch norm:
    statistics of the whole global batch); ``resnet``: the pipeline's ResNet-8
    (pipelines/models.py: batch norm in every block, residual sums)."""
    if kind == "resnet":
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "pipelines"))
        from models import model_of

        return model_of("resnet")
    extra = {"cnn": [], "dropout": [fn.dropout(0.3)], "bn": [fn.batch_norm()]}[kind]
    return fn.serial(fn.conv2d(4, 3), *extra, fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(16), fn.relu(),
                     fn.dense(5))


def train_step(kind: str, opt: optim.GradientTransformation, rows_per_shard: object, comm: object = None) -> fn.Step:
    return fn.train_step(model(kind), fn.softmax_cross_entropy, opt, key=fn.random.key(3),
                         rows_per_shard=rows_per_shard, comm=comm)


def rows_setting(text: str) -> object:
    return {"auto": "auto", "none": None}[text] if text in ("auto", "none") else int(text)


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


def initial_state(opt: optim.GradientTransformation, kind: str = "cnn") -> fn.TrainState:
    layer = model(kind)
    params, _ = layer.init(fn.random.key(0), SHAPE)
    return fn.TrainState.create(params, opt, layer)


def main() -> None:
    from mpi4py import MPI

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--model", default="cnn", choices=KINDS)
    ap.add_argument("--rows-per-shard", type=rows_setting, default="auto")
    ap.add_argument("--threads", type=int, default=1, help="jit's threads a rank")
    ap.add_argument("--slices", action="store_true", help="each rank its slice and data_parallel (the old pattern)")
    ap.add_argument("--deterministic", action="store_true", help="(with --slices) data_parallel's rank-order sum")
    ap.add_argument("--plain", action="store_true", help="the plain step instead of jit(step)")
    ap.add_argument("--slices-to-step", action="store_true", help="(a mistake) pass each rank's slice to a comm step")
    ap.add_argument("--fail-rank", type=int, default=-1, help="this rank raises before --fail-step")
    ap.add_argument("--fail-step", type=int, default=1)
    ap.add_argument("--bad-label-rank", type=int, default=-1, help="this rank's batch gets a label out of range")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    opt = optimizer(args.optimizer)
    if args.slices:
        opt = fn.distributed.data_parallel(opt, comm, deterministic=args.deterministic)
    step = train_step(args.model, opt, args.rows_per_shard, None if args.slices else comm)
    step = step if args.plain else fn.jit(step, threads=args.threads)
    state = initial_state(opt, args.model)
    fn.distributed.check_replicated(state.params, comm)
    sliced = args.slices or args.slices_to_step
    rows = fn.distributed.rank_rows(args.batch, comm) if sliced else slice(None)
    losses = []
    for t, (x, y) in enumerate(batches(args.steps, args.batch)):
        if comm.Get_rank() == args.fail_rank and t == args.fail_step:
            raise RuntimeError(f"rank {args.fail_rank} fails on purpose at step {t}")
        if comm.Get_rank() == args.bad_label_rank and t == args.fail_step:
            y = y.copy()
            y[-1] = 5  # (5 classes: out of range, in the last shard's rows)
        try:
            state, m = step(state, (x[rows], y[rows]))
        except fn.FnnetError as exc:  # (raised on every rank: say so, then end)
            print(f"rank {comm.Get_rank()}: {type(exc).__name__}: {exc}", flush=True)
            return
        losses.append(m["loss"])
        fn.distributed.check_replicated(state.params, comm)  # identical on every rank after every step
        fn.distributed.check_replicated(state.model_state, comm, "model state")
    fn.checkpoint.save(pathlib.Path(args.out) / f"rank{comm.Get_rank()}.npz",
                       {"params": state.params, "model_state": state.model_state, "losses": np.array(losses)})


if __name__ == "__main__":
    main()
