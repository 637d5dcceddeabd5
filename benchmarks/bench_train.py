"""Training and inference throughput of fnnet against its peers, on one thread or all cores.

Usage: python benchmarks/bench_train.py [--threads 1|all] [--repeats 5] [--seconds 0.25] [--peers ...] [--nets ...]

``--threads 1`` (the lab's table, benchmarks/results/train.md): every framework forced to
one thread, all in this process; for each network and batch the frameworks run
interleaved (A B C A B C ...) for ``--repeats`` rounds of about ``--seconds`` each after
a warm-up. ``--threads all`` (the user's table, benchmarks/results/train-all-cores.md):
each framework as a user runs it, in a fresh process of its own with nothing set in the
environment (no ``*_NUM_THREADS``, no ``XLA_FLAGS``): PyTorch's intra-op threads, XLA's
pool, numpy's multi-threaded BLAS, fnnet's jit and predict at their defaults (they share
the cores with BLAS themselves); the rounds alternate the processes (A B C A B C ...,
each process measuring every cell once), and fnnet's jit on one thread runs beside them
for the scaling. A cell is the median samples/s with the min-max spread. The
single-thread sgemm GFLOP/s of numpy's BLAS is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ALL = "--threads" in sys.argv and sys.argv[sys.argv.index("--threads") + 1] == "all"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before any framework is imported
    if ALL:
        os.environ.pop(var, None)  # each framework's own default (and so in the worker processes)
    else:
        os.environ[var] = "1"
if ALL:
    os.environ.pop("XLA_FLAGS", None)
else:
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import peers  # noqa: E402


def throughput(fn, batch: int, seconds: float) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    return n * batch / elapsed


def sgemm_gflops(n: int = 512, repeats: int = 7) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    best = min(_time(lambda: a @ a, 5) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _time(f, k: int) -> float:
    t = time.perf_counter()
    for _ in range(k):
        f()
    return (time.perf_counter() - t) / k


def peers_threads() -> int:
    import fnnet

    return fnnet.threads.cores()


def cells(nets: list[str], batches: list[int] | None) -> list[tuple[str, str, int]]:
    """(network, "train" or "infer", batch) of every cell, in table order."""
    return [(net, mode, batch) for net in nets
            for mode, batch in [("train", b) for b in (batches or peers.TRAIN_BATCHES[net])]
            + [("infer", peers.INFER_BATCH)]]


def measure(names: list[str], todo: list[tuple[str, str, int]], repeats: int, seconds: float,
            threads: int | None) -> dict[tuple, dict[str, list[float]]]:
    """Samples/s of each framework in ``names`` for each cell, interleaved, in this process."""
    out = {}
    for net, mode, batch in todo:
        runs = {}
        for name in names:
            train, infer = peers.PEERS[name](net, batch if mode == "train" else 2, threads)
            runs[name] = train if mode == "train" else infer
        samples = {k: [] for k in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                samples[name].append(throughput(run, batch, seconds))
        out[(net, mode, batch)] = samples
    return out


def in_processes(names: list[str], nets: list[str], batches: list[int] | None, repeats: int,
                 seconds: float) -> dict[tuple, dict[str, list[float]]]:
    """The same, each framework in fresh processes of its own (``--worker``), ``repeats``
    rounds alternating the frameworks' processes."""
    out: dict[tuple, dict[str, list[float]]] = {cell: {n: [] for n in names} for cell in cells(nets, batches)}
    for _ in range(repeats):
        for name in names:
            cmd = [sys.executable, __file__, "--threads", "all", "--worker", name, "--seconds", str(seconds),
                   "--nets", *nets] + (["--batches", *map(str, batches)] if batches else [])
            got = subprocess.run(cmd, capture_output=True, text=True)
            if got.returncode != 0:
                raise SystemExit(f"worker {name} failed:\n{got.stderr[-3000:]}")
            for row in json.loads(got.stdout.splitlines()[-1]):
                out[tuple(row["cell"])][name].append(row["samples"])
    return out


