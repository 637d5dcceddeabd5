"""Compiled kernels equal their numpy twins; the dispatch picks the backend it says."""

from __future__ import annotations

import itertools
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import expected_backend

from fnnet import kernels
from fnnet.layers._geometry import out_size

DTYPES = [np.float32, np.float64]


def test_backend_is_the_expected_one():
    want = expected_backend()
    forced = os.environ.get("FNNET_KERNELS", "auto")
    if want is None:
        want = "numpy" if forced == "numpy" else ("pythran" if kernels.compiled is not None else "numpy")
    assert kernels.backend() == want


@pytest.fixture(scope="module")
def compiled():
    if kernels.compiled is None:
        if expected_backend() == "pythran" or os.environ.get("FNNET_REQUIRE_COMPILED"):
            pytest.fail("compiled kernels are required here but do not import")
        pytest.skip("compiled kernels not built in this checkout (run `pip install .`)")
    return kernels.compiled


def _conv_geometry(rng):
    """Random conv cases, including stride, dilation, asymmetric padding and odd sizes;
    first the kernels' loops of their own (stride 1, no dilation), with and without padding."""
    for (kh, kw), pads in [((3, 3), (0, 0, 0, 0)), ((3, 3), (1, 1, 1, 1)), ((1, 1), (0, 0, 0, 0)),
                           ((2, 3), (0, 2, 1, 0)), ((3, 1), (2, 0, 0, 1))]:
        n, c = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        h, w = kh + int(rng.integers(0, 6)), kw + int(rng.integers(0, 6))
        yield (n, c, h, w), (kh, kw, 1, 1, 1, 1, *pads)
    for _ in range(12):
        kh, kw = rng.integers(1, 4, 2)
        sh, sw = rng.integers(1, 3, 2)
        dh, dw = rng.integers(1, 3, 2)
        pt, pb, pl, pr = rng.integers(0, 3, 4)
        n, c = rng.integers(1, 4), rng.integers(1, 4)
        h = int(dh * (kh - 1) + 1 + rng.integers(0, 6))
        w = int(dw * (kw - 1) + 1 + rng.integers(0, 6))
        yield (n, c, h, w), tuple(int(v) for v in (kh, kw, sh, sw, dh, dw, pt, pb, pl, pr))


def _cols_shape(xshape, g):
    n, c, h, w = xshape
    kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = g
    return (n, c * kh * kw, out_size(h, kh, sh, dh, pt + pb), out_size(w, kw, sw, dw, pl + pr))


@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_col2im_match_twin_and_are_adjoint(compiled, dtype, rng):
    for xshape, g in _conv_geometry(rng):
        x = rng.standard_normal(xshape).astype(dtype)
        shape = _cols_shape(xshape, g)
        a, b = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
        compiled.im2col(x, *g, a)
        kernels.twins.im2col(x, *g, b)
        np.testing.assert_array_equal(a, b, err_msg=f"im2col {xshape} {g}")
        c = rng.standard_normal(shape).astype(dtype)
        xa, xb = np.full(xshape, np.nan, dtype), np.full(xshape, np.nan, dtype)
        compiled.col2im(c, *g, xa)
        kernels.twins.col2im(c, *g, xb)
        np.testing.assert_array_equal(xa, xb, err_msg=f"col2im {xshape} {g}")
        # col2im is the adjoint of im2col: <im2col(x), c> == <x, col2im(c)>
        lhs, rhs = np.vdot(a.astype(np.float64), c), np.vdot(x.astype(np.float64), xa)
        assert lhs == pytest.approx(rhs, rel=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 3])
