"""Fusion (fnnet/layers/_fuse.py): every rule gives the bits of the unfused layers, in
``step``, ``jit`` and ``predict``, in both dtypes; the fused kernels give the bits of the
kernels they replace; layers without a tag run as written."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

import fnnet as fn
from fnnet import kernels, optim
from fnnet.layers import Sig
from fnnet.layers._fuse import RULES, prepare_chain

DTYPES = [np.float32, np.float64]
IMPLS = {"dispatch": kernels, "twins": kernels.twins, "compiled": kernels.compiled}  # compiled: None if not built


def unfused(layer: fn.Layer) -> fn.Layer:
    """``layer`` without fusion tags, as a custom layer: the reference the rules must match."""
    if layer.children:  # a combinator: rebuild it from its untagged layers
        return {"serial": fn.serial, "parallel": fn.parallel, "residual": fn.residual}[layer.name](
            *(unfused(child) for _, child in layer.children))
    return attrs.evolve(layer, fusion=None)


# (name, input shape, layers, the kinds of the fused runs the chain must hold)
CHAINS = [
    ("conv-relu-pool 2x2", (1, 12, 12),
     lambda: [fn.conv2d(4, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(5)],
     [("affine", "relu", "max_pool")]),
    ("odd sizes, overlapping 3x3 stride 2, dense-relu", (2, 11, 9),
     lambda: [fn.conv2d(3, 3, padding="same"), fn.relu(), fn.max_pool2d(3, 2), fn.flatten(), fn.dense(6), fn.relu(),
              fn.dense(4)],
     [("affine", "relu", "max_pool"), ("affine", "relu")]),
    ("conv-relu twice, then a 2x3 window at stride (1, 2)", (1, 10, 10),
     lambda: [fn.conv2d(3, 3), fn.relu(), fn.conv2d(2, 3), fn.relu(), fn.max_pool2d((2, 3), (1, 2)), fn.flatten(),
              fn.dense(3)],
     [("affine", "relu"), ("affine", "relu", "max_pool")]),
    ("conv (one product over the shard)-relu-pool, conv-relu", (3, 10, 10),
     lambda: [fn.conv2d(4, 3, padding=1, algorithm="rows"), fn.relu(), fn.max_pool2d(2), fn.conv2d(3, 3),
              fn.relu(), fn.flatten(), fn.dense(5)],
     [("affine", "relu", "max_pool"), ("affine", "relu")]),
    ("conv (one product over the shard)-batchnorm-relu-pool", (8, 6, 6),
     lambda: [fn.conv2d(4, 3, padding=1), fn.batch_norm(), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(5)],
     [("normalize", "relu", "max_pool")]),
    ("dense-relu at the end (the output is fused)", (6,),
     lambda: [fn.dense(8), fn.relu(), fn.dense(5), fn.relu()],
     [("affine", "relu"), ("affine", "relu")]),
    ("conv-batchnorm-relu-pool 2x2 (NET-BN's)", (1, 12, 12),
     lambda: [fn.conv2d(4, 3), fn.batch_norm(), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(5)],
     [("normalize", "relu", "max_pool")]),
    ("odd sizes, batchnorm-relu-pool 3x3 stride 2, dense-batchnorm-relu", (2, 11, 9),
     lambda: [fn.conv2d(3, 3, padding="same"), fn.batch_norm(0.5), fn.relu(), fn.max_pool2d(3, 2), fn.flatten(),
              fn.dense(6), fn.batch_norm(), fn.relu(), fn.dense(4)],
     [("normalize", "relu", "max_pool"), ("normalize", "relu")]),
]
IDS = [c[0] for c in CHAINS]


def fused_runs(model: fn.Layer, params, in_shape, dtype, train=True) -> list[tuple[str, ...]]:
    """The kinds of each fused run in ``model``'s chain (its sites that hold several layers)."""
    sig = Sig((4, *in_shape), np.dtype(dtype), train, True, None)
    chain = prepare_chain(model.children, params, sig)
    kinds = [layer.fusion.kind if layer.fusion else None for _, layer in model.children]
    ends = [*chain.index[1:], chain.length]
    return [tuple(kinds[a:b]) for a, b in zip(chain.index, ends) if b - a > 1]


