"""One contract for every layer: shape inference, gradients, purity, dtypes, errors,
and the runner: a layer prepared once (as jit keeps it) gives the bits of the eager
pass, and ``jit(step)`` gives the bits of ``step``, for every row of the table."""

from __future__ import annotations

import pathlib
import re

import attrs
import numpy as np
import pytest
from conftest import max_rel_err, numeric_grad, sample_indices

import fnnet as fn
from fnnet.flat import Layout
from fnnet.layers import Sig
from fnnet.runner import prepare, run, run_backward


def _readme_layer(name: str):
    """The layer factory ``name`` defined by a Python block of docs/layers.md (run as written)."""
    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "layers.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", page, re.S) if f"def {name}(" in b)
    namespace: dict = {"__name__": "__docs__", "print": lambda *a, **k: None}
    exec(compile(block, "docs/layers.md", "exec"), namespace)
    return namespace[name]


def channel_scale_without_hook() -> fn.Layer:
    """The guide's channel_scale written without the buffers hook: forward gets the Sig,
    allocates its outputs, and backward returns new gradient arrays (the runner copies
    them into the step's flat gradient)."""

    def init(key, input_shape, dtype):
        return {"s": np.linspace(0.5, 1.5, input_shape[0]).astype(dtype)}, input_shape

    def check(params, input_shape, dtype):
        fn.layers.check_params("channel_scale", params, dtype, s=input_shape[:1])
        return input_shape

    def forward(params, x, sig):
        s = params["s"].reshape(-1, *[1] * (x.ndim - 2))
        return x * s, (x, s)

    def backward(cache, dy):
        x, s = cache
        return {"s": np.sum(dy * x, axis=(0, *range(2, x.ndim)))}, dy * s

    return fn.Layer("channel_scale", init, forward, backward, check)


