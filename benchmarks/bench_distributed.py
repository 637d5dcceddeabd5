"""The gradient reduction's share of a data-parallel step, over MPI.

    mpiexec -n 2 python -m mpi4py benchmarks/bench_distributed.py [--steps 300] [--batch 64]

Trains the default preset's CNN (conv 16 => pool => conv 32 => pool => dense 128 =>
dense 10, float32, Adam) on random images, under ``jit``, in three ways: the step with
``comm`` (every rank passes the global batch of ``--batch`` and runs its whole shards;
every shard's gradient is gathered and summed in shard order, the metrics gathered: the
bits of one process), and the Horovod pattern (each rank its slice; ``data_parallel``
with Allreduce, or with Allgather + a sum in rank order). For each it reports the median
step time and the time spent inside the collectives (which includes waiting for the
slower rank), and the gradient's collective alone on buffers of its size after a barrier
(no wait). The three run in turn twice and the second round is reported (the first
mode run in a process measured up to 10 % slower: warm-up). Rank 0 prints a markdown
table and writes it to benchmarks/results/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import fnnet as fn  # noqa: E402
from fnnet.distributed import data_parallel, mean_gradient, rank_rows  # noqa: E402


class TimedComm:
    """``comm`` with the seconds spent in its gradient collectives added up."""

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm, self.seconds = comm, 0.0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.comm, name)

    def _timed(self, method: str, *args: object) -> None:
        t0 = time.perf_counter()
        getattr(self.comm, method)(*args)
        self.seconds += time.perf_counter() - t0

    def Allreduce(self, send: np.ndarray, recv: np.ndarray) -> None:  # noqa: N802
        self._timed("Allreduce", send, recv)

    def Allgather(self, send: np.ndarray, recv: np.ndarray) -> None:  # noqa: N802
        self._timed("Allgather", send, recv)

    def Bcast(self, buf: np.ndarray, root: int = 0) -> None:  # noqa: N802
        self._timed("Bcast", buf, root)

    def allgather(self, obj: object) -> list:
        t0 = time.perf_counter()
        try:
            return self.comm.allgather(obj)
        finally:
            self.seconds += time.perf_counter() - t0


def model() -> fn.Layer:
    return fn.serial(fn.conv2d(16, 3), fn.relu(), fn.max_pool2d(2), fn.conv2d(32, 3), fn.relu(), fn.max_pool2d(2),
                     fn.flatten(), fn.dense(128), fn.relu(), fn.dense(10))


def run(comm: MPI.Comm, mode: str, steps: int, batch: int) -> dict:
    """``mode``: "shards" (the step with comm), "allreduce" or "deterministic" (data_parallel)."""
    timed, n = TimedComm(comm), comm.Get_size()
    if mode == "shards":
        opt = fn.optim.adam(1e-3)
        step = fn.jit(fn.train_step(model(), fn.softmax_cross_entropy, opt, comm=timed), threads=1)  # a rank a core
    else:
        opt = data_parallel(fn.optim.adam(1e-3), timed, deterministic=mode == "deterministic")
        step = fn.jit(fn.train_step(model(), fn.softmax_cross_entropy, opt), threads=1)
    params, _ = model().init(fn.random.key(0), (1, 28, 28))
    state = fn.TrainState.create(params, opt)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    if mode != "shards":  # (the step with comm takes the global batch)
        rows = rank_rows(batch, comm)
        x, y = x[rows], y[rows]
    for _ in range(20):  # warm-up: plans, caches
        state, _ = step(state, (x, y))
    comm.Barrier()
    times, inside = [], []
    for _ in range(steps):
        before = timed.seconds
        t0 = time.perf_counter()
        state, _ = step(state, (x, y))
        times.append(time.perf_counter() - t0)
        inside.append(timed.seconds - before)
    alone = []
    size = fn.param_count(params)
    grad, gathered = np.ones(size, np.float32), np.empty((n, size), np.float32)
    for _ in range(steps):
        comm.Barrier()
        t0 = time.perf_counter()
        if mode == "shards":  # (one shard a rank: 2 shards of 32 on 2 ranks)
            comm.Allgather(grad[None], gathered)
        else:
            mean_gradient(grad, comm, mode == "deterministic")
        alone.append(time.perf_counter() - t0)
    return {"step": np.median(times), "inside": np.median(inside), "alone": np.median(alone), "params": size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    n = comm.Get_size()
    lines = [
        f"{n} ranks ({MPI.Get_library_version().splitlines()[0].strip()}), global batch {args.batch} "
        f"({args.batch // n} a rank), jit, Adam, one BLAS thread a rank; medians of {args.steps} steps",
        "",
        "| step | step (ms) | inside the collectives (ms) | share of the step | gradient collective alone (ms) |",
        "|---|---|---|---|---|",
    ]
    names = {"shards": "`train_step(comm=)`: every shard's gradient gathered, summed in shard order (+ metrics)",
             "allreduce": "`data_parallel`: Allreduce of each rank's slice", "deterministic":
             "`data_parallel(deterministic=True)`: Allgather + rank-order sum"}
    results = {}
    for _ in range(2):  # (the second round is reported)
        for mode in names:
            results[mode] = run(comm, mode, args.steps, args.batch)
    for mode, name in names.items():
        r = results[mode]
        lines.append(f"| {name} | {r['step'] * 1e3:.3f} | {r['inside'] * 1e3:.3f} | {r['inside'] / r['step']:.1%} | "
                     f"{r['alone'] * 1e3:.3f} |")
    lines += ["", f"gradient: {r['params']} float32 values ({r['params'] * 4 / 1e6:.2f} MB)"]
    if comm.Get_rank() == 0:
        text = "\n".join(lines) + "\n"
        print(text)
        out = pathlib.Path(__file__).parent / "results" / "distributed.md"
        out.write_text(text)


if __name__ == "__main__":
    main()