def versions(names) -> str:
    out = [f"numpy {np.__version__}"]
    for mod in ("fnnet", "torch", "jax"):
        if any(mod in n for n in names):
            m = __import__(mod)
            out.append(f"{mod} {m.__version__}" + (f" ({m.get_num_threads()} threads)" if mod == "torch" else ""))
    import fnnet

    out.append(f"fnnet kernels {fnnet.kernels.backend()}")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", choices=("1", "all"), default="1")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.25)
    ap.add_argument("--peers", nargs="+", default=[p for p in peers.PEERS if ALL or p != "fnnet jit 1 thread"])
    ap.add_argument("--nets", nargs="+", default=list(peers.NETS))
    ap.add_argument("--batches", nargs="+", type=int, help="training batches (default: each network's)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # (one framework's process of --threads all)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" /
                                         ("train-all-cores.md" if ALL else "train.md")))
    args = ap.parse_args()
    todo = cells(args.nets, args.batches)
    if args.worker:  # one sample of every cell, as JSON on the last line (--threads 1: BLAS at one thread too)
        if not ALL:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
        got = measure([args.worker], todo, 1, args.seconds, None if ALL else 1)
        print(json.dumps([{"cell": list(c), "samples": v[args.worker][0]} for c, v in got.items()]))
        return
    from threadpoolctl import threadpool_limits

    if not ALL:
        threadpool_limits(1)
    available = []
    for name in args.peers:
        try:
            peers.PEERS[name]("NET-SEED", 2, 1 if not ALL else None)
            available.append(name)
        except ImportError as exc:
            print(f"peer {name!r} is not available ({exc}); going on without it")
    with threadpool_limits(1, user_api="blas"):
        gflops = sgemm_gflops()
    print(f"single-thread sgemm 512^3: {gflops:.1f} GFLOP/s", flush=True)
    if ALL:
        results = in_processes(available, args.nets, args.batches, args.repeats, args.seconds)
    else:
        results = measure(available, todo, args.repeats, args.seconds, 1)

    rows = []
    for (net, mode, batch), samples in results.items():
        fwd_flops, train_flops = peers.flops_per_sample(net)
        med = {k: statistics.median(v) for k, v in samples.items()}
        peer_meds = {k: v for k, v in med.items() if not k.startswith("fnnet")}
        one = med.get("fnnet jit 1 thread")
        best_peer = max(peer_meds, key=peer_meds.get) if peer_meds else None
        flops = train_flops if mode == "train" else fwd_flops
        for name, v in samples.items():
            ratio = med[name] / med[best_peer] if best_peer else float("nan")
            rows.append((net, mode, batch, name, med[name], min(v), max(v), ratio, best_peer,
                         100 * med[name] * flops / (gflops * 1e9), med[name] / one if one else None))
        line = ", ".join(f"{k} {v:,.0f}" for k, v in med.items())
        print(f"{net} {mode} b{batch}: {line} samples/s", flush=True)

    head = (
        f"{versions(available)}; {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}; "
        + (f"all cores ({os.cpu_count()}), each framework in fresh processes of its own with nothing set: its "
           f"default threads, fnnet's jit and predict at {peers_threads()} threads sharing the cores with BLAS; "
           f"{args.repeats} rounds alternating the processes, {args.seconds}s a cell"
           if ALL else f"1 thread; {args.repeats} interleaved repeats of {args.seconds}s")
        + f"; single-thread sgemm {gflops:.1f} GFLOP/s"
    )
    last = "scaling vs fnnet 1 thread" if ALL else "% sgemm peak (1 thread)"
    lines = [
        head, "",
        f"| network | mode | batch | framework | samples/s (median) | min - max | vs best peer | {last} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for net, mode, batch, name, m, lo, hi, ratio, best, pct, scale in rows:
        tail = (f"{scale:.2f}x" if scale else "") if ALL else f"{pct:.1f} %"
        vs = f"{ratio:.2f}x ({best})" if best else "-"  # (no peer ran: --peers with fnnet alone)
        lines.append(f"| {net} | {mode} | {batch} | {name} | {m:,.0f} | {lo:,.0f} - {hi:,.0f} | {vs} | {tail} |")
    peers.report(lines, args.out)


if __name__ == "__main__":
    main()
