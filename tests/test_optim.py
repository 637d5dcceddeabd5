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


def ref_adamw(lr, wd=0.01, b1=0.9, b2=0.999, eps=1e-8):
    """Loshchilov & Hutter (2019), Algorithm 2 with the schedule multiplier fixed to 1."""

    def run(w, grads):
        m, v, out = np.zeros_like(w), np.zeros_like(w), []
        for t, g in enumerate(grads, start=1):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            w = w - lr * ((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * w)
            out.append(w)
        return out

    return run


def ref_rmsprop(lr, decay=0.9, eps=1e-8, momentum=0.0):
    def run(w, grads):
        nu, mom, out = np.zeros_like(w), np.zeros_like(w), []
        for g in grads:
            nu = decay * nu + (1 - decay) * g**2
            mom = g / (np.sqrt(nu) + eps) + momentum * mom
            w = w - lr * mom
            out.append(w)
        return out

    return run


def ref_adagrad(lr, init=0.1, eps=1e-7):
    def run(w, grads):
        acc, out = np.full_like(w, init), []
        for g in grads:
            acc = acc + g**2
            w = w - lr * g / (np.sqrt(acc) + eps)
            out.append(w)
        return out

    return run


# (id, transform, reference, learning rate for the quadratic, for Rosenbrock)
OPTIMIZERS = [
    ("sgd", lambda lr: optim.sgd(lr), ref_sgd, 0.05, 2e-3),
    ("sgd_momentum", lambda lr: optim.sgd(lr, momentum=0.9), lambda lr: ref_sgd(lr, 0.9), 0.01, 5e-4),
    ("sgd_nesterov", lambda lr: optim.sgd(lr, 0.9, nesterov=True), lambda lr: ref_sgd(lr, 0.9, True), 0.01, 5e-4),
    (
        "sgd_inverse_time",
        lambda lr: optim.sgd(optim.inverse_time_decay(lr, 1e-4)),
        lambda lr: ref_sgd(lambda t: lr / (1 + 1e-4 * t)),
        0.09,
        2e-3,
    ),
    ("keras_sgd", lambda lr: optim.keras_sgd(lr, 0.9, 1e-3), lambda lr: ref_keras(lr, 0.9, 1e-3), 0.01, 5e-4),
    ("adam", lambda lr: optim.adam(lr), ref_adam, 0.05, 0.02),
    ("adamw", lambda lr: optim.adamw(lr, weight_decay=0.01), ref_adamw, 0.05, 0.02),
    ("rmsprop", lambda lr: optim.rmsprop(lr), ref_rmsprop, 0.01, 1e-3),
    ("rmsprop_momentum", lambda lr: optim.rmsprop(lr, momentum=0.9), lambda lr: ref_rmsprop(lr, momentum=0.9),
     0.002, 3e-4),
    ("adagrad", lambda lr: optim.adagrad(lr), ref_adagrad, 0.5, 0.5),
    ("adam_tracking_ema", lambda lr: optim.chain(optim.adam(lr), optim.track_ema(0.9)), ref_adam, 0.05, 0.02),
]
IDS = [o[0] for o in OPTIMIZERS]


def _run(opt, params, grads):
    state, out = opt.init(params), []
    for g in grads:
        updates, state = opt.update({"w": g}, state, params)
        params = optim.apply_updates(params, updates)
        out.append(params["w"])
    return out, state


@pytest.mark.parametrize("name,make,ref,lr,rosen_lr", OPTIMIZERS, ids=IDS)
def test_matches_the_published_update_rule(name, make, ref, lr, rosen_lr):
    got, _ = _run(make(0.1), fn.freeze({"w": W0}), GRADS)
    want = ref(0.1)(W0, GRADS)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name,make,ref,lr,rosen_lr", OPTIMIZERS, ids=IDS)
def test_reduces_a_quadratic(name, make, ref, lr, rosen_lr):
    a, c = np.array([1.0, 10.0]), np.array([3.0, -2.0])
    f = lambda w: 0.5 * np.sum(a * (w - c) ** 2)  # noqa: E731
    opt, params = make(lr), fn.freeze({"w": np.zeros(2)})
    state = opt.init(params)
    for _ in range(400):
        updates, state = opt.update({"w": a * (params["w"] - c)}, state, params)
        params = optim.apply_updates(params, updates)
    assert f(params["w"]) < 1e-4 * f(np.zeros(2))


@pytest.mark.parametrize("name,make,ref,lr,rosen_lr", OPTIMIZERS, ids=IDS)
def test_minimises_rosenbrock(name, make, ref, lr, rosen_lr):
    """f(x, y) = (1 - x)^2 + 100 (y - x^2)^2 from (-1.2, 1): 5000 steps reach f < 0.03."""

    def grad(w):
        x, y = w
        return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])

    opt, params = make(rosen_lr), fn.freeze({"w": np.array([-1.2, 1.0])})
    state = opt.init(params)
    for _ in range(5000):
        updates, state = opt.update({"w": grad(params["w"])}, state, params)
        params = optim.apply_updates(params, updates)
    x, y = params["w"]
    assert (1 - x) ** 2 + 100 * (y - x * x) ** 2 < 0.03


