"""Every optimizer: hand-computed steps, the same checks on a quadratic, state contracts."""

from __future__ import annotations

import numpy as np
import pytest

import fnnet as fn
from fnnet import optim

GRADS = [np.array([0.5, -1.0, 2.0]), np.array([0.1, 0.3, -0.2]), np.array([-0.4, 0.0, 1.0])]
W0 = np.array([1.0, 2.0, -3.0])


def ref_sgd(lr, momentum=0.0, nesterov=False):
    def run(w, grads):
        m = np.zeros_like(w)
        out = []
        for t, g in enumerate(grads):
            rate = lr(t) if callable(lr) else lr
            m = g + momentum * m
            w = w - rate * ((g + momentum * m) if nesterov else m)
            out.append(w)
        return out

    return run


def ref_keras(lr0, momentum, decay):
    def run(w, grads):
        v = np.zeros_like(w)
        out = []
        for t, g in enumerate(grads):
            v = momentum * v + lr0 / (1 + decay * t) * g
            w = w - v
            out.append(w)
        return out

    return run


def ref_adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    """Kingma & Ba (2015), Algorithm 1."""

    def run(w, grads):
        m, v, out = np.zeros_like(w), np.zeros_like(w), []
        for t, g in enumerate(grads, start=1):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            out.append(w)
        return out

    return run


# (id, transform, reference, learning rate that solves the quadratic below)
OPTIMIZERS = [
    ("sgd", lambda lr: optim.sgd(lr), ref_sgd, 0.05),
    ("sgd_momentum", lambda lr: optim.sgd(lr, momentum=0.9), lambda lr: ref_sgd(lr, 0.9), 0.01),
    ("sgd_nesterov", lambda lr: optim.sgd(lr, 0.9, nesterov=True), lambda lr: ref_sgd(lr, 0.9, True), 0.01),
    (
        "sgd_inverse_time",
        lambda lr: optim.sgd(optim.inverse_time_decay(lr, 0.01)),
        lambda lr: ref_sgd(lambda t: lr / (1 + 0.01 * t)),
        0.09,
    ),
    ("keras_sgd", lambda lr: optim.keras_sgd(lr, 0.9, 1e-3), lambda lr: ref_keras(lr, 0.9, 1e-3), 0.01),
    ("adam", lambda lr: optim.adam(lr), ref_adam, 0.05),
]
IDS = [o[0] for o in OPTIMIZERS]


def _run(opt, params, grads):
    state, out = opt.init(params), []
    for g in grads:
        updates, state = opt.update({"w": g}, state, params)
        params = optim.apply_updates(params, updates)
        out.append(params["w"])
    return out, state


@pytest.mark.parametrize("name,make,ref,lr", OPTIMIZERS, ids=IDS)
def test_matches_the_published_update_rule(name, make, ref, lr):
    got, _ = _run(make(0.1), fn.freeze({"w": W0}), GRADS)
    want = ref(0.1)(W0, GRADS)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name,make,ref,lr", OPTIMIZERS, ids=IDS)
def test_reduces_a_quadratic(name, make, ref, lr):
    a, c = np.array([1.0, 10.0]), np.array([3.0, -2.0])
    f = lambda w: 0.5 * np.sum(a * (w - c) ** 2)  # noqa: E731
    opt, params = make(lr), fn.freeze({"w": np.zeros(2)})
    state = opt.init(params)
    for _ in range(400):
        updates, state = opt.update({"w": a * (params["w"] - c)}, state, params)
        params = optim.apply_updates(params, updates)
    assert f(params["w"]) < 1e-4 * f(np.zeros(2))


@pytest.mark.parametrize("name,make,ref,lr", OPTIMIZERS, ids=IDS)
def test_pure_dtype_preserving_and_read_only(name, make, ref, lr):
    params = fn.freeze({"w": W0.astype(np.float32)})
    opt = make(0.1)
    state = opt.init(params)
    before = [leaf.copy() for leaf in fn.tree_leaves(state)]
    grads = {"w": GRADS[0].astype(np.float32)}
    updates, new_state = opt.update(grads, state, params)
    for x, y in zip(fn.tree_leaves(state), before):
        np.testing.assert_array_equal(x, y)
    new = optim.apply_updates(params, updates)
    assert new["w"].dtype == np.float32 and not new["w"].flags.writeable
    assert fn.tree_structure(new_state) == fn.tree_structure(state)


def test_keras_sgd_by_hand():
    """lr_t = 0.1/(1+t), v = 0.9 v + lr_t g, w = w - v, with g = 0.5 throughout."""
    opt = optim.keras_sgd(0.1, momentum=0.9, decay=1.0)
    got, state = _run(opt, fn.freeze({"w": np.array([1.0])}), [np.array([0.5])] * 3)
    np.testing.assert_allclose([w[0] for w in got], [0.95, 0.88, 0.88 - (0.063 + 0.5 / 30)], rtol=1e-14)
    assert float(state["learning_rate"]) == pytest.approx(0.1 / 3)
    assert int(state["count"]) == 3


def test_adam_first_step_is_lr_times_sign():
    got, _ = _run(optim.adam(0.01), fn.freeze({"w": W0}), [GRADS[0]])
    np.testing.assert_allclose(got[0], W0 - 0.01 * np.sign(GRADS[0]), rtol=1e-7)


def test_learning_rate_is_visible_in_the_state():
    opt = optim.sgd(optim.inverse_time_decay(1.0, 1.0))
    _, state = _run(opt, fn.freeze({"w": W0}), GRADS[:2])
    assert float(state["learning_rate"]) == 0.5 and int(state["count"]) == 2


def test_chain_composes_in_order():
    opt = optim.chain(optim.scale(2.0), optim.scale_by_learning_rate(0.5))
    updates, _ = opt.update({"w": np.array([1.0])}, opt.init({"w": np.zeros(1)}))
    np.testing.assert_array_equal(updates["w"], [-1.0])
    assert opt.elementwise


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: optim.sgd(-0.1), "learning_rate must be a finite float >= 0"),
        (lambda: optim.sgd(0.1, momentum=1.5), r"momentum must be in \[0, 1\]"),
        (lambda: optim.sgd(0.1, nesterov=True), "nesterov=True needs momentum > 0"),
        (lambda: optim.adam(0.1, b1=1.0), r"b1 must be in \[0, 1\)"),
        (lambda: optim.inverse_time_decay(0.1, -1), "decay must be >= 0"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mismatched_grads_name_the_path():
    opt = optim.sgd(0.1, momentum=0.5)
    state = opt.init({"w": np.zeros(2), "b": np.zeros(1)})
    with pytest.raises(fn.TreeMismatchError, match="keys"):
        opt.update({"w": np.zeros(2)}, state)