# (id, layer factory, per-sample input shape)
LAYERS = [
    ("dense", lambda: fn.dense(5), (7,)),
    ("dense_1", lambda: fn.dense(1), (3,)),
    ("conv_seed_1to1_3x3", lambda: fn.conv2d(1, 3), (1, 8, 8)),
    ("conv_3to4_s2_p1", lambda: fn.conv2d(4, 3, stride=2, padding=1), (3, 9, 7)),
    ("conv_2to2_nonsquare_same_s21", lambda: fn.conv2d(2, (2, 3), stride=(2, 1), padding="same"), (2, 7, 6)),
    ("conv_2to3_same_dil2", lambda: fn.conv2d(3, 3, padding="same", dilation=2), (2, 9, 9)),
    # even size, stride 2, "same": the total padding is odd and its extra goes to the bottom/right
    ("conv_2to3_same_s2_even", lambda: fn.conv2d(3, 3, stride=2, padding="same"), (2, 8, 6)),
    ("conv_1x1", lambda: fn.conv2d(2, 1), (3, 5, 5)),
    ("conv_pad_pair_s3", lambda: fn.conv2d(2, 3, stride=3, padding=(2, 0)), (2, 8, 10)),
    # one product over the shard ("rows"), every geometry above; "auto" picks it for deep patches on small planes
    ("conv_rows_seed_1to1_3x3", lambda: fn.conv2d(1, 3, algorithm="rows"), (1, 8, 8)),
    ("conv_rows_3to4_s2_p1", lambda: fn.conv2d(4, 3, stride=2, padding=1, algorithm="rows"), (3, 9, 7)),
    ("conv_rows_2to2_nonsquare_same_s21", lambda: fn.conv2d(2, (2, 3), stride=(2, 1), padding="same",
                                                            algorithm="rows"), (2, 7, 6)),
    ("conv_rows_2to3_same_dil2", lambda: fn.conv2d(3, 3, padding="same", dilation=2, algorithm="rows"), (2, 9, 9)),
    ("conv_rows_1x1", lambda: fn.conv2d(2, 1, algorithm="rows"), (3, 5, 5)),
    ("conv_rows_pad_pair_s3", lambda: fn.conv2d(2, 3, stride=3, padding=(2, 0), algorithm="rows"), (2, 8, 10)),
    ("conv_auto_rows_8to3_4x4", lambda: fn.conv2d(3, 3, padding=1), (8, 4, 4)),  # depth 72 >= 2 x 16 pixels
    ("max_pool_2", lambda: fn.max_pool2d(2), (2, 6, 6)),
    ("max_pool_3s2_overlap_odd", lambda: fn.max_pool2d(3, 2), (3, 7, 9)),
    ("max_pool_2x3_odd", lambda: fn.max_pool2d((2, 3)), (1, 5, 7)),
    ("avg_pool_2", lambda: fn.avg_pool2d(2), (2, 6, 6)),
    ("avg_pool_3s1", lambda: fn.avg_pool2d(3, 1), (2, 5, 6)),
    ("flatten", fn.flatten, (2, 3, 4)),
    ("relu", fn.relu, (3, 4)),
    ("leaky_relu", lambda: fn.leaky_relu(0.1), (2, 3, 3)),
    ("tanh", fn.tanh, (6,)),
    ("sigmoid", fn.sigmoid, (2, 5)),
    ("dropout_0.3", lambda: fn.dropout(0.3), (4, 5)),
    ("batch_norm_dense", lambda: fn.batch_norm(), (5,)),
    ("batch_norm_conv", lambda: fn.batch_norm(momentum=0.5), (3, 4, 5)),
    ("global_avg_pool", fn.global_avg_pool2d, (3, 4, 5)),
    ("softmax", fn.softmax, (6,)),
    ("log_softmax", fn.log_softmax, (6,)),
    ("identity", fn.identity, (2, 3)),
    ("custom_readme_channel_scale", lambda: _readme_layer("channel_scale")(), (3, 4, 5)),
    ("custom_channel_scale_without_hook", channel_scale_without_hook, (3, 4)),
    ("swish_elementwise", lambda: fn.layers.elementwise(
        "swish", lambda x, out: np.multiply(x, 1 / (1 + np.exp(-x)), out=out),
        lambda x, dy, out: np.multiply(dy, (1 + np.exp(-x) * (1 + x)) / (1 + np.exp(-x)) ** 2, out=out),
        grad_from_input=True), (5,)),
    ("reshape", lambda: fn.reshape((-1, 2)), (3, 4)),
    ("residual_identity", lambda: fn.residual(fn.serial(fn.conv2d(2, 3, padding="same"), fn.tanh())), (2, 5, 5)),
    (
        "residual_projection_bn",
        lambda: fn.residual(
            fn.serial(fn.conv2d(4, 3, stride=2, padding=1), fn.batch_norm(), fn.relu(), fn.conv2d(4, 3, padding=1)),
            fn.conv2d(4, 1, stride=2),
        ),
        (2, 6, 6),
    ),
    (
        "serial_small_resnet_dropout",
        lambda: fn.serial(
            fn.conv2d(3, 3, padding="same"), fn.batch_norm(), fn.relu(),
            fn.residual(fn.serial(fn.conv2d(3, 3, padding="same", dilation=2), fn.batch_norm(), fn.leaky_relu())),
            fn.global_avg_pool2d(), fn.dropout(0.25), fn.dense(4), fn.log_softmax(),
        ),
        (1, 7, 7),
    ),
    (
        "serial_seed_net",
        lambda: fn.serial(
            fn.conv2d(1, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(8), fn.relu(), fn.dense(3)
        ),
        (1, 10, 10),
    ),
    ("conv_groups_2", lambda: fn.conv2d(4, 3, padding=1, groups=2), (4, 6, 6)),
    ("conv_depthwise_same", lambda: fn.conv2d(3, 3, padding="same", groups=3), (3, 5, 5)),
    ("conv_depthwise_x2_s2", lambda: fn.conv2d(6, 3, stride=2, groups=3), (3, 7, 7)),
    ("conv_transpose_s2_p1_op1", lambda: fn.conv_transpose2d(3, 3, stride=2, padding=1, output_padding=1), (2, 4, 5)),
    ("conv_transpose_2x3_s12_dil2", lambda: fn.conv_transpose2d(2, (2, 3), stride=(1, 2), dilation=2), (3, 3, 4)),
    ("conv_transpose_1x1", lambda: fn.conv_transpose2d(2, 1), (3, 4, 4)),
    ("layer_norm_all_axes", fn.layer_norm, (3, 4, 5)),
    ("layer_norm_last_axis", lambda: fn.layer_norm(1, eps=1e-3), (2, 6)),
    ("group_norm_2", lambda: fn.group_norm(2), (4, 3, 3)),
    ("group_norm_dense_3", lambda: fn.group_norm(3), (6,)),
    ("gelu", fn.gelu, (2, 3, 4)),
    ("gelu_tanh", lambda: fn.gelu("tanh"), (7,)),
    ("silu", fn.silu, (2, 5)),
    ("elu", lambda: fn.elu(0.7), (3, 4)),
    ("softplus_beta2_threshold1", lambda: fn.softplus(2.0, 1.0), (9,)),
    ("upsample_2", fn.upsample2d, (2, 3, 4)),
    ("upsample_2x3", lambda: fn.upsample2d((2, 3)), (1, 2, 2)),
    (
        "inception_fan_out_concat",
        lambda: fn.serial(
            fn.fan_out(3),
            fn.parallel(fn.conv2d(2, 1), fn.serial(fn.conv2d(2, 1), fn.relu(), fn.conv2d(3, 3, padding=1)),
                        fn.conv2d(1, 5, padding=2)),
            fn.fan_in_concat(),
        ),
        (2, 5, 5),
    ),
    (
        "fan_in_sum_dense_branches",
        lambda: fn.serial(fn.fan_out(2), fn.parallel(fn.dense(4), fn.serial(fn.dense(4), fn.tanh())), fn.fan_in_sum()),
        (3,),
    ),
    (
        "parallel_bn_dropout_concat",
        lambda: fn.serial(
            fn.fan_out(2), fn.parallel(fn.serial(fn.conv2d(2, 3, padding=1), fn.batch_norm()), fn.dropout(0.3)),
            fn.fan_in_concat(), fn.global_avg_pool2d(), fn.dense(3),
        ),
        (2, 4, 4),
    ),
    (
        "unet_tiny",
        lambda: fn.serial(
            fn.conv2d(2, 3, padding=1), fn.fan_out(2),
            fn.parallel(fn.identity(), fn.serial(fn.max_pool2d(2), fn.conv2d(4, 3, padding=1), fn.relu(),
                                                 fn.conv_transpose2d(2, 2, stride=2))),
            fn.fan_in_concat(), fn.conv2d(2, 1),
        ),
        (1, 4, 6),
    ),
    (
        "serial_lenet_like",
        lambda: fn.serial(
            fn.conv2d(3, 3, padding="same"),
            fn.tanh(),
            fn.avg_pool2d(2),
            fn.conv2d(4, 2, stride=2),
            fn.sigmoid(),
            fn.flatten(),
            fn.dense(2),
        ),
        (2, 8, 8),
    ),
]
IDS = [c[0] for c in LAYERS]
BATCH = 3


KEY = fn.random.key(99)  # the dropout mask's key, fixed so that forward is a function


def _setup(factory, shape, dtype, seed=0):
    layer = factory()
    params, out_shape = layer.init(fn.random.key(seed), shape, dtype=dtype)
    x = np.random.default_rng(seed).standard_normal((BATCH, *shape)).astype(dtype)
    return layer, params, out_shape, x


def _forward(layer, params, x, train=True):
    """(y, cache, new_state) in train mode with the layer's initial state and a fixed key."""
    return layer.forward_with_state(params, layer.init_state(params), x, key=KEY, train=train)


@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=IDS)
def test_init_infers_the_forward_shape(name, factory, shape):
    for dtype in (np.float32, np.float64):
        layer, params, out_shape, x = _setup(factory, shape, dtype)
        for train in (True, False):
            y, _, _ = _forward(layer, params, x, train)
            assert y.shape == (BATCH, *out_shape)
            assert y.dtype == dtype
        assert layer.output_shape(params, shape, dtype) == out_shape
        for leaf in fn.tree_leaves(params):
            assert leaf.dtype == dtype and not leaf.flags.writeable


