"""End to end: the default preset against the same recipe as a plain PyTorch script.

Usage: python benchmarks/bench_e2e.py [--pairs 4] [--modes defaults one-thread] [--out benchmarks/results]

Runs ``python pipelines/mnist.py --preset default`` and ``python benchmarks/torch_mnist.py``
(the same network, optimizer, schedule, batches, epochs, evaluations: see its docstring)
as whole processes, alternating, ``--pairs`` pairs per mode, the first of a pair
alternating too (fnnet torch, torch fnnet, fnnet torch, ...: the machine's speed drifts
within minutes, and a fixed order would hand that drift to one side):

* ``defaults``: each as a user runs it, nothing set in the environment (no
  ``*_NUM_THREADS``): fnnet's threads and BLAS share from ``fnnet.threads``, PyTorch's
  intra-op threads (one per core);
* ``one-thread``: fnnet ``--threads 1`` with ``OPENBLAS_NUM_THREADS=1``, PyTorch
  ``torch.set_num_threads(1)`` with ``OMP_NUM_THREADS=1``.

A row gives each pair's whole-process wall seconds (from start to exit, imports
included), the training loop's seconds that each script reports in its summary.json
(the loop without evaluations and checkpoints), the test accuracy, and the ratios
torch / fnnet of each pair; the headline is the median of the pairs' ratios. Results go
to ``e2e.md`` in ``--out``.
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
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODES = ("defaults", "one-thread")


def env_for(mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    if mode == "one-thread":
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run(framework: str, mode: str, out: pathlib.Path) -> dict:
    """One whole process: its wall time, and its summary.json's training seconds and accuracy."""
    if framework == "fnnet":
        cmd = [sys.executable, str(ROOT / "pipelines" / "mnist.py"), "--preset", "default", "--seed", "0",
               "--out", str(out), "--overwrite"]
    else:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "torch_mnist.py"), "--seed", "0", "--out", str(out)]
    if mode == "one-thread":
        cmd += ["--threads", "1"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env_for(mode), capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{framework} ({mode}) failed with status {proc.returncode}:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall": wall, "train": summary["train_seconds"], "acc": summary["test_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    import torch  # noqa: F401 - fail now, not after the first fnnet run

    lines = [
        "# End to end: the default preset against a plain PyTorch script", "",
        f"`python benchmarks/bench_e2e.py --pairs {args.pairs}`; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}. Whole processes, "
        "alternating, each pair's first alternating too (fnnet torch, torch fnnet, ...); wall = start to exit; "
        "train = the training loop without evaluations (each script's summary.json); ratios are torch / fnnet "
        "of each pair.", "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            pairs = []
            for i in range(args.pairs):
                order = ("fnnet", "torch") if i % 2 == 0 else ("torch", "fnnet")
                got = {fw: run(fw, mode, pathlib.Path(tmp) / fw) for fw in order}
                f, t = got["fnnet"], got["torch"]
                pairs.append((f, t))
                print(f"{mode} pair {i + 1}: fnnet {f['wall']:.1f} s (train {f['train']:.1f} s, acc {f['acc']:.4f}), "
                      f"torch {t['wall']:.1f} s (train {t['train']:.1f} s, acc {t['acc']:.4f})", flush=True)
            wall = [t["wall"] / f["wall"] for f, t in pairs]
            train = [t["train"] / f["train"] for f, t in pairs]
            lines += [
                f"## {mode}", "",
                "| pair | fnnet wall s | torch wall s | wall ratio | fnnet train s | torch train s | train ratio "
                "| fnnet acc | torch acc |",
                "|---|---|---|---|---|---|---|---|---|",
                *(f"| {i + 1} | {f['wall']:.1f} | {t['wall']:.1f} | {t['wall'] / f['wall']:.2f}x | {f['train']:.1f} | "
                  f"{t['train']:.1f} | {t['train'] / f['train']:.2f}x | {f['acc']:.4f} | {t['acc']:.4f} |"
                  for i, (f, t) in enumerate(pairs)),
                "",
                f"**median ratios: whole process {statistics.median(wall):.2f}x, training loop "
                f"{statistics.median(train):.2f}x** (torch / fnnet; > 1: fnnet is faster)", "",
            ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "e2e.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