def test_im2row_row2im_match_twin_are_adjoint_and_hold_im2cols_values(compiled, dtype, groups, rng):
    for (n, c, h, w), g in _conv_geometry(rng):
        c *= groups
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        _, depth, ho, wo = _cols_shape((n, c, h, w), g)
        shape = (n, ho, wo, depth)
        xt = np.full((n, h + g[6] + g[7], w + g[8] + g[9], c), np.nan, dtype)  # (the kernel's scratch)
        a, b = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
        compiled.im2row(x, *g, groups, xt, a)
        kernels.twins.im2row(x, *g, groups, xt, b)
        np.testing.assert_array_equal(a, b, err_msg=f"im2row {x.shape} {g} groups {groups}")
        cols = np.empty((n, depth, ho, wo), dtype)
        compiled.im2col(x, *g, cols)  # the same values, in the order (group, tap, channel of the group)
        cg, kk = c // groups, g[0] * g[1]
        np.testing.assert_array_equal(
            a, cols.reshape(n, groups, cg, kk, ho, wo).transpose(0, 4, 5, 1, 3, 2).reshape(shape))
        r = rng.standard_normal(shape).astype(dtype)
        xa, xb = np.full(x.shape, np.nan, dtype), np.full(x.shape, np.nan, dtype)
        compiled.row2im(r, *g, groups, xt, xa)
        kernels.twins.row2im(r, *g, groups, xt, xb)
        np.testing.assert_array_equal(xa, xb, err_msg=f"row2im {x.shape} {g} groups {groups}")
        lhs, rhs = np.vdot(a.astype(np.float64), r), np.vdot(x.astype(np.float64), xa)
        assert lhs == pytest.approx(rhs, rel=1e-4 if dtype == np.float32 else 1e-12)


def _pool_cases(rng):
    for _ in range(10):
        kh, kw = (int(v) for v in rng.integers(1, 4, 2))
        sh, sw = (int(v) for v in rng.integers(1, 4, 2))
        n, c = (int(v) for v in rng.integers(1, 4, 2))
        h, w = kh + int(rng.integers(0, 7)), kw + int(rng.integers(0, 7))
        yield (n, c, h, w), (kh, kw, sh, sw)


def _pool_out(xshape, kh, kw, sh, sw):
    n, c, h, w = xshape
    return (n, c, out_size(h, kh, sh), out_size(w, kw, sw))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True, "nan"], ids=["random", "ties", "nan"])