@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=IDS)
def test_an_empty_batch_is_refused_naming_the_layer(name, factory, shape):
    layer, params, _, x = _setup(factory, shape, np.float32)
    for train in (True, False):
        with pytest.raises(fn.ShapeError, match=f"^{layer.name}: the batch is empty .*\\(0, "):
            _forward(layer, params, x[:0], train)
    assert fn.predict(layer, params, x[:0], model_state=layer.init_state(params)).shape == (0, *layer.output_shape(
        params, shape))  # (no rows to predict: an empty answer, no pass)


@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=IDS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gradients_match_central_differences(name, factory, shape, train):
    """float64: analytic backward equals central differences (max relative error < 1e-6)."""
    layer, params, out_shape, x = _setup(factory, shape, np.float64, seed=7)
    rng = np.random.default_rng(3)
    r = rng.standard_normal((BATCH, *out_shape))  # objective: sum(y * r)
    state = layer.init_state(params)
    if layer.stateful:  # eval mode with non-trivial running statistics
        state = fn.tree_map(lambda a: a + rng.random(a.shape), state)
    _, cache, _ = layer.forward_with_state(params, state, x, key=KEY, train=train)
    dparams, dx = layer.backward(cache, r.copy())
    assert fn.tree_structure(dparams) == fn.tree_structure(params)

    # finite differences on writeable copies of the params
    leaves, treedef = fn.tree_flatten(params)
    work = [leaf.copy() for leaf in leaves]
    xw = x.copy()

    def objective():
        y, _, _ = layer.forward_with_state(fn.tree_unflatten(treedef, work), state, xw, key=KEY, train=train)
        return float(np.sum(y * r))

    idx = sample_indices(x.shape, rng)
    num = numeric_grad(objective, xw, idx)
    assert max_rel_err(np.array([dx[i] for i in idx]), num) < 1e-6, "dx"
    for leaf_w, g in zip(work, fn.tree_leaves(dparams)):
        idx = sample_indices(leaf_w.shape, rng)
        num = numeric_grad(objective, leaf_w, idx)
        assert max_rel_err(np.array([g[i] for i in idx]), num) < 1e-6, "dparams"


