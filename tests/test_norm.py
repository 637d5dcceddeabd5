"""batch_norm: batch and running statistics by hand, explicit state, eval mode."""

from __future__ import annotations

import numpy as np
import pytest

import fnnet as fn


def test_running_statistics_by_hand():
    layer = fn.batch_norm(momentum=0.8)
    params, _ = layer.init(fn.random.key(0), (2, 3, 3), dtype=np.float64)
    state = layer.init_state(params)
    x = np.random.default_rng(0).standard_normal((4, 2, 3, 3)) * 3 + 1
    y, _, new = layer.forward_with_state(params, state, x)
    per_channel = x.transpose(1, 0, 2, 3).reshape(2, -1)
    mean, var = per_channel.mean(axis=1), per_channel.var(axis=1)
    np.testing.assert_allclose(new["mean"], 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(new["var"], 0.8 + 0.2 * per_channel.var(axis=1, ddof=1), rtol=1e-12)
    want = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-10)
    np.testing.assert_array_equal(state["mean"], [0, 0])  # the state passed in is unchanged


def test_eval_mode_uses_running_statistics_and_keeps_them():
    layer = fn.batch_norm()
    params, _ = layer.init(fn.random.key(0), (3,), dtype=np.float64)
    state = fn.freeze({"mean": np.array([1.0, 2.0, 3.0]), "var": np.array([4.0, 1.0, 0.25])})
    x = np.array([[1.0, 2.0, 3.0], [3.0, 3.0, 3.5]])
    y, _, new = layer.forward_with_state(params, state, x, train=False)
    np.testing.assert_allclose(y, (x - state["mean"]) / np.sqrt(state["var"] + 1e-5), rtol=1e-12)
    assert new is state


def test_forward_without_state_is_an_error():
    layer = fn.batch_norm()
    params, _ = layer.init(fn.random.key(0), (3,))
    with pytest.raises(TypeError, match="has state .* forward_with_state"):
        layer.forward(params, np.ones((2, 3), np.float32))


def test_serial_threads_state_of_stateful_layers_only():
    model = fn.serial(fn.dense(4), fn.batch_norm(), fn.relu(), fn.dense(3), fn.batch_norm())
    params, _ = model.init(fn.random.key(0), (5,))
    state = model.init_state(params)
    assert list(state) == ["batch_norm_1", "batch_norm_4"]
    _, _, new = model.forward_with_state(params, state, np.ones((2, 5), np.float32))
    assert fn.tree_structure(new) == fn.tree_structure(state)


def test_training_updates_model_state_and_jit_matches():
    model = fn.serial(fn.conv2d(2, 3), fn.batch_norm(), fn.relu(), fn.flatten(), fn.dropout(0.2), fn.dense(3))
    params, _ = model.init(fn.random.key(0), (1, 6, 6))
    opt = fn.optim.adam(0.01)
    step = fn.train_step(model, fn.softmax_cross_entropy, opt, key=fn.random.key(5))
    a = b = fn.TrainState.create(params, opt, model)
    rng = np.random.default_rng(0)
    for n in (4, 4, 3):
        data = (rng.random((n, 1, 6, 6), dtype=np.float32), rng.integers(0, 3, n))
        a, ma = step(a, data)
        b, mb = fn.jit(step)(b, data)
        assert ma == mb
    for x, y in zip(fn.tree_leaves((a.params, a.opt_state, a.model_state)),
                    fn.tree_leaves((b.params, b.opt_state, b.model_state))):
        assert x.tobytes() == y.tobytes()
    assert not np.array_equal(a.model_state["batch_norm_1"]["mean"], 0)
    logits = fn.predict(model, a.params, data[0], model_state=a.model_state)
    ref, _, _ = model.forward_with_state(a.params, a.model_state, data[0], train=False)
    np.testing.assert_array_equal(logits, ref)


def test_step_needs_the_model_state():
    model = fn.serial(fn.dense(2), fn.batch_norm())
    params, _ = model.init(fn.random.key(0), (3,))
    opt = fn.optim.sgd(0.1)
    step = fn.train_step(model, fn.softmax_cross_entropy, opt)
    with pytest.raises(ValueError, match=r"TrainState.create\(params, optimizer, model\)"):
        step(fn.TrainState.create(params, opt), (np.ones((2, 3), np.float32), np.array([0, 1])))