def data(in_shape, dtype, n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *in_shape)).astype(dtype)
    x[:, ..., 0] = 0  # ties at zero after ReLU
    return x, rng.integers(0, 3, n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, in_shape, make, runs", CHAINS, ids=IDS)
def test_fused_chain_gives_the_unfused_bits_in_step_jit_and_predict(name, in_shape, make, runs, dtype):
    model = fn.serial(*make())
    ref = unfused(model)
    params, out = model.init(fn.random.key(3), in_shape, dtype=dtype)
    assert fused_runs(model, params, in_shape, dtype) == runs
    assert fused_runs(ref, params, in_shape, dtype) == []
    x, y = data(in_shape, dtype)
    y = y % out[0]
    opt = optim.adam(1e-2)
    results = {}
    for label, m, wrap, shards in (("fused step", model, lambda s: s, None), ("unfused step", ref, lambda s: s, None),
                                   ("fused jit, 3 shards", model, lambda s: fn.jit(s, threads=2), 3),
                                   ("unfused jit, 3 shards", ref, lambda s: fn.jit(s, threads=2), 3)):
        step = wrap(fn.train_step(m, fn.softmax_cross_entropy, opt, rows_per_shard=shards))
        state = fn.TrainState.create(params, opt, m)
        for _ in range(3):
            state, metrics = step(state, (x, y))
        outs = fn.predict(m, state.params, x, batch_size=10, threads=2, model_state=state.model_state)
        results[label] = (fn.tree.tree_leaves((state.params, state.model_state)), metrics["loss"], outs)
    for label in ("fused step", "fused jit, 3 shards"):
        want = results["un" + label]
        got = results[label]
        for a, b in zip(want[0], got[0]):  # params and batch-norm state
            assert a.tobytes() == b.tobytes(), label
        assert want[1] == got[1], label
        assert want[2].tobytes() == got[2].tobytes(), label


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, in_shape, make, runs", CHAINS, ids=IDS)
def test_fused_chain_forward_backward_match_unfused_and_finite_differences(name, in_shape, make, runs, dtype, rng):
    model = fn.serial(*make())
    params, out = model.init(fn.random.key(1), in_shape, dtype=dtype)
    x = rng.standard_normal((5, *in_shape)).astype(dtype)
    dy = rng.standard_normal((5, *out)).astype(dtype)
    got, want = [], []
    state = model.init_state(params)
    for m, into in ((model, got), (unfused(model), want)):
        for train in (True, False):  # eval mode too: a backward after it finds the winners
            yv, cache, new_state = m.forward_with_state(params, state, x, train=train)
            grads, dx = m.backward(cache, dy)
            into.append((yv.copy(), fn.tree.tree_leaves((grads, new_state)), dx))
    for (ya, ga, da), (yb, gb, db) in zip(got, want):
        assert ya.tobytes() == yb.tobytes()
        assert da.tobytes() == db.tobytes()
        for a, b in zip(ga, gb):
            assert a.tobytes() == b.tobytes()
    if dtype == np.float64:  # the fused pass against finite differences
        from conftest import numeric_grad, sample_indices

        def f():
            return float(np.sum(model.forward_with_state(params, state, x)[0] * dy))

        idx = sample_indices(x.shape, rng, 20)
        np.testing.assert_allclose(got[0][2][tuple(np.array(idx).T)], numeric_grad(f, x, idx), rtol=1e-5, atol=1e-7)


def test_layers_without_tags_are_not_fused_and_custom_layers_need_nothing():
    relu_like = fn.layers.elementwise("relu", kernels.relu_forward, kernels.relu_backward)  # a custom layer named relu
    for layers, want in (
        ([fn.conv2d(2, 3), relu_like, fn.max_pool2d(2)], []),
        ([fn.conv2d(2, 3), fn.relu(), fn.avg_pool2d(2)], [("affine", "relu")]),
        ([fn.conv2d(2, 3), fn.batch_norm(), fn.relu(), fn.max_pool2d(2)], [("normalize", "relu", "max_pool")]),
        ([fn.conv2d(2, 3), fn.dropout(0.5), fn.relu(), fn.max_pool2d(2)], []),
        ([fn.conv2d(2, 3), fn.relu(), relu_like, fn.max_pool2d(2)], [("affine", "relu")]),
        ([fn.dense(3), fn.leaky_relu()], []),
    ):
        model = fn.serial(*([fn.flatten()] if layers[0].name == "dense" else []), *layers)
        in_shape = (1, 8, 8)
        params, _ = model.init(fn.random.key(0), in_shape)
        assert fused_runs(model, params, in_shape, np.float32) == want, [layer.name for layer in layers]


@pytest.mark.parametrize("kw, error, match", [
    ({"kind": "conv"}, fn.InvalidValueError,
     "kind must be one of 'affine', 'normalize', 'relu', 'max_pool', got 'conv'"),
    ({"kind": "affine"}, fn.InvalidTypeError, "an affine or normalize layer, and only one, gives its head"),
    ({"kind": "normalize", "head": 3}, fn.InvalidTypeError, "gives its head as a function"),
    ({"kind": "relu", "head": lambda p, x, b: (x, None)}, fn.InvalidTypeError, "only one"),
    ({"kind": "max_pool", "args": (2, 2)}, fn.InvalidValueError, r"args \(kh, kw, sh, sw\) of ints >= 1, got \(2, 2\)"),
    ({"kind": "max_pool", "args": (2, 2, 0, 2)}, fn.InvalidValueError, "ints >= 1"),
])
def test_bad_fusion_tags_are_refused_naming_the_problem(kw, error, match):
    with pytest.raises(error, match=match):
        fn.layers.Fusion(**kw)


def test_every_rule_is_covered_here():
    assert {kinds for kinds, _ in RULES} == {run for c in CHAINS for run in c[3]}


def test_dropout_keys_are_those_of_the_unfused_chain():
    # fusing shortens the chain: a random layer after a fused run still gets the key of its position
    model = fn.serial(fn.conv2d(2, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dropout(0.5), fn.dense(3))
    params, _ = model.init(fn.random.key(0), (1, 8, 8))
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    a = model.forward(params, x, key=fn.random.key(5))[0]
    b = unfused(model).forward(params, x, key=fn.random.key(5))[0]
    assert a.tobytes() == b.tobytes()


# -- the fused kernels against the kernels they replace ----------------------------------------


def _cases(rng):
    for win in ((2, 2, 2, 2), (3, 3, 2, 2), (2, 2, 1, 1), (3, 2, 3, 1), (1, 1, 1, 1)):
        for kind in ("random", "ties", "nan", "inf", "signed zeros"):
            shape = (3, 4, 9, 8)
            z = rng.standard_normal(shape)
            b = rng.standard_normal(4)
            if kind == "ties":
                z, b = rng.integers(-2, 3, shape).astype(float), np.array([0, 1, -1, 0.0])
            elif kind == "nan":
                z[rng.random(shape) < 0.1] = np.nan
            elif kind == "inf":
                z[rng.random(shape) < 0.1] = np.inf
                z[rng.random(shape) < 0.1] = -np.inf
                b[:2] = np.inf, -np.inf
            elif kind == "signed zeros":
                z[...], b[:] = -0.0, -0.0
                z[:, :, ::3] = 1
            yield win, kind, z, b


def _unfused(head, x, b, coef, win, dy):
    """The head's last step, relu, max pooling and their gradients through the layers' own
    kernels: ``(maxima, winners, inference maxima, gradient, relu output, xhat)``."""
    kh, kw, sh, sw = win
    xhat = None
    if head == "bias":
        t = x + b[:, None, None]  # conv2d's bias add
    else:
        xhat, t = np.empty_like(x), np.empty_like(x)
        kernels.bn_normalize(x, coef, xhat, t)
    r = kernels.relu_forward(t, np.empty_like(x))
    p, idx = np.empty(dy.shape, x.dtype), np.empty(dy.shape, np.int64)
    kernels.max_pool_forward(r, kh, kw, sh, sw, p, idx)
    values = kernels.max_pool_values(r, kh, kw, sh, sw, np.empty_like(p))
    dz = kernels.relu_backward(r, kernels.max_pool_backward(dy, idx, np.empty_like(x)), np.empty_like(x))
    return p, idx, values, dz, r, xhat


def _same(a, b):
    """The same bits, where NaNs count as one value (their payloads are not kept)."""
    nan = np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
    return np.array_equal(nan, np.isnan(b) if b.dtype.kind == "f" else nan) and \
        a[~nan].tobytes() == b[~nan].tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head", ["bias", "batch norm"])
def test_fused_kernels_give_the_bits_of_the_unfused_kernels(head, dtype, rng):
    import warnings

    for win, kind, x, b in _cases(rng):
        x, b = x.astype(dtype), b.astype(dtype)
        c = x.shape[1]
        coef = np.stack([rng.standard_normal(c), rng.random(c) + 0.5, rng.standard_normal(c), b]).astype(dtype)
        n, c, h, w = x.shape
        kh, kw, sh, sw = win
        oshape = (n, c, (h - kh) // sh + 1, (w - kw) // sw + 1)
        dy = rng.standard_normal(oshape).astype(dtype)
        dy[rng.random(oshape) < 0.2] = -0.0
        dy[0, 0, 0, 0] = -3.0  # a negative gradient masked by ReLU: -0.0, not 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf
            want_p, want_idx, want_values, want_dz, r, want_xhat = _unfused(head, x, b, coef, win, dy)
            covered = r[:, :, :sh * (oshape[2] - 1) + kh, :sw * (oshape[3] - 1) + kw]
            met_nan = int(np.isnan(covered).any())
            for label, impl in IMPLS.items():
                if impl is None:
                    continue
                if head == "bias":
                    v, scale, shift = x, np.ones(c, dtype), b
                else:  # batch norm: xhat first (written whole), then its scale and shift
                    v = np.full_like(x, 7)
                    impl.standardize(*((x, coef, v) if label == "dispatch" else
                                       (x.reshape(n, c, -1), coef, v.reshape(n, c, -1))))
                    assert _same(v, want_xhat), f"standardize: {kind} {label}"
                    scale, shift = coef[2], coef[3]
                p, idx, values, dz = (np.full(oshape, 7, dtype), np.full(oshape, -1, np.int64),
                                      np.full(oshape, 7, dtype), np.full(x.shape, 7, dtype))
                if label == "dispatch":
                    kernels.scale_shift_relu_max_pool(v, scale, shift, *win, p, idx)
                    kernels.scale_shift_relu_max_pool_values(v, scale, shift, *win, values)
                    kernels.relu_max_pool_backward(dy, idx, p, *win, dz)
                else:  # the kernels the dispatch picks from, alone
                    impl.scale_shift_relu_max_pool(v, scale, shift, *win, p, idx)
                    # the branch-free kernels say when they met a NaN (then the dispatch runs the loop above)
                    assert impl.scale_shift_relu_max_pool_values(v, scale, shift, *win, values) == met_nan
                    if met_nan:
                        values = p
                    impl.relu_max_pool_backward(dy, idx, p, int(sh < kh or sw < kw), dz.reshape(n, c, h * w))
                    if win == (2, 2, 2, 2):
                        p2, idx2 = np.empty_like(p), np.empty_like(idx)
                        assert impl.scale_shift_relu_max_pool_2x2(v, scale, shift, p2, idx2) == met_nan
                        if not met_nan:
                            assert _same(p2, want_p) and _same(idx2, want_idx)
                for what, a, got in zip(("maxima", "winners", "inference maxima", "gradient"),
                                        (want_p, want_idx, want_values, want_dz), (p, idx, values, dz)):
                    assert _same(a, got), f"{what}: {head} {win} {kind} {label}"
                y, inplace = np.empty_like(x), v.copy()  # without pooling, and in place
                for out in (y, inplace):
                    src = v if out is y else inplace
                    if label == "dispatch":
                        kernels.scale_shift_relu(src, scale, shift, out)
                    else:
                        impl.scale_shift_relu(src.reshape(n, c, -1), scale, shift, out.reshape(n, c, -1))
                    assert _same(r, out), f"scale_shift_relu: {head} {kind} {label}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_shift_relu_of_a_dense_output(dtype, rng):
    # (N, F) outputs are (N, F, 1) to the kernel: the loop with the features innermost
    z = rng.standard_normal((6, 9)).astype(dtype)
    z[0, :3] = -0.0, np.nan, 0.0
    b = rng.standard_normal(9).astype(dtype)
    b[0] = -0.0
    want = kernels.relu_forward(z + b, np.empty_like(z))
    for label, impl in IMPLS.items():
        if impl is None:
            continue
        y = np.empty_like(z)
        if label == "dispatch":
            kernels.scale_shift_relu(z, np.ones(9, dtype), b, y)
        else:
            impl.scale_shift_relu(z.reshape(6, 9, 1), np.ones(9, dtype), b, y.reshape(6, 9, 1))
        assert _same(want, y), label
