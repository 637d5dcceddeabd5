"""Each compiled kernel against its numpy twin, one thread: does it earn its place?

Usage: python benchmarks/bench_kernels.py [--repeats 7]; writes benchmarks/results/kernels.md.
Sizes are those of NET-SEED and NET-LENET at batch 128 (float32). Cells are the median
microseconds per call over interleaved repeats (compiled, twin, compiled, twin...). Each
kernel cycles through ``VARIANTS`` inputs drawn apart: a loop that branches on the data
runs several times faster on one input repeated, whose branches the CPU learns. A second
table times each fused pass against the compiled kernels it replaces (bias add, ReLU,
max pooling and their gradients, through the dispatch as the layers call them).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from fnnet import kernels  # noqa: E402


def cases(rng):
    f32 = np.float32
    for label, shape, k in (("1x28x28 k3", (128, 1, 28, 28), 3), ("8x13x13 k3", (128, 8, 13, 13), 3)):
        n, c, h, w = shape
        x = rng.random(shape, dtype=f32)
        ho, wo = h - k + 1, w - k + 1
        cols = np.empty((n, c * k * k, ho, wo), f32)
        g = (k, k, 1, 1, 1, 1, 0, 0, 0, 0)
        yield f"im2col {label}", "im2col", (x, *g, cols)
        yield f"col2im {label}", "col2im", (rng.random(cols.shape, dtype=f32), *g, np.empty(shape, f32))
    for label, shape in (("8x26x26", (128, 8, 26, 26)), ("16x11x11", (128, 16, 11, 11))):
        n, c, h, w = shape
        x = rng.random(shape, dtype=f32)
        out = (n, c, h // 2, w // 2)
        y, idx = np.empty(out, f32), np.empty(out, np.int64)
        kernels.twins.max_pool_forward(x, 2, 2, 2, 2, y, idx)
        dy = rng.random(out, dtype=f32)
        yield f"max_pool fwd {label}", "max_pool_forward", (x, 2, 2, 2, 2, y, idx.copy())
        yield f"max_pool 2x2 fwd {label}", "max_pool_2x2_forward", (x, y, idx.copy())
        yield f"max_pool values {label}", "max_pool_values", (x, 2, 2, 2, 2, y)
        yield f"max_pool 2x2 values {label}", "max_pool_2x2_values", (x, y)
        yield f"max_pool bwd {label}", "max_pool_backward", (dy, idx, np.empty((n, c, h * w), f32))
        yield f"avg_pool fwd {label}", "avg_pool_forward", (x, 2, 2, 2, 2, np.empty(out, f32))
        yield f"avg_pool bwd {label}", "avg_pool_backward", (dy, 2, 2, 2, 2, np.empty(shape, f32))
        flat, dflat = rng.standard_normal(x.size, dtype=f32), rng.standard_normal(x.size, dtype=f32)
        yield f"relu fwd {label}", "relu_forward", (flat, np.empty_like(flat))
        yield f"relu bwd {label}", "relu_backward", (np.maximum(flat, 0), dflat, np.empty_like(flat))
    logits, labels = rng.standard_normal((128, 10), dtype=f32), rng.integers(0, 10, 128)
    yield "softmax_xent 128x10", "softmax_xent", (logits, labels, np.empty_like(logits))
    for label, shape in (("16x26x26", (128, 16, 26 * 26)), ("32x11x11", (128, 32, 11 * 11))):  # NET-BN's
        x, dy = rng.standard_normal(shape, dtype=f32), rng.standard_normal(shape, dtype=f32)
        ones, zeros = np.ones(shape[1]), np.zeros(shape[1])
        coef = np.stack([x.mean(axis=(0, 2)), 1 / x.std(axis=(0, 2)), ones, zeros]).astype(f32)
        xhat = np.empty_like(x)
        kernels.twins.bn_normalize(x, coef, xhat, np.empty_like(x))
        yield f"bn_moments {label}", "bn_moments", (x, np.empty((2, shape[1])))
        yield f"bn_normalize {label}", "bn_normalize", (x, coef, np.empty_like(x), np.empty_like(x))
        yield f"bn_grad_sums {label}", "bn_grad_sums", (dy, xhat, np.empty((2, shape[1])))
        yield f"bn_backward {label}", "bn_backward", (dy, xhat, coef, np.empty_like(x))
    for label, shape in (("8x26x26", (128, 8, 26, 26)), ("16x11x11", (128, 16, 11, 11))):  # NET-LENET's convs
        z, b, out = rng.standard_normal(shape, dtype=f32), rng.standard_normal(shape[1], dtype=f32), _pooled(shape)
        y, idx = np.empty(out, f32), np.empty(out, np.int64)
        ones = np.ones(shape[1], f32)  # the bias add's scale
        kernels.twins.scale_shift_relu_max_pool(z, ones, b, 2, 2, 2, 2, y, idx)
        n, c, h, w = shape
        yield f"scale_shift_relu {label}", "scale_shift_relu", (z.reshape(n, c, -1), ones, b,
                                                                np.empty((n, c, h * w), f32))
        yield f"scale_shift_relu_max_pool 2x2 {label}", "scale_shift_relu_max_pool_2x2", (
            z, ones, b, np.empty(out, f32), np.empty(out, np.int64))
        yield f"scale_shift_relu_max_pool values {label}", "scale_shift_relu_max_pool_values", (
            z, ones, b, 2, 2, 2, 2, np.empty(out, f32))
        yield f"relu_max_pool bwd {label}", "relu_max_pool_backward", (rng.standard_normal(out, dtype=f32), idx, y,
                                                                       0, np.empty((n, c, h * w), f32))


def _pooled(shape):
    n, c, h, w = shape
    return (n, c, h // 2, w // 2)


def fused_cases(rng):
    """(label, fused, unfused, argument sets): a fused pass and the kernels it replaces, as the layers call them."""
    f32 = np.float32
    for label, shape in (("8x26x26", (128, 8, 26, 26)), ("16x11x11", (128, 16, 11, 11))):
        ones = np.ones(shape[1], f32)  # the bias add's scale
        sets = []
        for _ in range(VARIANTS):
            z, b = rng.standard_normal(shape, dtype=f32), rng.standard_normal(shape[1], dtype=f32)
            y, idx = np.empty(_pooled(shape), f32), np.empty(_pooled(shape), np.int64)
            kernels.scale_shift_relu_max_pool(z, np.ones_like(b), b, 2, 2, 2, 2, y, idx)
            sets.append((z, b, y, idx, rng.standard_normal(y.shape, dtype=f32), np.empty_like(z), np.empty_like(z),
                         np.empty_like(z)))

        # the layers add the bias to the product's output in place, and ReLU writes an array of its own
        def forward_unfused(z, b, y, idx, dy, t, r, dz):
            np.add(z, b[:, None, None], out=t)
            kernels.max_pool_forward(kernels.relu_forward(t, r), 2, 2, 2, 2, y, idx)

        def backward_unfused(z, b, y, idx, dy, t, r, dz):
            kernels.relu_backward(r, kernels.max_pool_backward(dy, idx, t), dz)

        def values_unfused(z, b, y, idx, dy, t, r, dz):
            np.add(z, b[:, None, None], out=t)
            kernels.max_pool_values(kernels.relu_forward(t, r), 2, 2, 2, 2, y)

        def forward(z, b, y, idx, dy, t, r, dz):
            kernels.scale_shift_relu_max_pool(z, ones, b, 2, 2, 2, 2, y, idx)

        def backward(z, b, y, idx, dy, t, r, dz):
            kernels.relu_max_pool_backward(dy, idx, y, 2, 2, 2, 2, dz)

        def values(z, b, y, idx, dy, t, r, dz):
            kernels.scale_shift_relu_max_pool_values(z, ones, b, 2, 2, 2, 2, y)

        yield f"conv -> relu -> max_pool fwd {label}", forward, forward_unfused, sets
        yield f"conv -> relu -> max_pool bwd {label}", backward, backward_unfused, sets
        yield f"conv -> relu -> max_pool inference {label}", values, values_unfused, sets


VARIANTS = 4


def per_call(f, argsets, seconds=0.05):
    for args in argsets:
        f(*args)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        f(*argsets[n % len(argsets)])
        n += 1
    return (time.perf_counter() - t0) / n * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "kernels.md"))
    args = ap.parse_args()
    if kernels.compiled is None:
        raise SystemExit("compiled kernels are not built: pip install . first")
    lines = ["| kernel (float32, batch 128) | compiled µs | numpy twin µs | speed-up |", "|---|---|---|---|"]
    for row in zip(*(cases(np.random.default_rng(seed)) for seed in range(VARIANTS))):
        label, name = row[0][:2]
        kargs = [args for _, _, args in row]
        a, b = [], []
        for _ in range(args.repeats):
            a.append(per_call(getattr(kernels.compiled, name), kargs))
            b.append(per_call(getattr(kernels.twins, name), kargs))
        ma, mb = statistics.median(a), statistics.median(b)
        lines.append(f"| {label} | {ma:,.0f} | {mb:,.0f} | {mb / ma:.1f}x |")
        print(lines[-1], flush=True)
    lines += ["", "| fused pass against the kernels it replaces (float32, batch 128) | fused µs | unfused µs "
              "| speed-up |", "|---|---|---|---|"]
    for label, fused, unfused, sets in fused_cases(np.random.default_rng(VARIANTS)):
        a, b = [], []
        for _ in range(args.repeats):
            a.append(per_call(fused, sets))
            b.append(per_call(unfused, sets))
        ma, mb = statistics.median(a), statistics.median(b)
        lines.append(f"| {label} | {ma:,.0f} | {mb:,.0f} | {mb / ma:.1f}x |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