def test_max_pool_matches_twin(compiled, dtype, ties, rng):
    for xshape, (kh, kw, sh, sw) in _pool_cases(rng):
        x = (rng.integers(0, 3, xshape) if ties else rng.standard_normal(xshape)).astype(dtype)
        if ties == "nan":
            x[rng.random(xshape) < 0.1] = np.nan
        oshape = _pool_out(xshape, kh, kw, sh, sw)
        outs = []
        for impl in (compiled, kernels.twins):
            y, idx = np.empty(oshape, dtype), np.empty(oshape, np.int64)
            impl.max_pool_forward(x, kh, kw, sh, sw, y, idx)
            outs.append((y, idx))
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        np.testing.assert_array_equal(outs[0][1], outs[1][1])
        for impl in (compiled, kernels.twins):  # maxima alone, for inference
            y = np.full(oshape, 7, dtype)
            impl.max_pool_values(x, kh, kw, sh, sw, y)
            np.testing.assert_array_equal(y, outs[0][0])
        dy = rng.standard_normal(oshape).astype(dtype)
        dxa, dxb = np.full(xshape, np.nan, dtype), np.full(xshape, np.nan, dtype)
        n, c, h, w = xshape
        compiled.max_pool_backward(dy, outs[0][1], dxa.reshape(n, c, h * w))
        kernels.twins.max_pool_backward(dy, outs[1][1], dxb.reshape(n, c, h * w))
        np.testing.assert_allclose(dxa, dxb, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", [(0, 1, 2), (-np.inf, 0, np.inf), (0, 1, np.nan)], ids=["finite", "inf", "nan"])
@pytest.mark.parametrize("copies", [1, 128], ids=["small", "large"])
def test_max_pool_2x2_every_window_pattern(dtype, values, copies):
    # every 2x2 window over three values, one window a channel: each order of ties and
    # NaNs; the dispatch sends NaN-free inputs to the branch-free 2x2 kernels, and reruns
    # an input holding a NaN through the generic loop
    windows = np.array(list(itertools.product(values, repeat=4)) * copies, dtype).reshape(1, -1, 2, 2)
    oshape = (1, windows.shape[1], 1, 1)
    outs = []
    for forward, values_only in ((kernels.max_pool_forward, kernels.max_pool_values),
                                 (kernels.twins.max_pool_forward, kernels.twins.max_pool_values)):
        y, idx, v = np.empty(oshape, dtype), np.empty(oshape, np.int64), np.empty(oshape, dtype)
        forward(windows, 2, 2, 2, 2, y, idx)
        values_only(windows, 2, 2, 2, 2, v)
        np.testing.assert_array_equal(v, y)
        outs.append((y, idx))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
def test_max_pool_2x2_kernels_match_twins(compiled, dtype, ties, rng):
    for xshape in ((1, 1, 2, 2), (2, 3, 7, 9), (5, 8, 26, 26)):  # odd sizes drop the last row/column
        x = (rng.integers(0, 3, xshape) if ties else rng.standard_normal(xshape)).astype(dtype)
        oshape = _pool_out(xshape, 2, 2, 2, 2)
        outs = []
        for impl in (compiled, kernels.twins):
            y, idx, v = np.full(oshape, 7, dtype), np.full(oshape, -1, np.int64), np.full(oshape, 7, dtype)
            assert impl.max_pool_2x2_forward(x, y, idx) == 0  # no NaN met
            impl.max_pool_2x2_values(x, v)
            outs.append((y, idx, v))
        for a, b in zip(*outs):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(outs[0][2], outs[0][0])
        for where in ((-1, -1, 2 * oshape[2] - 1, 2 * oshape[3] - 1), (0, 0, 0, 0)):  # last and first window
            x[...] = 0
            x[where] = np.nan
            for impl in (compiled, kernels.twins):
                assert impl.max_pool_2x2_forward(x, np.empty(oshape, dtype), np.empty(oshape, np.int64)) == 1
        if xshape[2] % 2:  # a NaN in the dropped last row alone changes no window
            x[...] = 0
            x[0, 0, -1, 0] = np.nan
            for impl in (compiled, kernels.twins):
                assert impl.max_pool_2x2_forward(x, np.empty(oshape, dtype), np.empty(oshape, np.int64)) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_tie_rule_is_first_in_row_major_order(compiled, dtype):
    x = np.array([[[[1, 1], [1, 1]]], [[[0, 2], [2, 0]]], [[[np.nan, 5], [np.nan, 0]]]], dtype)
    for impl in (compiled, kernels.twins):
        y, idx = np.empty((3, 1, 1, 1), dtype), np.empty((3, 1, 1, 1), np.int64)
        impl.max_pool_forward(x, 2, 2, 2, 2, y, idx)
        assert idx.ravel().tolist() == [0, 1, 0]
        np.testing.assert_array_equal(y.ravel()[:2], [1, 2])
        assert np.isnan(y.ravel()[2])
        values = np.empty_like(y)
        impl.max_pool_values(x, 2, 2, 2, 2, values)
        np.testing.assert_array_equal(values, y)
        dx = np.empty_like(x)
        impl.max_pool_backward(np.ones_like(y), idx, dx.reshape(3, 1, 4))
        np.testing.assert_array_equal(dx.reshape(3, 4), [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool_matches_twin(compiled, dtype, rng):
    tol = 1e-6 if dtype == np.float32 else 1e-14
    for xshape, (kh, kw, sh, sw) in _pool_cases(rng):
        x = rng.standard_normal(xshape).astype(dtype)
        oshape = _pool_out(xshape, kh, kw, sh, sw)
        ya, yb = np.empty(oshape, dtype), np.empty(oshape, dtype)
        compiled.avg_pool_forward(x, kh, kw, sh, sw, ya)
        kernels.twins.avg_pool_forward(x, kh, kw, sh, sw, yb)
        np.testing.assert_allclose(ya, yb, rtol=tol, atol=tol)
        dy = rng.standard_normal(oshape).astype(dtype)
        dxa, dxb = np.full(xshape, np.nan, dtype), np.full(xshape, np.nan, dtype)
        compiled.avg_pool_backward(dy, kh, kw, sh, sw, dxa)
        kernels.twins.avg_pool_backward(dy, kh, kw, sh, sw, dxb)
        np.testing.assert_allclose(dxa, dxb, rtol=tol, atol=tol)


def test_wrappers_accept_views(rng):
    """The dispatch wrappers make non-contiguous inputs contiguous before the kernel."""
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)[:, :, ::2, :]
    cols = np.empty((2, 27, 2, 6), np.float32)
    kernels.im2col(x, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, cols)
    ref = np.empty_like(cols)
    kernels.twins.im2col(np.ascontiguousarray(x), 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, ref)
    np.testing.assert_array_equal(cols, ref)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, check=False)


def _run_installed(code: str, **env) -> subprocess.CompletedProcess:
    """:func:`_run` from the tests' folder: the fnnet it imports is the installed one, with its
    compiled kernels, not the source tree a checkout's root would put first on the path."""
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, check=False,
                          cwd=os.path.dirname(__file__))