@pytest.mark.parametrize("name,make,ref,lr,rosen_lr", OPTIMIZERS, ids=IDS)
def test_pure_dtype_preserving_and_read_only(name, make, ref, lr, rosen_lr):
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


TREE = {"conv": {"w": np.arange(12.0).reshape(2, 2, 3) / 7, "b": np.array([0.5, -1.0])}, "dense": {"w": W0}}


def _steps(opt, params, grads_of, steps=4):
    """``steps`` updates; ``grads_of(i, params)`` makes the gradient tree of step ``i``."""
    state, seen = opt.init(params), []
    for i in range(steps):
        updates, state = opt.update(grads_of(i, params), state, params)
        params = optim.apply_updates(params, updates)
        seen.append((params, state))
    return seen


@pytest.mark.parametrize("name,make,ref,lr,rosen_lr", OPTIMIZERS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_vector_or_leaf_by_leaf_the_same_bits(name, make, ref, lr, rosen_lr, dtype):
    """The lifted rules run once over the vector that a step's gradients view, on a packed
    copy of a plain tree, or leaf by leaf (a tree of two dtypes): one set of bits."""
    params = fn.freeze(fn.tree_map(lambda a: a.astype(dtype), TREE))
    layout = fn.flat.Layout.of(params)
    g = [np.random.default_rng(i).standard_normal(layout.size).astype(dtype) for i in range(4)]
    on_views = _steps(make(0.1), params, lambda i, p: layout.views(g[i].copy()))
    on_trees = _steps(make(0.1), params, lambda i, p: fn.tree_map(np.copy, layout.views(g[i])))
    for (pa, sa), (pb, sb) in zip(on_views, on_trees):
        assert fn.checkpoint.digest((pa, sa)) == fn.checkpoint.digest((pb, sb))
        assert fn.flat.flat_of(pa) is not None  # (what it returns views one vector: the next step packs nothing)
    # leaf by leaf: a tree of two dtypes cannot be one vector; each leaf gets the rule alone
    mixed = fn.freeze({"a": params["dense"]["w"], "b": np.array([1.0, -2.0], np.float16)})
    grads = [{"a": g[i][:3].copy(), "b": np.array([0.25, 0.5], np.float16)} for i in range(4)]
    alone = _steps(make(0.1), fn.freeze({"a": params["dense"]["w"]}), lambda i, p: {"a": grads[i]["a"]})
    both = _steps(make(0.1), mixed, lambda i, p: grads[i])
    for (pa, _), (pb, _) in zip(alone, both):
        assert pa["a"].tobytes() == pb["a"].tobytes() and pb["b"].dtype == np.float16


def test_elementwise_lifts_a_rule_with_its_state():
    """A rule of one's own: a scalar advanced once a step, a slot per param."""

    def advance(state):
        t = int(state["count"]) + 1
        return 0.5**t, {"count": np.array(t)}

    opt = optim.elementwise(lambda half, u, acc: (u * half, (acc + u,)), {"acc": np.zeros_like},
                            scalars=lambda: {"count": np.array(0)}, advance=advance)
    params = fn.freeze({"w": np.ones(2), "b": np.ones(1)})
    state = opt.init(params)
    assert list(state) == ["count", "acc"] and fn.tree_structure(state["acc"]) == fn.tree_structure(params)
    for _ in range(2):
        updates, state = opt.update(fn.freeze({"w": np.array([2.0, 4.0]), "b": np.array([8.0])}), state)
    assert updates["w"].tolist() == [0.5, 1.0] and state["acc"]["b"].tolist() == [16.0]
    assert int(state["count"]) == 2 and not state["acc"]["w"].flags.writeable
    needs = optim.elementwise(lambda ctx, u, p: (u + p, ()), needs_params="mine")
    with pytest.raises(fn.InvalidValueError, match="mine needs params: call update"):
        needs.update(params, needs.init(params))


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
    # on views of one vector (a step's gradients) the chain runs on that vector and returns views
    layout = fn.flat.Layout.of(fn.freeze({"w": np.zeros(3), "b": np.zeros(2)}))
    grads = layout.views(np.arange(5.0))
    updates, _ = opt.update(grads, opt.init(grads))
    assert fn.flat.flat_of(updates)[0].tolist() == [-0.0, -1.0, -2.0, -3.0, -4.0]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: optim.sgd(-0.1), "learning_rate must be a finite number >= 0, got -0.1"),
        (lambda: optim.sgd(0.1, momentum=1.5), r"momentum must be a finite number in \[0, 1\], got 1.5"),
        (lambda: optim.sgd(0.1, nesterov=True), "nesterov=True needs momentum > 0"),
        (lambda: optim.adam(0.1, b1=1.0), r"b1 must be a finite number in \[0, 1\), got 1.0"),
        (lambda: optim.inverse_time_decay(0.1, -1), "decay must be a finite number >= 0, got -1"),
        (lambda: optim.clip_by_global_norm(0), "max_norm must be a finite number > 0, got 0"),
        (lambda: optim.add_decayed_weights(-1), "weight_decay must be a finite number >= 0, got -1"),
        (lambda: optim.piecewise_constant([2, 1], [1, 2, 3]), "sorted boundaries"),
        (lambda: optim.cosine_decay(1.0, 0), "decay_steps must be an int >= 1, got 0"),
        (lambda: optim.rmsprop(0.1, decay=1.0), r"decay must be a finite number in \[0, 1\), got 1.0"),
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


