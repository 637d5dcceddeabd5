"""Initialisers: their statistics, fans, dtypes, and selection per layer."""

from __future__ import annotations

import numpy as np
import pytest

import fnnet as fn
from fnnet import init

FAN_IN, FAN_OUT = 200, 50
SHAPE = (400, 500)


@pytest.mark.parametrize(
    "make,std",
    [
        (lambda: init.normal(0.05), 0.05),
        (init.he_normal, np.sqrt(2 / FAN_IN)),
        (init.glorot_normal, np.sqrt(2 / (FAN_IN + FAN_OUT))),
        (init.he_uniform, np.sqrt(6 / FAN_IN) / np.sqrt(3)),
        (init.glorot_uniform, np.sqrt(6 / (FAN_IN + FAN_OUT)) / np.sqrt(3)),
        (lambda: init.uniform(0.2), 0.2 / np.sqrt(3)),
    ],
)
def test_standard_deviation_and_dtype(make, std):
    for dtype in (np.float32, np.float64):
        w = make()(fn.random.key(0), SHAPE, dtype, FAN_IN, FAN_OUT)
        assert w.dtype == dtype and w.shape == SHAPE
        assert abs(w.std() / std - 1) < 0.01  # 200k samples
        assert abs(w.mean()) < 0.01 * std


@pytest.mark.parametrize("make,lim", [(init.he_uniform, np.sqrt(6 / FAN_IN)),
                                      (init.glorot_uniform, np.sqrt(6 / (FAN_IN + FAN_OUT)))])
def test_uniform_bounds(make, lim):
    w = make()(fn.random.key(1), SHAPE, np.float64, FAN_IN, FAN_OUT)
    assert -lim <= w.min() < -0.99 * lim and 0.99 * lim < w.max() < lim


def test_constants():
    np.testing.assert_array_equal(init.zeros(None, (2,), np.float32, 1, 1), [0, 0])
    np.testing.assert_array_equal(init.constant(0.5)(None, (2,), np.float64, 1, 1), [0.5, 0.5])


def test_float32_and_float64_agree_from_one_key():
    a = init.he_normal()(fn.random.key(3), (10,), np.float32, 5, 5)
    b = init.he_normal()(fn.random.key(3), (10,), np.float64, 5, 5)
    np.testing.assert_array_equal(a, b.astype(np.float32))


def test_layers_pass_their_fans_and_take_any_initialiser():
    seen = []

    def spy(key, shape, dtype, fan_in, fan_out):
        seen.append((shape, fan_in, fan_out))
        return np.zeros(shape, dtype)

    fn.conv2d(4, (3, 2), w_init=spy, b_init=spy).init(fn.random.key(0), (5, 8, 8))
    fn.dense(7, w_init=spy).init(fn.random.key(0), (3,))
    assert seen == [((4, 5, 3, 2), 30, 24), ((4,), 30, 24), ((3, 7), 3, 7)]


def test_default_inits_are_he_normal_weights_and_zero_biases():
    params, _ = fn.conv2d(64, 3).init(fn.random.key(0), (16, 8, 8), dtype=np.float64)
    assert abs(params["w"].std() / np.sqrt(2 / (16 * 9)) - 1) < 0.03
    np.testing.assert_array_equal(params["b"], 0)
