"""Training-step throughput: fnnet's plain step against jit(step), one thread.

Usage: python benchmarks/bench_step.py [--repeats 7] [--batches 2 32 128] [--seconds 0.3]

Variants are interleaved (A B A B ...) and each cell is the median of the repeats, with
the min-max spread, so that a busy second core disturbs every variant alike. The table
is printed and written to benchmarks/results/step.md.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import fnnet as fn  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - the bench session installs it
    threadpool_limits = None


NETWORKS = {
    "NET-SEED": lambda: fn.serial(
        fn.conv2d(1, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(64), fn.relu(), fn.dense(10)
    ),
    "NET-LENET": lambda: fn.serial(
        fn.conv2d(8, 3), fn.relu(), fn.max_pool2d(2), fn.conv2d(16, 3), fn.relu(), fn.max_pool2d(2),
        fn.flatten(), fn.dense(128), fn.relu(), fn.dense(10),
    ),
}


def make_variants(net: str, batch: int) -> dict:
    """name -> callable running one training step (closure keeps its own state)."""
    model = NETWORKS[net]()
    params, _ = model.init(fn.random.key(0), (1, 28, 28))
    opt = fn.optim.sgd(0.01)
    step = fn.train_step(model, fn.softmax_cross_entropy, opt)
    rng = np.random.default_rng(0)
    data = (rng.random((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch))
    out = {}
    for name, f in (("fnnet step", step), ("fnnet jit", fn.jit(step))):
        box = [fn.TrainState.create(params, opt)]

        def run(f=f, box=box):
            box[0], _ = f(box[0], data)

        out[name] = run
    return out


def throughput(run, batch: int, seconds: float) -> float:
    """samples/s over about ``seconds`` of steady-state steps."""
    run()
    t0 = time.perf_counter()
    n = 0
    while (elapsed := time.perf_counter() - t0) < seconds:
        run()
        n += 1
    return n * batch / elapsed


def sgemm_gflops(repeats: int = 5) -> float:
    a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(10):
            a @ a
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * 512**3 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 32, 128])
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "step.md"))
    args = ap.parse_args()
    if threadpool_limits is not None:
        threadpool_limits(1)

    rows = []
    for net in NETWORKS:
        for batch in args.batches:
            variants = make_variants(net, batch)
            samples = {k: [] for k in variants}
            for _ in range(args.repeats):
                for name, run in variants.items():
                    samples[name].append(throughput(run, batch, args.seconds))
            med = {k: statistics.median(v) for k, v in samples.items()}
            for name, v in samples.items():
                rows.append((net, batch, name, med[name], min(v), max(v), med[name] / med["fnnet step"]))
            print(f"{net} b{batch}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in med.items()), flush=True)

    gflops = sgemm_gflops()
    head = (
        f"fnnet {fn.__version__}, kernels {fn.kernels.backend()}, numpy {np.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}, 1 thread, "
        f"{args.repeats} interleaved repeats of {args.seconds}s; sgemm 512^3 {gflops:.0f} GFLOP/s"
    )
    lines = [
        head,
        "",
        "| network | batch | variant | samples/s (median) | min - max | vs step |",
        "|---|---|---|---|---|---|",
    ]
    for net, batch, name, m, lo, hi, ratio in rows:
        lines.append(f"| {net} | {batch} | {name} | {m:,.0f} | {lo:,.0f} - {hi:,.0f} | {ratio:.2f}x |")
    text = "\n".join(lines)
    print("\n" + text)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