@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=IDS)
@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no-dx"])
def test_a_prepared_layer_gives_the_bits_of_forward_and_backward(name, factory, shape, need_dx):
    """Prepared once and run on two batches through the same buffers (what jit does)
    against the eager forward/backward; without dx it returns None and the same grads."""
    layer, params, out_shape, _ = _setup(factory, shape, np.float32)
    state = layer.init_state(params)
    flat, grads = Layout.of(params).fresh_grads()
    site = prepare(layer, params, Sig((BATCH, *shape), np.dtype(np.float32), True, need_dx, grads))
    rng = np.random.default_rng(11)
    for _ in range(2):
        x = rng.standard_normal((BATCH, *shape)).astype(np.float32)
        dy = rng.standard_normal((BATCH, *out_shape)).astype(np.float32)
        y, cache, new_state = layer.forward_with_state(params, state, x, key=KEY)
        want_grads, want_dx = layer.backward(cache, dy)
        got_y, got_cache, got_state = run(site, params, x, KEY, state)
        assert got_y.tobytes() == y.tobytes()
        for a, b in zip(fn.tree_leaves(got_state), fn.tree_leaves(new_state)):
            assert a.tobytes() == b.tobytes()
        dx = run_backward(site, got_cache, dy)
        if need_dx or dx is not None:  # without need_dx, a layer may skip dx (most do) or return it
            assert dx.tobytes() == want_dx.tobytes()
        for got, want in zip(fn.tree_leaves(grads), fn.tree_leaves(want_grads)):
            assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=IDS)