def test_missing_compiled_module_falls_back_with_one_warning():
    code = (
        "import sys, warnings\n"
        "sys.modules['fnnet.kernels._conv'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import fnnet\n"
        "print(fnnet.kernels.backend(), sum('no compiled kernels in' in str(x.message) for x in w))\n"
    )
    out = _run(code, FNNET_KERNELS="auto")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy", "1"]


def test_from_a_checkout_import_fnnet_runs_the_kernels_or_warns_at_the_users_line(tmp_path):
    # the checkout's root first on the path (python -c), as a user who ran pip install . and stayed there
    root = pathlib.Path(__file__).resolve().parents[1]
    code = "import fnnet; print(fnnet.kernels.backend())"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, cwd=root,
                         check=False, env={k: v for k, v in os.environ.items() if k != "FNNET_KERNELS"})
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "pythran":  # (an editable install: the checkout imports its built kernels)
        return
    assert out.stderr.startswith("<string>:1: RuntimeWarning: fnnet: no compiled kernels in "), out.stderr
    assert "Run from another folder, or `python -I`" in out.stderr and "pip install --no-build-isolation -e ." in \
        out.stderr
    installed = subprocess.run([sys.executable, "-I", "-c", "import fnnet; print(fnnet.__file__)"],
                               capture_output=True, text=True, cwd=tmp_path, check=False).stdout.strip()
    if installed and not installed.startswith(str(root)):  # (then the warning names the fnnet it shadows)
        assert f"shadows the fnnet installed in {pathlib.Path(installed).parent}" in out.stderr, out.stderr


def test_forced_numpy_and_bad_values():
    assert _run("import fnnet; print(fnnet.kernels.backend())", FNNET_KERNELS="numpy").stdout.strip() == "numpy"
    bad = _run("import fnnet", FNNET_KERNELS="fortran")
    assert bad.returncode != 0 and "FNNET_KERNELS must be" in bad.stderr
    code = "import sys; sys.modules['fnnet.kernels._pool'] = None; import fnnet"
    forced = _run(code, FNNET_KERNELS="pythran")
    assert forced.returncode != 0 and "FNNET_KERNELS=pythran" in forced.stderr


# -- the instruction-set variants ------------------------------------------------------------------

_TRAIN_AND_PREDICT = """
import hashlib, numpy as np, fnnet as fn
from fnnet import optim
m = fn.serial(fn.conv2d(8, 3, padding=1), fn.batch_norm(), fn.relu(), fn.max_pool2d(2), fn.conv2d(16, 3),
              fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(32), fn.gelu(), fn.dense(10))
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    p, _ = m.init(fn.random.key(0), (1, 12, 12), dtype=dtype)
    opt = optim.adam(1e-2)
    s = fn.TrainState.create(p, opt, m)
    step = fn.jit(fn.train_step(m, fn.softmax_cross_entropy, opt, rows_per_shard=8), threads=2)
    for _ in range(3):
        s, _ = step(s, (rng.standard_normal((32, 1, 12, 12)).astype(dtype), rng.integers(0, 10, 32)))
    out = fn.predict(m, s.params, rng.standard_normal((20, 1, 12, 12)).astype(dtype), model_state=s.model_state)
    print(fn.kernels.isa(), hashlib.sha256(b"".join(a.tobytes() for a in [*fn.tree_leaves(s.params), out])).hexdigest())
"""