def test_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match=r"momentum must be a finite number in \[0, 1\)"):
        fn.batch_norm(momentum=1.0)
    layer = fn.batch_norm()
    params, _ = layer.init(fn.random.key(0), (3,))
    with pytest.raises(fn.ShapeError, match=r"batch_norm: expected input of shape \(N, 3\)"):
        layer.forward_with_state(params, layer.init_state(params), np.ones((2, 4), np.float32))
    with pytest.raises(fn.ShapeError, match=r"expects \(F,\) or \(C, H, W\)"):
        layer.init(fn.random.key(0), (3, 4))


# -- a batch cut into shards: the whole batch's statistics, pooled in shard order ----------------


def _bn_net():
    return fn.serial(fn.conv2d(3, 3), fn.batch_norm(), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(8),
                     fn.batch_norm(momentum=0.5), fn.relu(), fn.dense(4))


def _run(step, state, data):
    metrics = []
    for x, y in data:
        state, m = step(state, (x, y))
        metrics.append(m)
    return state, metrics


def _leaves(state):
    return fn.tree_leaves((state.params, state.opt_state, state.model_state))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_cut_batch_norm_batch_gives_the_same_bits_on_any_number_of_threads(dtype):
    model, opt = _bn_net(), fn.optim.adam(1e-2)
    params, _ = model.init(fn.random.key(0), (1, 10, 10), dtype=dtype)
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((n, 1, 10, 10)).astype(dtype), rng.integers(0, 4, n)) for n in (10, 10, 7, 10, 3)]
    step = fn.train_step(model, fn.softmax_cross_entropy, opt, rows_per_shard=3)  # 4, 4, 3, 4 and 1 shards
    state = fn.TrainState.create(params, opt, model)
    want, want_m = _run(step, state, data)
    for threads in (1, 2, 3, 4):
        got, got_m = _run(fn.jit(step, threads=threads), state, data)
        assert got_m == want_m, threads
        assert all(a.tobytes() == b.tobytes() for a, b in zip(_leaves(want), _leaves(got))), threads


def test_a_cut_batch_norm_batch_is_the_whole_batch_norm():
    # float64: a step on a cut batch equals the uncut step (the same statistics, pooled),
    # and its gradient is the whole batch's mean loss's (central differences)
    model, opt = _bn_net(), fn.optim.sgd(1.0)
    params, _ = model.init(fn.random.key(1), (1, 10, 10), dtype=np.float64)
    state = fn.TrainState.create(params, opt, model)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((11, 1, 10, 10)) * 2 + 1, rng.integers(0, 4, 11)
    whole, m_whole = fn.train_step(model, fn.softmax_cross_entropy, opt, rows_per_shard=None)(state, (x, y))
    for rows in (1, 3, 4):
        step = fn.train_step(model, fn.softmax_cross_entropy, opt, rows_per_shard=rows)
        assert len(step.cut(params, x.shape, x.dtype)) == -(-11 // rows)
        cut, m_cut = fn.jit(step, threads=2)(state, (x, y))
        for a, b in zip(_leaves(cut), _leaves(whole)):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
        assert m_cut["loss"] == pytest.approx(m_whole["loss"], rel=1e-13)
    grads = fn.tree_map(lambda p, q: p - q, params, whole.params)  # sgd(1.0): params - grads
    flat = fn.flat.Layout.of(params)
    g, p0 = flat.pack(grads), flat.pack(params)

    def loss_at(vec):
        logits, _, _ = model.forward_with_state(flat.views(vec), state.model_state, x)  # train mode: batch statistics
        return fn.softmax_cross_entropy(logits, y)[0]

    for i in np.random.default_rng(0).choice(p0.size, 16, replace=False):
        e = np.zeros_like(p0)
        e[i] = 1e-6
        assert g[i] == pytest.approx((loss_at(p0 + e) - loss_at(p0 - e)) / 2e-6, rel=1e-5, abs=1e-8)


def test_a_failing_shard_stops_the_others_and_the_step_goes_on():
    model, opt = _bn_net(), fn.optim.sgd(0.1)
    params, _ = model.init(fn.random.key(0), (1, 10, 10))
    state = fn.TrainState.create(params, opt, model)
    step = fn.jit(fn.train_step(model, fn.softmax_cross_entropy, opt, rows_per_shard=4), threads=2)
    x, y = np.ones((12, 1, 10, 10), np.float32), np.arange(12) % 4
    bad = y.copy()
    bad[9] = 7  # a label out of range in the last shard: its loss fails after the others passed batch norm
    with pytest.raises(fn.FnnetError, match="label"):
        step(state, (x, bad))
    new, metrics = step(state, (x, y))  # the same plan, its group reset
    assert new.step == 1 and np.isfinite(metrics["loss"])
