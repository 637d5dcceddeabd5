"""serial: names, key splitting, reverse backward; summary."""

from __future__ import annotations

import numpy as np
import pytest

import fnnet as fn
from fnnet.flat import Layout
from fnnet.layers import Sig
from fnnet.runner import prepare, run, run_backward


def tutorial_net():
    return fn.serial(fn.conv2d(1, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(64), fn.relu(), fn.dense(10))


def test_params_are_keyed_by_readable_names_and_counted():
    params, out = tutorial_net().init(fn.random.key(0), (1, 28, 28))
    assert list(params) == ["conv2d_0", "relu_1", "max_pool2d_2", "flatten_3", "dense_4", "relu_5", "dense_6"]
    assert out == (10,)
    assert params["dense_4"]["w"].shape == (169, 64)
    assert fn.param_count(params) == 10 + 169 * 64 + 64 + 64 * 10 + 10


def test_each_layer_gets_its_own_key():
    model = fn.serial(fn.dense(4), fn.dense(4))
    params, _ = model.init(fn.random.key(0), (4,))
    assert not np.array_equal(params["dense_0"]["w"], params["dense_1"]["w"])


def test_serial_equals_manual_composition():
    model = tutorial_net()
    params, _ = model.init(fn.random.key(1), (1, 28, 28), dtype=np.float64)
    x = np.random.default_rng(0).random((2, 1, 28, 28))
    y, cache = model.forward(params, x)
    h = x
    caches = []
    for (k, layer) in model.children:
        h, c = layer.forward(params[k], h)
        caches.append((layer, c))
    np.testing.assert_array_equal(y, h)
    dy = np.ones_like(y)
    grads, dx = model.backward(cache, dy)
    for (layer, c), k in zip(reversed(caches), reversed([k for k, _ in model.children])):
        g, dy = layer.backward(c, dy)
        for a, b in zip(fn.tree_leaves(g), fn.tree_leaves(grads[k])):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dx, dy)


def test_summary_table():
    lines = []
    text = fn.summary(tutorial_net(), (1, 28, 28), print_fn=lines.append)
    assert lines == [text]
    assert "conv2d_0      (N, 1, 26, 26)      10" in text
    assert "dense_4       (N, 64)         10,880" in text
    assert text.splitlines()[-1].split() == ["total", "11,540"]


def test_nested_serial_summary_and_errors():
    block = fn.serial(fn.conv2d(2, 3, padding="same"), fn.relu())
    model = fn.serial(block, fn.flatten(), fn.dense(3))
    params, _ = model.init(fn.random.key(0), (1, 4, 4))
    text = fn.summary(model, (1, 4, 4), print_fn=lambda s: None)
    assert "serial_0/conv2d_0" in text
    with pytest.raises(fn.ShapeError, match=r"^serial_0: conv2d_0: conv2d: expected input"):
        model.forward(params, np.zeros((1, 3, 4, 4), np.float32))


def test_serial_rejects_non_layers():
    with pytest.raises(TypeError, match="did you forget the"):
        fn.serial(fn.relu)
    with pytest.raises(ValueError, match="at least one layer"):
        fn.serial()


def test_residual_needs_matching_shapes():
    want = r"residual: block output \(N, 4, 2, 2\) does not match shortcut output \(N, 2, 6, 6\)"
    with pytest.raises(fn.ShapeError, match=want):
        fn.residual(fn.conv2d(4, 3, stride=2)).init(fn.random.key(0), (2, 6, 6))
    block = fn.residual(fn.conv2d(2, 3, padding="same"))
    params, out = block.init(fn.random.key(0), (2, 5, 5))
    assert out == (2, 5, 5) and list(params) == ["block", "shortcut"]
    with pytest.raises(fn.ShapeError, match=r"^residual/block: conv2d: expected input of shape \(N, 2, H, W\)"):
        block.forward(params, np.zeros((1, 3, 5, 5), np.float32))


