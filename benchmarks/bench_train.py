"""Training and inference throughput of fnnet against its peers, on one thread or all cores.

Usage: python benchmarks/bench_train.py [--threads 1|all] [--repeats 5] [--seconds 0.25] [--peers ...] [--nets ...]

For each network and batch, the frameworks run interleaved (A B C A B C ...) for
``--repeats`` rounds of about ``--seconds`` each after a warm-up; a cell is the median
samples/s with the min-max spread. The single-thread sgemm GFLOP/s of numpy's BLAS is
measured in the same run. ``--threads 1``: every framework on one thread (written to
benchmarks/results/train.md). ``--threads all``: each at its own default for all cores
(PyTorch's intra-op threads, XLA's pool, fnnet's jit threads with BLAS at one thread,
numpy's multi-threaded BLAS), with fnnet's jit on one thread beside it for the scaling
(benchmarks/results/train-all-cores.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import platform
import statistics
import sys
import time

ALL = "--threads" in sys.argv and sys.argv[sys.argv.index("--threads") + 1] == "all"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before any framework is imported
    if ALL:
        os.environ.pop(var, None)  # each framework's own default
    else:
        os.environ[var] = "1"
if not ALL:
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

    return fnnet.train.cores()


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
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" /
                                         ("train-all-cores.md" if ALL else "train.md")))
    args = ap.parse_args()
    threads = None if ALL else 1
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("threadpoolctl missing: relying on *_NUM_THREADS")
        threadpool_limits = None
    if threadpool_limits is not None and not ALL:
        threadpool_limits(1)

    def blas(name: str):  # fnnet's threads are its own: its BLAS calls stay on one thread each
        if threadpool_limits is None or not ALL:
            return contextlib.nullcontext()
        return threadpool_limits(1 if name.startswith("fnnet") else os.cpu_count(), user_api="blas")

    available = {}
    for name in args.peers:
        try:
            peers.PEERS[name]("NET-SEED", 2, threads)
            available[name] = peers.PEERS[name]
        except ImportError as exc:
            print(f"peer {name!r} is not available ({exc}); going on without it")
    with (threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()):
        gflops = sgemm_gflops()
    print(f"single-thread sgemm 512^3: {gflops:.1f} GFLOP/s", flush=True)

    rows = []
    for net in args.nets:
        fwd_flops, train_flops = peers.flops_per_sample(net)
        cells = [("train", b) for b in (args.batches or peers.TRAIN_BATCHES[net])] + [("infer", peers.INFER_BATCH)]
        for mode, batch in cells:
            runs = {}
            for name, make in available.items():
                train, infer = make(net, batch if mode == "train" else 2, threads)
                runs[name] = train if mode == "train" else infer
            samples = {k: [] for k in runs}
            for _ in range(args.repeats):
                for name, run in runs.items():
                    with blas(name):
                        samples[name].append(throughput(run, batch, args.seconds))
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
        + (f"all cores ({os.cpu_count()}): each framework's default threads, fnnet's jit and predict at "
           f"{peers_threads()} threads" if ALL else "1 thread")
        + f"; {args.repeats} interleaved repeats of {args.seconds}s; single-thread sgemm {gflops:.1f} GFLOP/s"
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
    text = "\n".join(lines)
    print("\n" + text)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