def test_jit_step_equals_step_bit_for_bit(name, factory, shape):
    """The layer first in a small model (no dx: the fast path's first-layer case), trained
    by step and jit(step) over batches of two sizes."""
    model = fn.serial(factory(), fn.flatten(), fn.dense(3))
    params, _ = model.init(fn.random.key(0), shape)
    opt = fn.optim.adam(1e-2)
    step = fn.train_step(model, fn.softmax_cross_entropy, opt, key=fn.random.key(1) if model.stochastic else None)
    a = b = fn.TrainState.create(params, opt, model)
    jstep, rng = fn.jit(step), np.random.default_rng(0)
    for n in (BATCH, BATCH, 2, BATCH):
        data = (rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 3, n))
        a, ma = step(a, data)
        b, mb = jstep(b, data)
        assert ma == mb
    for u, v in zip(fn.tree_leaves((a.params, a.opt_state, a.model_state)),
                    fn.tree_leaves((b.params, b.opt_state, b.model_state))):
        assert u.dtype == v.dtype and u.tobytes() == v.tobytes()
    assert a.step == b.step == 4


@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=IDS)
def test_forward_backward_leave_inputs_unchanged(name, factory, shape):
    layer, params, out_shape, x = _setup(factory, shape, np.float32)
    x0, p0 = x.copy(), [leaf.copy() for leaf in fn.tree_leaves(params)]
    state = layer.init_state(params)
    s0 = [leaf.copy() for leaf in fn.tree_leaves(state)]
    y, cache, _ = layer.forward_with_state(params, state, x, key=KEY)
    dy = np.ones_like(y)
    dy0 = dy.copy()
    y0 = y.copy()
    layer.backward(cache, dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    np.testing.assert_array_equal(y, y0)
    for a, b in zip(fn.tree_leaves(params) + fn.tree_leaves(state), p0 + s0):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=IDS)
def test_same_key_same_bits(name, factory, shape):
    a, _ = factory().init(fn.random.key(5), shape)
    b, _ = factory().init(fn.random.key(5), shape)
    for u, v in zip(fn.tree_leaves(a), fn.tree_leaves(b)):
        assert u.tobytes() == v.tobytes()


@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=IDS)
def test_dtype_mismatch_is_an_error(name, factory, shape):
    layer, params, _, x = _setup(factory, shape, np.float32)
    state = layer.init_state(params)
    with pytest.raises(fn.DTypeError, match="dtype"):
        bad = x.astype(np.float64) if fn.tree_leaves(params) else x.astype(np.int64)
        layer.forward_with_state(params, state, bad, key=KEY)
    with pytest.raises(fn.DTypeError, match="float32 or float64"):
        layer.forward_with_state(params, state, x.astype(np.int32), key=KEY)


@pytest.mark.parametrize(
    "layer,shape,bad,match",
    [
        (fn.dense(4), (6,), (5,), r"dense: expected input of shape \(N, 6\), got \(N, 5\)"),
        (fn.dense(4), (6,), (2, 3), r"dense: expected input of shape \(N, 6\), got \(N, 2, 3\)"),
        (fn.conv2d(2, 3), (1, 8, 8), (3, 8, 8), r"conv2d: expected input of shape \(N, 1, H, W\) .*got \(N, 3, 8, 8\)"),
        (fn.conv2d(2, 3), (1, 8, 8), (8, 8), r"conv2d: expected a \(C, H, W\) input 3-D"),
        (fn.conv2d(2, 5), (1, 8, 8), (1, 4, 4), r"conv2d: input \(N, 1, 4, 4\) is smaller than the 5x5 kernel"),
        (fn.max_pool2d(3), (1, 8, 8), (1, 2, 8), r"max_pool2d: input \(N, 1, 2, 8\) is smaller than the 3x3 window"),
        (fn.conv2d(4, 3, groups=2), (4, 6, 6), (3, 6, 6), r"conv2d: expected input of shape \(N, 4, H, W\)"),
        (fn.conv_transpose2d(2, 3), (3, 4, 4), (2, 4, 4), r"conv_transpose2d: expected input of shape \(N, 3, H, W\)"),
        (fn.layer_norm(), (3, 4), (3, 5), r"layer_norm: params 'scale' has shape \(3, 4\), expected \(3, 5\)"),
        (fn.group_norm(2), (4, 3), (3, 3), r"group_norm: inputs \(N, 3, 3\) do not have a channel count that 2 groups"),
        (fn.upsample2d(2), (1, 2, 2), (4,), r"upsample2d: expected a \(C, H, W\) input 3-D"),
    ],
)
def test_bad_shapes_name_layer_expected_and_received(layer, shape, bad, match):
    params, _ = layer.init(fn.random.key(0), shape)
    with pytest.raises(fn.ShapeError, match=match):
        layer.forward(params, np.zeros((2, *bad), np.float32))