def test_a_small_resnet_trains():
    def block(c):
        return fn.residual(fn.serial(fn.conv2d(c, 3, padding="same"), fn.batch_norm(), fn.relu(),
                                     fn.conv2d(c, 3, padding="same"), fn.batch_norm()))

    model = fn.serial(
        fn.conv2d(4, 3, padding="same"), fn.batch_norm(), fn.relu(), block(4), fn.relu(),
        fn.residual(fn.serial(fn.conv2d(8, 3, stride=2, padding=1), fn.batch_norm()), fn.conv2d(8, 1, stride=2)),
        fn.relu(), fn.global_avg_pool2d(), fn.dense(3),
    )
    params, out = model.init(fn.random.key(0), (1, 8, 8))
    assert out == (3,)
    opt = fn.optim.adamw(0.02, weight_decay=1e-4)
    step = fn.jit(fn.train_step(model, fn.softmax_cross_entropy, opt))
    state = fn.TrainState.create(params, opt, model)
    rng = np.random.default_rng(0)
    x, y = rng.random((12, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 12)
    losses = []
    for _ in range(40):
        state, m = step(state, (x, y))
        losses.append(m["loss"])
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("first", [fn.conv2d(3, 3, stride=2), fn.dense(4), fn.relu()], ids=["conv", "dense", "relu"])
def test_a_training_step_skips_only_the_first_layers_dx(first):
    """Prepared without the input's gradient (as a step prepares a model), serial passes
    need_dx=False to its first layer alone: the same gradients, no dx."""
    shape = (2, 7, 7) if first.name != "dense" else (6,)
    model = fn.serial(first, fn.flatten(), fn.dense(3)) if first.name != "dense" else fn.serial(first, fn.dense(3))
    params, _ = model.init(fn.random.key(0), shape, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((4, *shape))
    y, cache = model.forward(params, x)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    want, want_dx = model.backward(cache, dy)
    flat, grads = Layout.of(params).fresh_grads()
    site = prepare(model, params, Sig(x.shape, x.dtype, train=True, need_dx=False, grads=grads))
    chain, _ = site.buf
    assert [s.sig.need_dx for s in chain.sites] == [False] + [True] * (len(chain.sites) - 1)
    _, c, _ = run(site, params, x)
    assert run_backward(site, c, dy) is None and want_dx is not None
    for a, b in zip(fn.tree_leaves(grads), fn.tree_leaves(want)):
        assert a.tobytes() == b.tobytes()


# -- branches: parallel, fan_out, fan_in_sum, fan_in_concat ---------------------------------


def _branchy():
    return fn.serial(
        fn.conv2d(3, 3, padding=1), fn.fan_out(2),
        fn.parallel(fn.serial(fn.conv2d(4, 3, padding=1), fn.batch_norm(), fn.relu()),
                    fn.serial(fn.dropout(0.25), fn.conv2d(2, 1))),
        fn.fan_in_concat(), fn.global_avg_pool2d(), fn.dense(5),
    )


def test_residual_is_fan_out_parallel_fan_in_sum():
    block, shortcut = fn.serial(fn.conv2d(3, 3, padding=1), fn.tanh()), fn.conv2d(3, 1)
    ours = fn.residual(block, shortcut)
    graph = fn.serial(fn.fan_out(2), fn.parallel(block, shortcut), fn.fan_in_sum())
    p, _ = ours.init(fn.random.key(0), (2, 5, 5), dtype=np.float64)
    q = {"fan_out_0": {}, "parallel_1": {"serial_0": p["block"], "conv2d_1": p["shortcut"]}, "fan_in_sum_2": {}}
    x = np.random.default_rng(0).standard_normal((4, 2, 5, 5))
    (y1, c1), (y2, c2) = ours.forward(p, x), graph.forward(q, x)
    assert y1.tobytes() == y2.tobytes()
    dy = np.random.default_rng(1).standard_normal(y1.shape)
    (g1, dx1), (g2, dx2) = ours.backward(c1, dy), graph.backward(c2, dy)
    assert dx1.tobytes() == dx2.tobytes()
    assert fn.checkpoint.digest((g1["block"], g1["shortcut"])) == fn.checkpoint.digest(
        (g2["parallel_1"]["serial_0"], g2["parallel_1"]["conv2d_1"]))


def test_summary_prints_every_branch_under_its_path():
    rows = fn.summary(_branchy(), (1, 6, 6), print_fn=lambda s: None).splitlines()
    names = [r.split()[0] for r in rows[2:-2]]
    assert names == ["conv2d_0", "fan_out_1", "parallel_2/serial_0/conv2d_0", "parallel_2/serial_0/batch_norm_1",
                     "parallel_2/serial_0/relu_2", "parallel_2/serial_1/dropout_0", "parallel_2/serial_1/conv2d_1",
                     "fan_in_concat_3", "global_avg_pool2d_4", "dense_5"]
    assert "((N, 3, 6, 6), (N, 3, 6, 6))" in rows[3] and "(N, 6, 6, 6)" in rows[9]
    res = fn.summary(fn.residual(fn.conv2d(2, 3, padding=1), fn.conv2d(2, 1)), (2, 4, 4), print_fn=lambda s: None)
    assert "residual/block" not in res and "block" in res and "shortcut" in res


def test_a_branchy_model_with_batch_norm_and_dropout_gives_one_set_of_bits_on_any_cut_and_threads():
    model = _branchy()
    params, _ = model.init(fn.random.key(0), (1, 6, 6))
    opt = fn.optim.adam(1e-2)
    x = np.random.default_rng(0).random((8, 1, 6, 6), dtype=np.float32)
    y = np.arange(8) % 5
    digests = set()
    for rows, threads in ((2, 1), (2, 3), (4, 2)):
        step = fn.train_step(model, fn.softmax_cross_entropy, opt, key=fn.random.key(1), rows_per_shard=rows)
        state = fn.TrainState.create(params, opt, model)
        for _ in range(3):
            state, _ = fn.jit(step, threads=threads)(state, (x, y))
        plain = fn.TrainState.create(params, opt, model)
        for _ in range(3):
            plain, _ = step(plain, (x, y))
        assert fn.checkpoint.digest((state.params, state.model_state)) == fn.checkpoint.digest(
            (plain.params, plain.model_state))
        digests.add((rows, fn.checkpoint.digest(state.params)))
    assert len({d for r, d in digests if r == 2}) == 1  # (threads change no bit; another cut, other bits)
    logits = fn.predict(model, state.params, x, model_state=state.model_state)
    assert logits.shape == (8, 5) and np.isfinite(logits).all()
    auto = fn.jit(fn.train_step(model, fn.softmax_cross_entropy, opt, key=fn.random.key(1)))  # (the cut by buffers)
    assert np.isfinite(auto(fn.TrainState.create(params, opt, model), (x, y))[1]["loss"])


def test_branch_params_go_through_checkpoints(tmp_path):
    model = _branchy()
    params, _ = model.init(fn.random.key(0), (1, 6, 6))
    tree = {"params": params, "model_state": model.init_state(params)}
    for suffix in ("npz", "safetensors"):
        fn.checkpoint.save(tmp_path / f"b.{suffix}", tree)
        back, _ = fn.checkpoint.load(tmp_path / f"b.{suffix}", like=tree)
        assert fn.checkpoint.digest(back) == fn.checkpoint.digest(tree)
    assert "parallel_2" in back["params"] and "serial_0" in back["model_state"]["parallel_2"]


@pytest.mark.parametrize("make,shape,match", [
    (lambda: fn.parallel(fn.dense(2), fn.dense(2)), (3,), r"parallel: takes a tuple of 2 inputs \(from fan_out"),
    (lambda: fn.serial(fn.fan_out(3), fn.parallel(fn.dense(2), fn.dense(2))), (3,),
     r"parallel_1: parallel: takes a tuple of 2 inputs .*got \(\(N, 3\), \(N, 3\), \(N, 3\)\)"),
    (lambda: fn.serial(fn.fan_out(2), fn.parallel(fn.dense(2), fn.dense(3)), fn.fan_in_sum()), (3,),
     r"fan_in_sum_2: fan_in_sum: the inputs must have one shape, got \(\(N, 2\), \(N, 3\)\)"),
    (lambda: fn.serial(fn.fan_out(2), fn.parallel(fn.conv2d(2, 1), fn.conv2d(2, 3)), fn.fan_in_concat()), (1, 5, 5),
     r"fan_in_concat_2: fan_in_concat: the inputs must agree on every axis but 1"),
    (lambda: fn.serial(fn.fan_out(2), fn.fan_in_concat(4)), (3,), r"fan_in_concat: axis 4 is out of range"),
    (lambda: fn.serial(fn.fan_out(2), fn.dense(2)), (3,), r"dense_1: dense: expected a flat input"),
    (lambda: fn.serial(fn.fan_out(2), fn.fan_out(2)), (3,), r"fan_out_1: fan_out: takes one input, got a tuple"),
])
def test_branch_errors_name_the_layer_and_the_shapes(make, shape, match):
    with pytest.raises(fn.ShapeError, match=match):
        make().init(fn.random.key(0), shape)


def test_parallel_takes_layers():
    with pytest.raises(fn.InvalidTypeError, match=r"parallel: argument 1 is a function, not a Layer \(did you forget"):
        fn.parallel(fn.dense(2), fn.relu)


@pytest.mark.parametrize("combinator", [lambda m: fn.serial(m, fn.relu()), lambda m: fn.residual(m)],
                         ids=["serial", "residual"])
def test_nesting_runs_to_its_limit_and_is_refused_beyond_naming_the_depth(combinator):
    from fnnet.layers._layer import MAX_DEPTH

    model = fn.dense(2)
    for _ in range(MAX_DEPTH - 1):
        model = combinator(model)
    assert model.depth == MAX_DEPTH
    params, _ = model.init(fn.random.key(0), (2,))
    opt = fn.optim.sgd(0.1)
    x, y = np.ones((4, 2), np.float32), np.arange(4) % 2
    step = fn.jit(fn.train_step(model, fn.losses.softmax_cross_entropy, opt))
    state, _ = step(fn.TrainState.create(params, opt, model), (x, y))
    assert fn.predict(model, state.params, x).shape == (4, 2)
    assert len(fn.pytorch.to_state_dict(model, params, (2,))) == 2
    with pytest.raises(fn.InvalidValueError, match=rf"layers nested {MAX_DEPTH + 1} deep; fnnet runs at most "
                                                   rf"{MAX_DEPTH} levels"):
        combinator(model)
