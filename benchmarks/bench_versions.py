"""fnnet against another installed fnnet (the release before, in a venv of its own) and the
peers, the same cells, in alternating processes.

Usage: python benchmarks/bench_versions.py --other /path/to/venv/bin/python [--threads 1|all]
       [--nets ...] [--batches ...] [--peers torch ...] [--repeats 5] [--seconds 0.5] [--out FILE]

Each round runs one worker process (``bench_train.py --worker``) per framework in turn:
this interpreter's fnnet (``jit``), the other interpreter's fnnet (``jit``: its own
fnnet, this checkout's benchmark code), and each peer; a worker measures every cell once.
``--threads 1``: every worker at one thread (BLAS too); ``all``: each at its defaults with
nothing set in the environment. A cell is the median over the rounds; the ratios are
medians of the rounds' ratios (the machine's speed drifts between rounds, not inside one).
The single-thread sgemm is measured in each round too.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).parent
SGEMM = ("import numpy as np, time\n"  # (run with OPENBLAS_NUM_THREADS=1: one core's sgemm)
         "a = np.random.default_rng(0).random((512, 512), dtype=np.float32); a @ a; r = []\n"
         "for _ in range(7):\n"
         "    t = time.perf_counter(); [a @ a for _ in range(5)]; r.append((time.perf_counter() - t) / 5)\n"
         "print(2 * 512 ** 3 / min(r) / 1e9)")


def worker(python: str, name: str, args: argparse.Namespace) -> dict[tuple, float]:
    cmd = [python, str(HERE / "bench_train.py"), "--threads", args.threads, "--worker", name, "--seconds",
           str(args.seconds), "--nets", *args.nets] + (["--batches", *map(str, args.batches)] if args.batches else [])
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    got = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if got.returncode != 0:
        raise SystemExit(f"worker {name} ({python}) failed:\n{got.stderr[-3000:]}")
    return {tuple(row["cell"]): row["samples"] for row in json.loads(got.stdout.splitlines()[-1])}


def version(python: str) -> str:
    code = ("import fnnet; "
            "print(fnnet.__version__, fnnet.kernels.backend(), getattr(fnnet.kernels, 'isa', lambda: '-')())")
    return subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/").stdout.strip()


def main() -> None:
    sys.path.insert(0, str(HERE))
    import peers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", required=True, help="the python of a venv with the other fnnet installed")
    ap.add_argument("--threads", choices=("1", "all"), default="1")
    ap.add_argument("--nets", nargs="+", default=["NET-DEFAULT", "NET-BN", "NET-BEST", "NET-CIFAR"])
    ap.add_argument("--batches", nargs="+", type=int)
    ap.add_argument("--peers", nargs="*", default=["torch"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--out", default=str(HERE / "results" / "versions.md"))
    args = ap.parse_args()
    runs = [("fnnet", sys.executable, "fnnet jit"), ("fnnet (other)", args.other, "fnnet jit")]
    runs += [(p, sys.executable, p) for p in args.peers]
    samples: dict[tuple, dict[str, list[float]]] = {}
    gflops = []
    for r in range(args.repeats):
        one = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        gflops.append(float(subprocess.run([sys.executable, "-c", SGEMM], capture_output=True, text=True,
                                           env=one).stdout))
        for label, python, name in runs if r % 2 == 0 else runs[::-1]:  # (which starts alternates too)
            for cell, v in worker(python, name, args).items():
                samples.setdefault(cell, {}).setdefault(label, []).append(v)
        print(f"round {r + 1} done", flush=True)
    sg = statistics.median(gflops)
    head = (f"fnnet {version(sys.executable)} against fnnet {version(args.other)} (the other); "
            f"{'one thread each' if args.threads == '1' else 'each at its defaults, nothing set'}; {args.repeats} "
            f"rounds of alternating processes, {args.seconds}s a cell; single-thread sgemm {sg:.1f} GFLOP/s "
            f"(median of the rounds, {min(gflops):.0f}-{max(gflops):.0f})")
    lines = [head, "", "| network | mode | batch | fnnet | fnnet (other) | " + " | ".join(args.peers)
             + " | fnnet / other | fnnet / best peer | fnnet % sgemm |", "|---" * (8 + len(args.peers)) + "|"]
    for (net, mode, batch), got in samples.items():
        med = {k: statistics.median(v) for k, v in got.items()}
        ratio = statistics.median(a / b for a, b in zip(got["fnnet"], got["fnnet (other)"]))
        best = max(args.peers, key=lambda p: med[p]) if args.peers else None
        vs = (f"{statistics.median(a / b for a, b in zip(got['fnnet'], got[best])):.2f}x ({best})" if best else "-")
        fwd, train = peers.flops_per_sample(net)
        pct = 100 * med["fnnet"] * (train if mode == "train" else fwd) / (sg * 1e9)
        cells = " | ".join(f"{med[p]:,.0f}" for p in args.peers)
        lines.append(f"| {net} | {mode} | {batch} | {med['fnnet']:,.0f} | {med['fnnet (other)']:,.0f} | {cells} | "
                     f"**{ratio:.2f}x** | {vs} | {pct:.1f} % |")
    peers.report(lines, args.out)


if __name__ == "__main__":
    main()
