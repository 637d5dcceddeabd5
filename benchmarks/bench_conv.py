"""Each conv layer of the benchmark networks, pass by pass, against PyTorch's (oneDNN's), one thread.

Usage: python benchmarks/bench_conv.py [--nets NET-DEFAULT NET-BN NET-BEST NET-CIFAR] [--repeats 7] [--out FILE]

For every conv layer of the networks (``peers.NETS``, at each one's training batch), in
one process, one thread, interleaved: fnnet's forward pass (``conv2d`` through the runner,
the algorithm its shape picks), its weight gradient (backward without dx: the weight and
bias gradients) and its input gradient (backward with dx, less the one without), and
PyTorch's ``conv2d`` forward and ``aten.convolution_backward`` for the input and for the
weight and bias gradients, each as µs (median) and as a % of one core's sgemm measured in
the same run (2 FLOPs a multiply-add; each pass does one forward's multiply-adds).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import peers  # noqa: E402


def layers(net: str) -> list[tuple[int, int, int, int, int]]:
    """(N, C, H, K, padding) of each conv layer of ``net`` at its training batch."""
    out, (c, h, _) = [], peers.input_shape(net)
    n = peers.TRAIN_BATCHES[net][-1]
    for layer in peers.NETS[net]:
        if layer[0] == "conv":
            pad = peers._pad(layer)
            out.append((n, c, h, layer[1], pad))
            c, h = layer[1], h + 2 * pad - 2
        elif layer[0] == "pool":
            h //= 2
    return out


def timer(f, seconds: float = 0.2) -> float:
    f()
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        f()
        k += 1
    return (time.perf_counter() - t0) / k


def fnnet_passes(n, c, h, k, pad):
    import fnnet as fn
    from fnnet.runner import prepare_checked, run, run_backward

    layer = fn.conv2d(k, 3, padding=pad)
    params, out = layer.init(fn.random.key(0), (c, h, h))
    rng = np.random.default_rng(0)
    x, dy = rng.random((n, c, h, h), dtype=np.float32), rng.random((n, *out), dtype=np.float32)
    sites = {need: prepare_checked(layer, params, x.shape, x.dtype, train=True, need_dx=need)[0]
             for need in (False, True)}
    caches = {need: run(sites[need], params, x)[1] for need in (False, True)}
    algorithm = fn.layers.conv_algorithm(c, 1, 3, 3, out[1] * out[2])
    return algorithm, {
        "forward": lambda: run(sites[False], params, x),
        "weights": lambda: run_backward(sites[False], caches[False], dy),
        "weights+input": lambda: run_backward(sites[True], caches[True], dy),
    }


def torch_passes(n, c, h, k, pad):
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.rand(n, c, h, h, generator=g), torch.rand(k, c, 3, 3, generator=g), torch.rand(k, generator=g)
    y = torch.nn.functional.conv2d(x, w, b, padding=pad)
    dy = torch.rand(y.shape, generator=g)
    conv_bwd = torch.ops.aten.convolution_backward

    def bwd(mask):
        return lambda: conv_bwd(dy, x, w, [k], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask)

    with torch.no_grad():
        return {"forward": lambda: torch.nn.functional.conv2d(x, w, b, padding=pad),
                "weights": bwd([False, True, True]), "input": bwd([True, False, False])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["NET-DEFAULT", "NET-BN", "NET-BEST", "NET-CIFAR"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "conv-layers.md"))
    args = ap.parse_args()
    import bench_train
    import torch

    import fnnet as fn

    seen, rows = set(), []
    gflops = []
    for net in args.nets:
        for shape in layers(net):
            if shape in seen:
                continue
            seen.add(shape)
            algorithm, f = fnnet_passes(*shape)
            t = torch_passes(*shape)
            got: dict[str, list[float]] = {}
            with torch.no_grad():
                for _ in range(args.repeats):
                    passes = [*(("fnnet " + k, v) for k, v in f.items()), *(("torch " + k, v) for k, v in t.items())]
                    for name, fun in passes:
                        got.setdefault(name, []).append(timer(fun))
                gflops.append(bench_train.sgemm_gflops())
            med = {k: statistics.median(v) * 1e6 for k, v in got.items()}
            med["fnnet input"] = max(med.pop("fnnet weights+input") - med["fnnet weights"], 0.0)
            n, c, h, k, pad = shape
            ho = h + 2 * pad - 2
            rows.append((net, shape, algorithm, 2 * n * k * c * 9 * ho * ho, med))
            print(net, shape, algorithm, {k: round(v) for k, v in med.items()}, flush=True)
    sg = statistics.median(gflops)
    lines = [f"fnnet {fn.__version__} (kernels {fn.kernels.backend()}, {fn.kernels.isa()}), torch {torch.__version__}; "
             f"one thread; {args.repeats} interleaved repeats; single-thread sgemm {sg:.1f} GFLOP/s (median)", "",
             "| network | layer (N, C -> K, HxW, padding) | fnnet algorithm | pass | fnnet µs | % sgemm | torch µs | "
             "% sgemm | torch / fnnet |", "|---|---|---|---|---|---|---|---|---|"]
    def pct(flops: float, us: float) -> str:
        return f"{100 * flops / (us * 1e-6) / (sg * 1e9):.0f} %" if us > 0 else "-"

    for net, (n, c, h, k, pad), algorithm, flops, med in rows:
        for p in ("forward", "input", "weights"):
            a, b = med[f"fnnet {p}"], med[f"torch {p}"]
            lines.append(f"| {net} | {n}, {c} -> {k}, {h}x{h}, {pad} | {algorithm} | {p} | {a:,.0f} | "
                         f"{pct(flops, a)} | {b:,.0f} | {pct(flops, b)} | {b / a if a else float('nan'):.2f}x |")
    peers.report(lines, args.out)


if __name__ == "__main__":
    main()