def test_serial_errors_name_the_sub_layer():
    model = fn.serial(fn.conv2d(2, 3), fn.relu(), fn.flatten(), fn.dense(10))
    params, _ = model.init(fn.random.key(0), (1, 8, 8))
    with pytest.raises(fn.ShapeError, match=r"^conv2d_0: conv2d: expected input of shape \(N, 1, H, W\)"):
        model.forward(params, np.zeros((2, 2, 8, 8), np.float32))
    with pytest.raises(fn.ShapeError, match=r"^dense_3: dense: expected input of shape \(N, 72\), got \(N, 98\)"):
        model.forward(params, np.zeros((2, 1, 9, 9), np.float32))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: fn.dense(0), "features must be a positive int"),
        (lambda: fn.conv2d(2, 0), "kernel_size must be an int >= 1"),
        (lambda: fn.conv2d(2, 3, stride=(1, 0)), "stride must be"),
        (lambda: fn.conv2d(2, 3, padding="full"), "padding must be 'same', 'valid'"),
        (lambda: fn.conv2d(2, 3, padding=-1), "padding must be an int >= 0"),
        (lambda: fn.max_pool2d(0), "window must be"),
        (lambda: fn.leaky_relu(float("nan")), "negative_slope must be finite"),
        (lambda: fn.conv2d(3, 3, groups=2), "conv2d: out_channels 3 is not a multiple of groups 2"),
        (lambda: fn.conv2d(4, 3, groups=0), "conv2d: groups must be a positive int"),
        (lambda: fn.conv2d(4, 3, algorithm="fast"), "conv2d: algorithm must be one of 'auto', 'rows', 'samples', "
                                                     "got 'fast'"),
        (lambda: fn.conv2d(4, 3, groups=2, algorithm="rows"), r"conv2d: algorithm 'rows' runs one group \(groups=1\)"),
        (lambda: fn.conv_transpose2d(2, 3, stride=2, output_padding=2), r"conv_transpose2d: output_padding \(2, 2\) "
                                                                         r"must be smaller than the stride"),
        (lambda: fn.conv_transpose2d(2, 3, padding=-1), "conv_transpose2d: padding must be an int >= 0"),
        (lambda: fn.layer_norm(0), "layer_norm: normalized_ndim must be a positive int"),
        (lambda: fn.group_norm(2, eps=0), "group_norm: eps"),
        (lambda: fn.gelu("fast"), "gelu: approximate must be 'none' or 'tanh'"),
        (lambda: fn.elu(float("inf")), "elu: alpha must be finite"),
        (lambda: fn.softplus(0), "softplus: beta must be finite and > 0"),
        (lambda: fn.upsample2d(0), "upsample2d: factor must be an int >= 1"),
        (lambda: fn.fan_out(0), "fan_out: n must be a positive int"),
        (lambda: fn.fan_in_concat(0), r"fan_in_concat: axis must be a nonzero int \(0 is the batch axis\)"),
        (lambda: fn.parallel(), "parallel: needs at least one layer"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_conv_same_padding_keeps_size_and_matches_a_direct_loop():
    """conv2d is PyTorch's cross-correlation; 'same' keeps H, W at stride 1."""
    layer = fn.conv2d(2, 3, padding="same")
    params, out = layer.init(fn.random.key(1), (2, 5, 6), dtype=np.float64)
    assert out == (2, 5, 6)
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 6))
    y, _ = layer.forward(params, x)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    w, b = params["w"], params["b"]
    ref = np.zeros((1, 2, 5, 6))
    for k in range(2):
        for i in range(5):
            for j in range(6):
                ref[0, k, i, j] = np.sum(xp[0, :, i : i + 3, j : j + 3] * w[k]) + b[k]
    np.testing.assert_allclose(y, ref, rtol=1e-12)


