"""dropout: explicit key per call, mask frequency and scaling, identity in eval mode."""

from __future__ import annotations

import numpy as np
import pytest

import fnnet as fn


def test_mask_frequency_and_scaling():
    x = np.ones((200, 500), np.float32)
    y, _ = fn.dropout(0.3).forward({}, x, key=fn.random.key(0))
    dropped = np.mean(y == 0)
    assert abs(dropped - 0.3) < 0.005  # 100k draws: 5 sigma is 0.007
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.01  # the expectation is kept


def test_eval_mode_is_the_identity_view():
    x = np.random.default_rng(0).standard_normal((3, 4))
    y, _ = fn.dropout(0.5).forward({}, x, train=False)
    np.testing.assert_array_equal(y, x)
    assert not y.flags.writeable and x.flags.writeable


def test_same_key_same_mask_other_key_other_mask():
    x = np.ones((4, 50))
    layer = fn.dropout(0.5)
    a, _ = layer.forward({}, x, key=fn.random.key(1))
    b, _ = layer.forward({}, x, key=fn.random.key(1))
    c, _ = layer.forward({}, x, key=fn.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_backward_uses_the_same_mask():
    layer = fn.dropout(0.4)
    x = np.ones((2, 30))
    y, cache = layer.forward({}, x, key=fn.random.key(3))
    _, dx = layer.backward(cache, np.ones_like(y))
    np.testing.assert_array_equal(dx, y)
    with pytest.raises(TypeError, match="takes the cache returned by this layer's forward"):
        fn.dropout(0.4).backward(cache, np.ones_like(y))


def test_serial_gives_each_dropout_its_own_key():
    drop = fn.dropout(0.5)
    model = fn.serial(drop, fn.reshape((1, 100)), fn.flatten(), drop)
    params, _ = model.init(fn.random.key(0), (100,))
    x = np.ones((1, 100))
    key = fn.random.key(7)
    y, _ = model.forward(params, x, key=key)
    k0, _, _, k3 = fn.random.split(key, 4)  # serial splits its key once per layer
    a, _ = drop.forward({}, x, key=k0)
    b, _ = drop.forward({}, a, key=k3)
    np.testing.assert_array_equal(y, b)
    assert not np.array_equal(a != 0, drop.forward({}, x, key=k3)[0] != 0)


def test_train_mode_without_key_is_an_error():
    with pytest.raises(TypeError, match="dropout is random in train mode: pass key="):
        fn.dropout(0.1).forward({}, np.ones((1, 2)))
    with pytest.raises(ValueError, match="pass key="):
        fn.train_step(fn.serial(fn.dense(2), fn.dropout(0.1)), fn.softmax_cross_entropy, fn.optim.sgd(0.1))
    y, _ = fn.dropout(0.0).forward({}, np.ones((1, 2)))  # rate 0 needs no key
    np.testing.assert_array_equal(y, np.ones((1, 2)))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 2])
def test_bad_rate(rate):
    with pytest.raises(ValueError, match=r"rate \(the probability of dropping\) must be a finite number in \[0, 1\)"):
        fn.dropout(rate)