def test_every_instruction_set_variant_gives_the_plain_builds_bits(compiled):
    # conv, batch norm, the fused runs, gelu, pooling, the loss and Adam, trained and evaluated in each variant
    runs = {isa: _run_installed(_TRAIN_AND_PREDICT, FNNET_KERNELS="pythran", FNNET_KERNELS_ISA=isa)
            for isa in ("baseline", *kernels.cpu_isas())}
    for run in runs.values():
        assert run.returncode == 0, run.stderr
    lines = {isa: run.stdout.split() for isa, run in runs.items()}
    want = lines["baseline"][1::2]
    for isa, words in lines.items():
        assert words[0::2] == [isa if kernels.ISA_FAMILIES else "baseline"] * 2
        assert words[1::2] == want, f"{isa} gives other bits than the plain build"


def test_the_instruction_set_is_chosen_or_refused_by_name():
    bad = _run("import fnnet", FNNET_KERNELS_ISA="sse9")
    assert bad.returncode != 0
    assert "FNNET_KERNELS_ISA must be 'auto', 'baseline' or one of 'avx512', 'avx2', got 'sse9'" in bad.stderr
    lacking = [isa for isa in kernels.ISAS if isa not in kernels.cpu_isas()]
    for isa in lacking:  # (on a CPU without it: named, with what the CPU runs)
        run = _run("import fnnet", FNNET_KERNELS_ISA=isa)
        assert run.returncode != 0 and f"FNNET_KERNELS_ISA={isa} but this CPU lacks its features" in run.stderr
    info = _run_installed("import fnnet, json; print(json.dumps(fnnet.runtime.info()))", FNNET_KERNELS_ISA="baseline")
    assert '"kernels_isa": ' + ('"baseline"' if kernels.backend() == "pythran" else "null") in info.stdout
    assert kernels.isa() in (None if kernels.backend() == "numpy" else "baseline", *kernels.cpu_isas())


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_matches_twin(compiled, dtype, rng):
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for n, c in ((1, 2), (2, 10), (7, 3), (64, 10)):
        logits = (rng.standard_normal((n, c)) * 5).astype(dtype)
        labels = rng.integers(0, c, n)
        outs = []
        for impl in (compiled, kernels.twins):
            d = np.full((n, c), np.nan, dtype)
            loss, status = impl.softmax_xent(logits, labels, d)
            assert status == 0
            outs.append((loss, d))
        assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-12)
        np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=tol, atol=tol)


@pytest.mark.parametrize("bad,status", [("label", 1), ("nan", 2), ("inf", 2)])
def test_softmax_xent_status_codes(compiled, bad, status):
    logits, labels = np.zeros((3, 4)), np.array([0, 1, 2])
    if bad == "label":
        labels = np.array([0, 4, 1])
    else:
        logits[1, 2] = np.nan if bad == "nan" else np.inf
    for impl in (compiled, kernels.twins):
        assert impl.softmax_xent(logits, labels, np.empty_like(logits))[1] == status


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_kernels_match_twin_bit_for_bit(compiled, dtype, rng):
    special = np.array([np.nan, -np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45], dtype)
    for n in (1, 8, 1352, 10_001):
        x = rng.standard_normal(n).astype(dtype)
        x[: min(n, special.size)] = special[: min(n, special.size)]
        dy = rng.standard_normal(n).astype(dtype)
        dy[::7] = -dy[::7]
        dy[:3] = [np.inf, -np.inf, np.nan][: min(n, 3)]
        outs = []
        for impl in (compiled, kernels.twins):
            y, dx = np.full(n, 7.0, dtype), np.full(n, 7.0, dtype)
            impl.relu_forward(x, y)
            impl.relu_backward(y, dy, dx)
            outs.append((y.tobytes(), dx.tobytes()))
        assert outs[0] == outs[1]
    assert kernels.relu_forward(x, np.empty_like(x)).tobytes() == np.maximum(x, 0).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_kernels_match_twin(compiled, dtype, rng):
    for n in (1, 8, 10_001):
        x = (rng.standard_normal(n) * 4).astype(dtype)
        x[: min(n, 4)] = np.array([0.0, -0.0, 9.0, -40.0], dtype)[: min(n, 4)]
        dy = rng.standard_normal(n).astype(dtype)
        outs = []
        for impl in (compiled, kernels.twins):
            y, dx = np.full(n, 7.0, dtype), np.full(n, 7.0, dtype)
            impl.gelu_forward(x, y)
            impl.gelu_backward(x, dy, dx)
            outs.append((y, dx))
        assert outs[0][0].tobytes() == outs[1][0].tobytes()  # erf from the same libm, in float64
        eps = np.finfo(dtype).eps  # (the twin's exp is numpy's, not libm's: a few ulps where Phi + x phi cancels)
        np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=4 * eps, atol=4 * eps * np.abs(dy).max())
    exact = np.array([0.5 * v * (1 + math.erf(v * math.sqrt(0.5))) for v in x.astype(np.float64)]).astype(dtype)
    assert kernels.gelu_forward(x, np.empty_like(x)).tobytes() == exact.tobytes()