def test_flatten_output_is_a_read_only_view():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y, _ = fn.flatten().forward(fn.tree.FrozenDict(), x)
    assert y.shape == (2, 12) and not y.flags.writeable


def test_sigmoid_is_stable_for_large_inputs():
    y, _ = fn.sigmoid().forward({}, np.array([[-1000.0, 0.0, 1000.0]]))
    np.testing.assert_array_equal(y, [[0.0, 0.5, 1.0]])


def test_max_pool_backward_after_an_eval_forward():
    """Eval mode keeps no arg-max; backward finds the winners from the cached input."""
    layer = fn.max_pool2d(2)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    y_train, c_train = layer.forward({}, x)
    y_eval, c_eval = layer.forward({}, x, train=False)
    np.testing.assert_array_equal(y_eval, y_train)
    dy = np.random.default_rng(1).standard_normal(y_train.shape)
    np.testing.assert_array_equal(layer.backward(c_eval, dy)[1], layer.backward(c_train, dy)[1])


# -- the convolution's two algorithms ------------------------------------------------------------


@pytest.mark.parametrize("channels, groups, k, plane, want", [
    (1, 1, 3, 676, "samples"),  # the first layer of every preset: patches of 9
    (16, 1, 3, 121, "samples"),  # the default CNN's second conv: 144 < 2 x 121
    (32, 1, 3, 121, "rows"),  # best's (MNIST): 288 >= 242
    (32, 1, 3, 196, "samples"),  # best's (Fashion-MNIST, same padding)
    (64, 1, 3, 64, "rows"), (128, 1, 3, 64, "rows"),  # a CIFAR net's third block
    (7, 1, 3, 16, "samples"),  # 63 values: under ROWS_MIN_DEPTH
    (64, 2, 3, 4, "samples"), (64, 64, 3, 4, "samples"),  # groups: a product per group and sample
])
def test_conv_algorithm_follows_its_rule(channels, groups, k, plane, want):
    assert fn.layers.conv_algorithm(channels, groups, k, k, plane) == want


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (3, 7, 6)), ({"stride": 2, "padding": 1}, (4, 9, 8)), ({"padding": "same", "dilation": 2}, (2, 9, 9)),
    ({"kernel_size": (2, 3), "stride": (1, 2)}, (5, 6, 7)), ({"kernel_size": 1}, (6, 3, 3)),
])
def test_both_conv_algorithms_give_one_result_and_the_same_bias_gradient(kwargs, shape, rng):
    kw = {"kernel_size": 3, **kwargs}
    rows, samples = fn.conv2d(5, algorithm="rows", **kw), fn.conv2d(5, algorithm="samples", **kw)
    params, out = rows.init(fn.random.key(0), shape, dtype=np.float64)
    x, dy = rng.standard_normal((4, *shape)), rng.standard_normal((4, *out))
    (y1, c1), (y2, c2) = rows.forward(params, x), samples.forward(params, x)
    (g1, dx1), (g2, dx2) = rows.backward(c1, dy), samples.backward(c2, dy)
    np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g1["w"], g2["w"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-12, atol=1e-12)
    assert g1["b"].tobytes() == g2["b"].tobytes()  # one sum, in one order


def test_what_a_layer_sees_is_small():
    # a hook's Sig: the input signature, the gradients, the path; what training carries is one field
    names = [f.name for f in attrs.fields(Sig)]
    assert names == ["x_shape", "dtype", "train", "need_dx", "grads", "path", "carry"]
    assert [f.name for f in attrs.fields(fn.layers.Carry)] == ["group", "shard", "fuse", "ledger", "watch"]