def test_clip_by_global_norm_by_hand():
    opt = optim.clip_by_global_norm(1.0)
    grads = {"a": np.array([3.0]), "b": np.array([4.0])}  # global norm 5
    out, _ = opt.update(grads, opt.init(grads))
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [0.6, 0.8], rtol=1e-15)
    small = {"a": np.array([0.3]), "b": np.array([0.4])}
    assert opt.update(small, opt.init(small))[0] is small


def test_weight_decay_masked_to_skip_biases():
    params = fn.freeze({"w": np.ones((2, 2)), "b": np.ones(2)})
    opt = optim.chain(
        optim.add_decayed_weights(0.5, mask=lambda p: fn.tree_map(lambda a: a.ndim > 1, p)),
        optim.scale_by_learning_rate(1.0),
    )
    zeros = fn.tree_map(np.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    np.testing.assert_array_equal(updates["w"], -0.5 * np.ones((2, 2)))
    np.testing.assert_array_equal(updates["b"], np.zeros(2))


def test_frozen_params_get_no_update_and_keep_no_momentum():
    params = fn.freeze({"frozen": np.ones(2), "free": np.ones(2)})
    frozen = {"frozen": True, "free": False}
    opt = optim.chain(optim.masked(optim.set_to_zero(), frozen), optim.sgd(0.1, momentum=0.9))
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update(fn.tree_map(np.ones_like, params), state, params)
        params = optim.apply_updates(params, updates)
    np.testing.assert_array_equal(params["frozen"], np.ones(2))
    assert (params["free"] < 1).all()


def test_masked_inner_state_covers_only_selected_leaves():
    params = fn.freeze({"a": np.zeros(3), "b": np.zeros(5)})
    opt = optim.masked(optim.adam(0.1), {"a": False, "b": True})
    state = opt.init(params)
    assert [leaf.shape for leaf in fn.tree_leaves(state["inner"][0]["mu"])] == [(5,)]
    with pytest.raises(fn.TreeMismatchError, match="keys"):
        optim.masked(optim.sgd(0.1), {"a": True}).init(params)


@pytest.mark.parametrize(
    "schedule,want",
    [
        (optim.constant(0.3), [0.3, 0.3, 0.3]),
        (optim.inverse_time_decay(1.0, 0.5), [1.0, 1 / 1.5, 0.5]),
        (optim.exponential_decay(1.0, 0.5, 2), [1.0, 0.5**0.5, 0.5]),
        (optim.exponential_decay(1.0, 0.5, 2, staircase=True), [1.0, 1.0, 0.5]),
        (optim.piecewise_constant([1, 2], [3.0, 2.0, 1.0]), [3.0, 2.0, 1.0]),
        (optim.cosine_decay(1.0, 2), [1.0, 0.5, 0.0]),
        (optim.cosine_decay(1.0, 2, alpha=0.1, warmup_steps=2), [0.0, 0.5, 1.0]),
    ],
)
def test_schedules(schedule, want):
    np.testing.assert_allclose([schedule(t) for t in range(3)], want, rtol=1e-12, atol=1e-15)


def test_cosine_decay_ends_at_alpha_and_stays():
    s = optim.cosine_decay(2.0, 10, alpha=0.1, warmup_steps=5)
    assert s(15) == pytest.approx(0.2) and s(100) == pytest.approx(0.2) and s(10) == pytest.approx(1.1)


def test_scale_by_schedule_counts_steps():
    opt = optim.scale_by_schedule(lambda t: t + 1.0)
    state = opt.init({"w": np.zeros(1)})
    outs = []
    for _ in range(3):
        u, state = opt.update({"w": np.ones(1)}, state)
        outs.append(float(u["w"][0]))
    assert outs == [1.0, 2.0, 3.0]


def test_track_ema_keeps_the_moving_average_of_the_params():
    opt = optim.chain(optim.adam(0.1), optim.track_ema(0.8))
    params = fn.freeze({"w": W0})
    assert optim.params_ema(optim.adam(0.1).init(params)) is None
    got, state = _run(opt, params, GRADS)
    ema = W0.copy()
    for t, w in enumerate(got):
        d = min(0.8, (1 + t) / (10 + t))  # the warm-up: 0.1, 0.18, 0.25, ... then 0.8
        ema = d * ema + (1 - d) * w
    np.testing.assert_allclose(optim.params_ema(state)["w"], ema, rtol=1e-14)
    with pytest.raises(fn.InvalidValueError, match="track_ema: decay must be a finite number in"):
        optim.track_ema(1.0)


def test_track_ema_under_jit_gives_the_plain_steps_bits():
    model = fn.serial(fn.flatten(), fn.dense(8), fn.relu(), fn.dense(3))
    params, _ = model.init(fn.random.key(0), (2, 3))
    opt = optim.chain(optim.sgd(0.1, momentum=0.9), optim.track_ema(0.99))
    step = fn.train_step(model, fn.softmax_cross_entropy, opt)
    a = b = fn.TrainState.create(params, opt)
    jstep, rng = fn.jit(step), np.random.default_rng(0)
    for _ in range(4):
        batch = (rng.random((5, 2, 3), dtype=np.float32), rng.integers(0, 3, 5))
        a, _ = step(a, batch)
        b, _ = jstep(b, batch)
    assert fn.checkpoint.digest(optim.params_ema(a.opt_state)) == fn.checkpoint.digest(optim.params_ema(b.opt_state))
    assert fn.checkpoint.digest(optim.params_ema(a.opt_state)) != fn.checkpoint.digest(a.params)