def test_relu_wrappers_take_any_shape_and_views(rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)[:, ::2]  # not contiguous
    y = kernels.relu_forward(x, np.empty(x.shape, np.float32))
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = kernels.relu_backward(y, dy, np.empty_like(y))
    np.testing.assert_array_equal(dx, dy * (y > 0))


def test_all_lists_every_kernel():
    # the 2x2 fast cases are reached through their general kernel's wrapper
    assert {name.replace("_2x2", "") for name in kernels.KERNEL_NAMES} <= set(kernels.__all__)


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_warp_compiled_equals_twin_bit_for_bit(compiled, dtype):
    rng = np.random.default_rng(11)
    for n, c, h, w in ((1, 1, 1, 1), (3, 2, 7, 5), (16, 1, 28, 28)):
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        m = np.empty((n, 2, 3))
        m[:, :, :2] = np.eye(2) + rng.normal(0, 0.4, (n, 2, 2))
        m[:, :, 2] = rng.normal(0, h / 2, (n, 2))  # some points fall outside the image
        a, b = np.full_like(x, np.nan), np.full_like(x, np.nan)
        kernels.twins.affine_warp(x, m, a)
        compiled.affine_warp(x, m, b)
        assert a.tobytes() == b.tobytes()


def test_affine_warp_identity_and_integer_shift_are_exact():
    x = np.random.default_rng(2).random((2, 1, 6, 5)).astype(np.float32)
    m = np.zeros((2, 2, 3))
    m[:, 0, 0] = m[:, 1, 1] = 1
    np.testing.assert_array_equal(kernels.affine_warp(x, m, np.empty_like(x)), x)
    m[:, 0, 2] = 1  # sample one row down: the image moves up by one row, zeros enter at the bottom
    y = kernels.affine_warp(x, m, np.empty_like(x))
    np.testing.assert_array_equal(y[:, :, :-1], x[:, :, 1:])
    np.testing.assert_array_equal(y[:, :, -1], 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 7), (64, 16, 26 * 26), (3, 128, 1), (2, 4, 33)])
def test_batch_norm_kernels_match_twins(compiled, dtype, shape, rng):
    # statistics in float64 in both (summed in another order: equal to rounding); the
    # elementwise passes equal to the last bit but for FMA contraction
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    coef = np.stack([rng.standard_normal(shape[1]), rng.random(shape[1]) + 0.5, rng.standard_normal(shape[1]),
                     rng.standard_normal(shape[1])]).astype(dtype)
    got = {}
    for label, impl in (("compiled", compiled), ("twin", kernels.twins)):
        moments, sums = np.full((2, shape[1]), 7.0), np.full((2, shape[1]), 7.0)
        xhat, y, dx = (np.full(shape, 7.0, dtype) for _ in range(3))
        impl.bn_moments(x, moments)
        impl.bn_normalize(x, coef, xhat, y)
        impl.bn_grad_sums(dy, xhat, sums)
        impl.bn_backward(dy, xhat, coef[1:], dx)
        got[label] = moments, xhat, y, sums, dx
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2))
    np.testing.assert_allclose(got["compiled"][0][0], mean, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(got["compiled"][0][1], ((x64 - mean[:, None]) ** 2).sum(axis=(0, 2)), rtol=1e-12)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-13, "atol": 1e-13}
    for a, b in zip(got["compiled"], got["twin"]):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, **tol)


