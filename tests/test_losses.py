"""Losses: values, gradients by central differences, stability, bad input."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import max_rel_err, numeric_grad, sample_indices

import fnnet as fn


def _onehot(labels, c):
    return np.eye(c)[labels]


LOSSES = [
    ("xent_ids", fn.softmax_cross_entropy, lambda rng: rng.integers(0, 5, 4)),
    ("xent_onehot", fn.softmax_cross_entropy, lambda rng: _onehot(rng.integers(0, 5, 4), 5)),
    ("xent_soft", fn.softmax_cross_entropy, lambda rng: rng.dirichlet(np.ones(5), 4)),
    ("xent_smoothed_ids", functools.partial(fn.softmax_cross_entropy, label_smoothing=0.1),
     lambda rng: rng.integers(0, 5, 4)),
    ("xent_smoothed_soft", functools.partial(fn.softmax_cross_entropy, label_smoothing=0.3),
     lambda rng: rng.dirichlet(np.ones(5), 4)),
    ("mse", fn.mse, lambda rng: rng.standard_normal((4, 5))),
]


@pytest.mark.parametrize("name,loss,labels", LOSSES, ids=[x[0] for x in LOSSES])
def test_loss_gradient_matches_central_differences(name, loss, labels):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 5)) * 3
    y = labels(rng)
    value, grad = loss(logits, y)
    assert value.shape == () and grad.shape == logits.shape
    idx = sample_indices(logits.shape, rng, k=20)
    num = numeric_grad(lambda: float(loss(logits, y)[0]), logits, idx)
    assert max_rel_err(np.array([grad[i] for i in idx]), num) < 1e-6


def test_cross_entropy_value_by_hand():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    loss, _ = fn.softmax_cross_entropy(logits, np.array([2, 0]))
    p0 = np.exp(3) / np.exp([1, 2, 3]).sum()
    assert float(loss) == pytest.approx((-np.log(p0) + np.log(3)) / 2, rel=1e-14)
    ids, g_ids = fn.softmax_cross_entropy(logits, np.array([2, 0]))
    oh, g_oh = fn.softmax_cross_entropy(logits, _onehot([2, 0], 3))
    assert float(ids) == float(oh)
    np.testing.assert_array_equal(g_ids, g_oh)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4]], np.float32)
    loss, grad = fn.softmax_cross_entropy(logits, np.array([1]))
    assert np.isfinite(loss) and float(loss) == pytest.approx(1e4)
    assert grad.dtype == np.float32 and np.isfinite(grad).all()


def test_mse_value():
    loss, grad = fn.mse(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]]))
    assert float(loss) == 2.5
    np.testing.assert_array_equal(grad, [[1.0, 2.0]])


@pytest.mark.parametrize(
    "logits,labels,err,match",
    [
        (np.array([[np.nan, 0.0]]), np.array([0]), fn.InvalidValueError, "logits contain NaN"),
        (np.array([[np.inf, 0.0]]), np.array([0]), fn.InvalidValueError, "logits contain inf"),
        (np.zeros((2, 3)), np.array([0, 3]), fn.InvalidValueError, r"class ids in \[0, 3\)"),
        (np.zeros((2, 3)), np.array([0, -1]), fn.InvalidValueError, r"class ids in \[0, 3\)"),
        (np.zeros((2, 3)), np.array([0]), fn.ShapeError, "2 logits rows but 1 labels"),
        (np.zeros((2, 3)), np.zeros((2, 4)), fn.ShapeError, r"one-hot labels must have shape \(2, 3\)"),
        (np.zeros((2, 3)), np.array(["a", "b"]), fn.ShapeError, "labels must be integer class ids"),
        (np.zeros((2, 3)), np.array([[1.0, 0, 0], [1.5, -0.5, 0]]), fn.InvalidValueError,
         "probability rows must have entries >= 0; row 1 has -0.5"),
        (np.zeros((2, 3)), np.array([[1.0, 0, 0], [1.0, 1.0, 1.0]]), fn.InvalidValueError,
         r"must each sum to 1 \(within 0.001\); row 1 sums to 3"),
        (np.zeros((2, 3)), np.array([[0.5, 0.2, 0.2], [1.0, 0, 0]]), fn.InvalidValueError, "row 0 sums to 0.9"),
        (np.zeros((2, 3), np.int64), np.array([0, 1]), fn.DTypeError, "logits must be float32 or float64"),
        (np.zeros(3), np.array([0]), fn.ShapeError, "logits must be 2-D"),
    ],
)
def test_cross_entropy_bad_input(logits, labels, err, match):
    with pytest.raises(err, match=match):
        fn.softmax_cross_entropy(logits, labels)


def test_probability_rows_within_the_tolerance_are_taken():
    logits = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    rows = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # (float32 sums: 1 to rounding)
    mixed = 0.3 * np.eye(10, dtype=np.float32)[[0, 1, 2, 3]] + 0.7 * np.eye(10, dtype=np.float32)[[4, 5, 6, 7]]
    for target in (rows, mixed, rows + 4e-4 / 10):
        loss, _ = fn.softmax_cross_entropy(logits, target, label_smoothing=0.1)
        assert np.isfinite(loss)


def test_mse_bad_input():
    with pytest.raises(fn.ShapeError, match="does not match"):
        fn.mse(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(fn.InvalidValueError, match="predictions contain NaN"):
        fn.mse(np.array([np.nan]), np.array([0.0]))
    with pytest.raises(fn.InvalidValueError, match="targets contain NaN"):
        fn.mse(np.array([0.0]), np.array([np.nan]))


def test_label_smoothing_is_cross_entropy_against_the_smoothed_target():
    rng = np.random.default_rng(3)
    logits, ids = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    target = _onehot(ids, 4) * 0.8 + 0.2 / 4
    want_loss, want_grad = fn.softmax_cross_entropy(logits, target)
    got_loss, got_grad = fn.softmax_cross_entropy(logits, ids, label_smoothing=0.2)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-12)
    plain = fn.softmax_cross_entropy(logits, ids)
    assert fn.softmax_cross_entropy(logits, ids, label_smoothing=0.0)[0] == plain[0]
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(fn.InvalidValueError, match="label_smoothing must be in"):
            fn.softmax_cross_entropy(logits, ids, label_smoothing=bad)
    with pytest.raises(fn.InvalidValueError, match="class ids"):
        fn.softmax_cross_entropy(logits, ids + 4, label_smoothing=0.1)
