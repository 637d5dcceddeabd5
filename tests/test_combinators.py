"""serial: names, key splitting, reverse backward; summary."""

from __future__ import annotations

import numpy as np
import pytest

import fnnet as fn
from fnnet.flat import Layout
from fnnet.layers._layer import Sig, prepare, run, run_backward


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