def test_batch_norm_wrappers_take_4d_and_2d_inputs_and_refuse_strided_outputs(rng):
    for shape in ((4, 3, 5, 6), (7, 3)):
        x = rng.standard_normal(shape).astype(np.float32)
        moments = kernels.bn_moments(x, np.empty((2, 3)))
        axes = (0, 2, 3) if len(shape) == 4 else (0,)
        np.testing.assert_allclose(moments[0], x.astype(np.float64).mean(axis=axes), rtol=1e-6, atol=1e-7)
        coef = np.array([moments[0], 1 / np.sqrt(moments[1] / (x.size // 3)), np.ones(3), np.zeros(3)], np.float32)
        y = kernels.bn_normalize(x[:, :], coef, np.empty_like(x), np.empty_like(x))
        np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-5)
        np.testing.assert_allclose(y.var(axis=axes), 1, rtol=1e-4)
    x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.bn_normalize(x, coef, np.empty_like(x), np.empty((4, 3, 5, 12), np.float32)[..., ::2])


def _adam_expression(g, m, v, b1, b2, eps, c0, c1):
    """Adam's rule as numpy writes it (scale_by_adam's before the kernel): the bits to give."""
    mu = b1 * m + (1 - b1) * g
    nu = b2 * v + (1 - b2) * (g * g)
    return (mu / c0) / (np.sqrt(nu / c1) + eps), mu, nu


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_kernel_gives_the_bits_of_numpys_expression(compiled, dtype, rng):
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 7
    c0, c1 = 1 - b1**t, 1 - b2**t
    scalars = [dtype(s) for s in (b1, 1 - b1, b2, 1 - b2, c0, c1, eps)]
    for n in (1, 7, 1023, 1024, 1025, 10_001):  # (blocks of 1024: a short last one, and none)
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 2, n)).astype(dtype)
        g[: min(n, 2)] = [0.0, -0.0][: min(n, 2)]
        m, v = (rng.standard_normal(n) * 0.1).astype(dtype), (rng.random(n) * 0.01).astype(dtype)
        want = _adam_expression(g, m, v, b1, b2, eps, c0, c1)
        for impl in (compiled, kernels.twins):
            got = [np.full(n, 7.0, dtype) for _ in range(3)]
            impl.adam_update(g, m, v, *scalars, got[1], got[2], got[0], np.empty((2, 1024), dtype))
            assert [a.tobytes() for a in got] == [a.tobytes() for a in want]
        got = kernels.adam_update(g.reshape(1, -1), m.reshape(1, -1), v.reshape(1, -1), b1, b2, eps, c0, c1)
        assert [a.shape for a in got] == [(1, n)] * 3
        assert [a.tobytes() for a in got] == [a.tobytes() for a in want]


def test_adam_update_takes_any_array_numpy_takes_and_refuses_shapes_that_differ(rng):
    g = rng.standard_normal((3, 5))
    for a in (g.astype(np.float16), g.T.copy().T, np.arange(15).reshape(3, 5)):  # half, strided, integer
        m, v = np.zeros_like(a, dtype=np.result_type(a, 1.0)), np.ones_like(a, dtype=np.result_type(a, 1.0))
        want = _adam_expression(a, m, v, 0.9, 0.999, 1e-8, 0.1, 0.001)
        got = kernels.adam_update(a, m, v, 0.9, 0.999, 1e-8, 0.1, 0.001)
        assert [(x.dtype, x.shape, x.tobytes()) for x in got] == [(x.dtype, x.shape, x.tobytes()) for x in want]
    shapes = r"got \(3, 5\), \(3, 5\), \(5,\)"
    with pytest.raises(ValueError, match=r"adam_update: g, m and v must have one shape, " + shapes):
        kernels.adam_update(g, g, g[0], 0.9, 0.999, 1e-8, 0.1, 0.001)
