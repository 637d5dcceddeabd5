"""train_step is pure; jit(step) gives the same bits, re-specialises, and checks once."""

from __future__ import annotations

import threading

import attrs
import numpy as np
import pytest
from conftest import pipeline_module

import fnnet as fn
from fnnet import optim


def seed_net():
    return fn.serial(fn.conv2d(1, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(16), fn.relu(), fn.dense(10))


def lenet():
    return fn.serial(
        fn.conv2d(4, 3, padding="same"), fn.relu(), fn.max_pool2d(2), fn.conv2d(6, 3, stride=2), fn.tanh(),
        fn.flatten(), fn.dense(10),
    )


def bn_net():
    return fn.serial(fn.conv2d(4, 3), fn.batch_norm(), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(10))


def res_net():
    block = fn.serial(fn.conv2d(4, 3, padding="same"), fn.relu())
    return fn.serial(fn.conv2d(4, 3, padding="same"), fn.residual(block), fn.dropout(0.5), fn.flatten(), fn.dense(10))


OPTIMIZERS = {
    "keras_sgd": lambda: optim.keras_sgd(0.01, 0.9, 1e-6),
    "sgd_nesterov": lambda: optim.sgd(0.05, 0.9, nesterov=True),
    "adam": lambda: optim.adam(1e-3),
}


def batch(rng, n, dtype=np.float32, shape=(1, 12, 12)):
    return rng.random((n, *shape)).astype(dtype), rng.integers(0, 10, n)


def leaves(state):
    return fn.tree_leaves((state.params, state.opt_state, state.model_state))


def assert_same_bits(a, b):
    assert a.step == b.step
    assert fn.tree_structure((a.params, a.opt_state)) == fn.tree_structure((b.params, b.opt_state))
    for x, y in zip(leaves(a), leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def make(model_fn=seed_net, opt="keras_sgd", dtype=np.float32, shape=(1, 12, 12)):
    model, optimizer = model_fn(), OPTIMIZERS[opt]()
    params, _ = model.init(fn.random.key(0), shape, dtype=dtype)
    return fn.train_step(model, fn.softmax_cross_entropy, optimizer), fn.TrainState.create(params, optimizer)


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("model_fn", [seed_net, lenet])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_jit_is_bit_identical_over_steps_and_shapes(opt, model_fn, dtype):
    step, state = make(model_fn, opt, dtype)
    jstep = fn.jit(step)
    rng = np.random.default_rng(0)
    a = b = state
    for n in (4, 4, 4, 3, 4, 1):  # a short batch re-specialises; the old shape comes back
        data = batch(rng, n, dtype)
        a, ma = step(a, data)
        b, mb = jstep(b, data)
        assert ma == mb
        assert_same_bits(a, b)
    assert len(next(iter(jstep._plans.values()))) == 3


def test_jit_accepts_a_state_it_did_not_make():
    step, state = make()
    jstep = fn.jit(step)
    rng = np.random.default_rng(1)
    d1, d2 = batch(rng, 4), batch(rng, 4)
    plain, _ = step(state, d1)
    j, _ = jstep(state, d1)
    # feed the plain state into the jitted step and vice versa
    a, _ = jstep(plain, d2)
    b, _ = step(j, d2)
    assert_same_bits(a, b)


def test_step_and_jit_never_change_their_inputs():
    step, state = make(opt="adam")
    rng = np.random.default_rng(2)
    x, y = batch(rng, 4)
    x0, y0, before = x.copy(), y.copy(), [leaf.copy() for leaf in leaves(state)]
    for f in (step, fn.jit(step)):
        s, _ = f(state, (x, y))
        s2, _ = f(s, (x, y))  # a held state is not overwritten by the next step
        s3, _ = f(s2, (x, y))
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)
        for leaf, old in zip(leaves(state), before):
            np.testing.assert_array_equal(leaf, old)
        assert not any(np.shares_memory(u, v) for u in leaves(s) for v in leaves(s3))
        for leaf in leaves(s3):
            assert not leaf.flags.writeable
        assert s3.step == 3 and state.step == 0


def test_jit_with_an_optimizer_that_rebuilds_the_tree():
    base = optim.sgd(0.1)  # (a tree it did not get from the step: packed, leaf for leaf the same bits)
    opaque = optim.GradientTransformation(base.init, lambda u, s, p=None: base.update(fn.tree_map(np.copy, u), s, p))
    model = seed_net()
    params, _ = model.init(fn.random.key(3), (1, 12, 12))
    step = fn.train_step(model, fn.softmax_cross_entropy, opaque)
    a = b = fn.TrainState.create(params, opaque)
    rng = np.random.default_rng(3)
    for _ in range(3):
        data = batch(rng, 2)
        a, _ = step(a, data)
        b, _ = fn.jit(step)(b, data)
    assert_same_bits(a, b)


def test_training_reduces_the_loss():
    model, opt = seed_net(), optim.adam(0.01)
    params, _ = model.init(fn.random.key(0), (1, 12, 12))
    jstep = fn.jit(fn.train_step(model, fn.softmax_cross_entropy, opt))
    state = fn.TrainState.create(params, opt)
    rng = np.random.default_rng(4)
    x, y = batch(rng, 16)
    first = None
    for _ in range(60):
        state, m = jstep(state, (x, y))
        first = first if first is not None else m["loss"]
    assert m["loss"] < 0.5 * first and m["accuracy"] > 0.5


@pytest.mark.parametrize("use_jit", [False, True])
def test_bad_batches_are_clear_errors(use_jit):
    step, state = make()
    f = fn.jit(step) if use_jit else step
    rng = np.random.default_rng(5)
    with pytest.raises(fn.ShapeError, match=r"conv2d_0: conv2d: expected input of shape \(N, 1, H, W\)"):
        f(state, batch(rng, 2, shape=(3, 12, 12)))
    with pytest.raises(fn.ShapeError, match=r"dense_4: dense: expected input of shape \(N, 25\), got \(N, 36\)"):
        f(state, batch(rng, 2, shape=(1, 14, 14)))
    with pytest.raises(fn.DTypeError, match="conv2d_0: conv2d: input dtype float64 does not match"):
        f(state, batch(rng, 2, dtype=np.float64))
    x, _ = batch(rng, 2)
    with pytest.raises(fn.ShapeError, match="2 inputs but labels of shape"):
        f(state, (x, np.array([1, 2, 3])))
    with pytest.raises(fn.InvalidValueError, match="step 0: the inputs contain NaN or inf"):
        f(state, (np.full_like(x, np.nan), np.array([1, 2])))
    with pytest.raises(TypeError, match="batch must be a pair"):
        f(state, x)
    with pytest.raises(TypeError, match="state must be a TrainState"):
        f(state.params, (x, np.array([1, 2])))


def test_jit_after_an_error_goes_on_with_the_same_bits():
    step, state = make(opt="adam")
    jstep = fn.jit(step)
    rng = np.random.default_rng(8)
    a, _ = step(state, batch(rng, 4))
    b, _ = jstep(state, batch(np.random.default_rng(8), 4))
    x, y = batch(rng, 4)
    with pytest.raises(fn.InvalidValueError):  # fails after the forward pass ran in jit's buffers
        jstep(b, (np.where(x > 0.5, np.nan, x).astype(np.float32), y))
    for _ in range(2):
        data = batch(rng, 4)
        a, ma = step(a, data)
        b, mb = jstep(b, data)
        assert ma == mb
        assert_same_bits(a, b)
    assert type(mb["loss"]) is float and type(mb["accuracy"]) is float


@pytest.mark.parametrize("use_jit", [False, True])
def test_params_of_another_model_are_refused_naming_the_layer(use_jit):
    step, state = make()
    f = fn.jit(step) if use_jit else step
    rng = np.random.default_rng(6)
    f(state, batch(rng, 2))  # jit: a plan exists for this signature
    model = fn.serial(fn.conv2d(2, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(16), fn.relu(), fn.dense(10))
    other, _ = model.init(fn.random.key(0), (1, 12, 12))
    want = r"^conv2d_0: conv2d: params 'w' has shape \(2, 1, 3, 3\), expected \(1, \?, 3, 3\)"
    with pytest.raises(fn.ShapeError, match=want):
        f(fn.TrainState.create(other, step.optimizer), batch(rng, 2))


# -- jit checks what the step checks: the repros of the protocol issue -------------------------


def _both(step, state, data):
    """The error step and jit(step) raise for ``state`` (jit after a good step made its plan)."""
    errors = []
    for f in (step, fn.jit(step)):
        if isinstance(f, fn.JitStep):
            good = fn.TrainState.create(make()[1].params, step.optimizer)
            f(good, data)
        with pytest.raises(fn.FnnetError) as info:
            f(state, data)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1])
    return errors[0]


def test_extra_params_are_refused_by_both_paths():
    step, state = make()
    data = batch(np.random.default_rng(0), 4)
    p = dict(state.params)
    p["junk_9"] = {"w": np.zeros(4, np.float32)}
    err = _both(step, attrs.evolve(state, params=fn.freeze(p)), data)
    assert isinstance(err, fn.TreeMismatchError) and "junk_9" in str(err) and "serial" in str(err)
    p = dict(state.params)
    p["dense_6"] = {**state.params["dense_6"], "junk": np.zeros(4, np.float32)}
    err = _both(step, attrs.evolve(state, params=fn.freeze(p)), data)
    assert isinstance(err, fn.TreeMismatchError) and str(err).startswith("dense_6: dense: params must hold exactly")


def test_a_leaf_of_another_shape_is_refused_by_both_paths_never_broadcast():
    step, state = make()
    p = dict(state.params)
    p["dense_6"] = {"w": state.params["dense_6"]["w"], "b": np.zeros(1, np.float32)}  # (1,) for (10,)
    err = _both(step, attrs.evolve(state, params=fn.freeze(p)), batch(np.random.default_rng(0), 4))
    assert isinstance(err, fn.ShapeError) and "dense_6: dense: params 'b' has shape (1,), expected (10,)" in str(err)


def _custom_scale(backward):
    """A per-feature scale layer with params {"s", "t"} and the given backward."""

    def init(key, input_shape, dtype):
        return {"s": np.ones(input_shape, dtype), "t": np.zeros(input_shape, dtype)}, input_shape

    def check(params, input_shape, dtype):
        fn.layers.check_params("scale", params, dtype, s=input_shape, t=input_shape)
        return input_shape

    def forward(params, x, buf):
        return x * params["s"] + params["t"], (x, params["s"], buf)

    return fn.Layer("scale", init, forward, backward, check, buffers=lambda params, sig: sig)


@pytest.mark.parametrize("how", ["missing", "unwritten"])
def test_a_backward_that_omits_a_gradient_is_an_error_naming_the_layer(how):
    def backward(cache, dy):
        x, s, sig = cache
        if how == "missing":  # a gradient tree without "t"
            return {"s": np.sum(dy * x, axis=0)}, dy * s
        np.sum(dy * x, axis=0, out=sig.grads["s"])  # "t" left as it was
        return sig.grads, dy * s

    model = fn.serial(fn.dense(4), _custom_scale(backward), fn.dense(10))
    params, _ = model.init(fn.random.key(0), (6,))
    opt = optim.sgd(0.1)
    step = fn.train_step(model, fn.softmax_cross_entropy, opt)
    state = fn.TrainState.create(params, opt)
    data = (np.ones((2, 6), np.float32), np.array([1, 2]))
    for f in (step, fn.jit(step)):
        with pytest.raises(fn.TreeMismatchError, match="scale_1") as info:
            f(state, data)
        assert "t" in str(info.value)


@pytest.mark.parametrize("rows", [None, 1])
def test_a_backward_that_writes_a_gradient_only_sometimes_is_an_error_on_that_step(rows):
    """jit keeps its buffers: a custom layer that fills "t" on the first call only must
    fail on the second, not apply the first step's gradient again (cut or whole batch)."""
    writes_t = [True]

    def backward(cache, dy):
        x, s, sig = cache
        np.sum(dy * x, axis=0, out=sig.grads["s"])
        if writes_t[0]:
            np.sum(dy, axis=0, out=sig.grads["t"])
        return sig.grads, dy * s

    model = fn.serial(fn.dense(4), _custom_scale(backward), fn.dense(10))
    params, _ = model.init(fn.random.key(0), (6,))
    opt = optim.sgd(0.1)
    step = fn.jit(fn.train_step(model, fn.softmax_cross_entropy, opt, rows_per_shard=rows))
    state = fn.TrainState.create(params, opt)
    data = (np.ones((2, 6), np.float32), np.array([1, 2]))
    state, _ = step(state, data)
    writes_t[0] = False  # (from now on the layer writes "t" no more)
    with pytest.raises(fn.TreeMismatchError, match="serial: backward left the gradient of scale_1/t"):
        step(state, data)


def test_fnnets_own_layers_are_not_watched():
    model = fn.serial(fn.conv2d(2, 3), fn.batch_norm(), fn.relu(), fn.flatten(), fn.dense(3))
    params, _ = model.init(fn.random.key(0), (1, 5, 5))
    watch: list = []
    fn.runner.prepare_checked(model, params, (2, 1, 5, 5), np.dtype(np.float32), train=True, need_dx=False,
                                     watch=watch)
    assert watch == []  # (their layer table tests that each backward writes every gradient)


def test_one_jit_step_serves_two_threads_with_the_bits_of_two_sequential_runs():
    """Each thread gets its own plans (the jit of d5cb906 shared its buffers: wrong params in 5 of 5 trials)."""
    step, state = make(lenet, "adam")
    jstep = fn.jit(step)
    datas = [[batch(np.random.default_rng(seed * 100 + i), 8) for i in range(30)] for seed in (1, 2)]

    start = threading.Barrier(2)

    def train(f, data, wait=lambda: None):
        wait()  # both threads step at once (numpy and the kernels release the GIL)
        s = state
        for d in data:
            s, _ = f(s, d)
        return s

    want = [train(step, d) for d in datas]
    got: list = [None, None]
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, train(jstep, datas[i], start.wait)))
               for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(want, got):
        assert_same_bits(a, b)


def test_jit_needs_a_train_step():
    with pytest.raises(TypeError, match="expected a step made by train_step"):
        fn.jit(lambda s, b: (s, {}))


def test_train_state_validates_step():
    with pytest.raises(ValueError, match="TrainState.step must be an int >= 0"):
        fn.TrainState({}, (), -1)


def _keeps_grads_on_the_tree():
    def init(params):
        return {"last": fn.tree_map(np.zeros_like, params)}

    def update(grads, state, params=None):
        out = fn.tree_map(lambda g, last: -0.1 * (g + 0.5 * last), grads, state["last"])
        return out, {"last": grads}  # the arrays themselves, not copies

    return optim.GradientTransformation(init, update)


def _keeps_grads_by_rule():
    return optim.elementwise(lambda ctx, g, last: (-0.1 * (g + 0.5 * last), (g,)), {"last": np.zeros_like})


@pytest.mark.parametrize("make", [_keeps_grads_on_the_tree, _keeps_grads_by_rule])
def test_an_optimizer_that_keeps_the_gradient_array_in_its_state(make):
    """A transform may return the gradient it was given as its state: the state must not
    alias the gradient buffer that the next backward pass overwrites."""
    opt = make()
    model = seed_net()
    params, _ = model.init(fn.random.key(0), (1, 12, 12))
    step = fn.train_step(model, fn.softmax_cross_entropy, opt)
    a = b = fn.TrainState.create(params, opt)
    jstep, rng = fn.jit(step), np.random.default_rng(9)
    for _ in range(4):
        data = batch(rng, 4)
        a, _ = step(a, data)
        held = [leaf.copy() for leaf in leaves(b)]
        previous, (b, _) = b, jstep(b, data)
        for leaf, copy in zip(leaves(previous), held):  # a state you hold is never overwritten
            assert leaf.tobytes() == copy.tobytes()
        assert_same_bits(a, b)


# -- shards: a batch cut into parts, their gradients summed in order ---------------------------


def dropout_net():
    return fn.serial(fn.conv2d(3, 3), fn.relu(), fn.flatten(), fn.dropout(0.3), fn.dense(10))


SHARDED = {  # (model, optimizer, dtype, step keyword arguments)
    "seed_net-adam": (seed_net, "adam", np.float32, {}),
    "lenet-keras_sgd-float64": (lenet, "keras_sgd", np.float64, {}),
    "lenet-clip (a tree)": (lenet, "clip", np.float32, {}),
    "dropout (a key a shard)": (dropout_net, "adam", np.float32, {"key": fn.random.key(5)}),
    "the pipeline's resnet (batch norm, residual sums)": (lambda: pipeline_module("models").model_of("resnet"), "adam",
                                                          np.float32, {}),
}


def _sharded(name, shards):
    model_fn, opt, dtype, kw = SHARDED[name]
    model = model_fn()
    optimizer = (optim.chain(optim.clip_by_global_norm(0.1), optim.sgd(0.05)) if opt == "clip"
                 else OPTIMIZERS[opt]())
    params, _ = model.init(fn.random.key(0), (1, 12, 12), dtype=dtype)
    step = fn.train_step(model, fn.softmax_cross_entropy, optimizer, rows_per_shard=shards, **kw)
    return step, fn.TrainState.create(params, optimizer, model), dtype


@pytest.mark.parametrize("name", SHARDED)
def test_a_cut_batch_gives_the_same_bits_on_any_number_of_threads(name):
    step, state, dtype = _sharded(name, shards=3)
    runs = {"step": step, **{f"jit, {t} threads": fn.jit(step, threads=t) for t in (1, 2, 3)}}
    results = {}
    for label, f in runs.items():
        s, rng, ms = state, np.random.default_rng(0), []
        for n in (10, 10, 7, 10, 2):  # 4, 4, 3, 4 and 1 shards (shards of 3, 3, 2, 2 rows; ...)
            s, m = f(s, batch(rng, n, dtype))
            ms.append(m)
        results[label] = (s, ms)
    want, want_metrics = results.pop("step")
    for label, (got, metrics) in results.items():
        assert_same_bits(want, got)
        assert metrics == want_metrics, label


@pytest.mark.parametrize("rows", [1, 3, 4, 9])
def test_a_cut_batch_has_the_gradient_and_metrics_of_the_whole_batch(rows):
    """float64: the cut changes only the order of the sums (shards of 9 leave the batch whole)."""
    model = lenet()
    params, _ = model.init(fn.random.key(1), (1, 12, 12), dtype=np.float64)
    x, y = batch(np.random.default_rng(3), 9, np.float64)
    got = {}
    for shards in (rows, None):
        seen = []
        capture = optim.GradientTransformation(
            lambda p: {}, lambda u, s, p=None: (seen.append(fn.flat.Layout.of(u).pack(u)), (u, s))[1])
        _, metrics = fn.train_step(model, fn.softmax_cross_entropy, capture, rows_per_shard=shards)(
            fn.TrainState.create(params, capture), (x, y))
        got[shards] = (seen[0], metrics)
    (g_cut, m_cut), (g_whole, m_whole) = got[rows], got[None]
    np.testing.assert_allclose(g_cut, g_whole, rtol=1e-12, atol=1e-15)
    assert m_cut["loss"] == pytest.approx(m_whole["loss"], rel=1e-13)
    assert m_cut["accuracy"] == pytest.approx(m_whole["accuracy"], abs=1e-12)
    # and the whole batch's gradient is the mean loss's (central differences of a few params)
    flat = fn.flat.Layout.of(params)

    def loss_at(vec):
        logits, _ = model.forward(flat.views(vec), x)
        return fn.softmax_cross_entropy(logits, y)[0]

    p0 = flat.pack(params)
    for i in np.random.default_rng(0).choice(p0.size, 12, replace=False):
        e = np.zeros_like(p0)
        e[i] = 1e-6
        assert g_cut[i] == pytest.approx((loss_at(p0 + e) - loss_at(p0 - e)) / 2e-6, rel=1e-5, abs=1e-8)


def test_the_cut_is_a_function_of_the_signature():
    step, state, _ = _sharded("seed_net-adam", shards=4)
    assert step.cut(state.params, (10, 1, 12, 12), np.dtype(np.float32)) == (4, 3, 3)
    assert step.cut(state.params, (4, 1, 12, 12), np.dtype(np.float32)) == (4,)
    whole = attrs.evolve(step, rows_per_shard=None)
    assert whole.cut(state.params, (1000, 1, 12, 12), np.dtype(np.float32)) == (1000,)
    auto = attrs.evolve(step, rows_per_shard="auto")
    rows = fn.train.least_shard_rows(auto.model, state.params, (1, 12, 12))
    assert fn.train.MAX_SHARDS == 64
    table = ((2 * rows - 1, 1), (2 * rows, 2), (8 * rows - 1, 2), (8 * rows, 4), (32 * rows - 1, 4), (32 * rows, 8),
             (128 * rows, 16), (2048 * rows - 1, 32), (2048 * rows, 64), (10**5 * rows, 64))
    for n, count in table:  # shards double while each doubles in rows too
        sizes = auto.cut(state.params, (n, 1, 12, 12), np.dtype(np.float32))
        assert len(sizes) == count and sum(sizes) == n and max(sizes) - min(sizes) <= 1
        assert min(sizes) >= rows * count // 2
        assert sizes == fn.train.cut(n, "auto", rows)  # the cut takes values: rows, setting, least rows


class OneRank:
    """mpi4py's COMM_SELF, as far as a step uses it: a step on it is a one-process step."""

    def Get_rank(self):  # noqa: N802
        return 0

    def Get_size(self):  # noqa: N802
        return 1

    def Allgather(self, send, recv):  # noqa: N802
        recv[...] = send

    def Allreduce(self, send, recv):  # noqa: N802
        recv[...] = send

    def Bcast(self, buf, root=0):  # noqa: N802
        pass

    def allgather(self, obj):
        return [obj]

    def bcast(self, obj, root=0):
        return obj


@pytest.mark.parametrize("rows", [None, 3])  # one shard (Bcast), and cut (Allgather)
@pytest.mark.parametrize("jit", [False, True])
def test_a_step_on_one_rank_gives_the_bits_of_a_step_without_comm(rows, jit):
    model = fn.serial(fn.conv2d(2, 3), fn.batch_norm(), fn.relu(), fn.flatten(), fn.dropout(0.2), fn.dense(3))
    params, _ = model.init(fn.random.key(0), (1, 6, 6))
    state, got = fn.TrainState.create(params, optim.adam(1e-2), model), []
    x, y = np.random.default_rng(1).standard_normal((10, 1, 6, 6)).astype(np.float32), np.arange(10) % 3
    for comm in (None, OneRank()):
        step = fn.train_step(model, fn.softmax_cross_entropy, optim.adam(1e-2), key=fn.random.key(1),
                             rows_per_shard=rows, comm=comm)
        step, s = (fn.jit(step) if jit else step), state
        for _ in range(3):
            s, m = step(s, (x, y))
        got.append((fn.checkpoint.digest(s.params), fn.checkpoint.digest(s.model_state), m))
    assert got[0] == got[1]


def test_a_comm_must_be_a_communicator():
    model = fn.serial(fn.flatten(), fn.dense(3))
    with pytest.raises(fn.InvalidTypeError, match="train_step: comm must be an mpi4py communicator .* got object "
                                                  "without Get_rank"):
        fn.train_step(model, fn.softmax_cross_entropy, optim.sgd(0.1), comm=object())


def _allocated(model, params, x_shape, dtype=np.float32, train=True):
    """The bytes of the distinct arrays a pass on ``x_shape`` reaches from its buffers
    (found by walking them, as a check of the ledger the layers' hooks keep)."""
    from collections.abc import Mapping

    from fnnet.runner import prepare_checked

    site, _, grads = prepare_checked(model, params, x_shape, np.dtype(dtype), train=train, need_dx=False,
                                     backward=train, fuse=False)
    bases, todo, seen = {}, [site.buf], set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, np.generic)):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            while isinstance(obj.base, np.ndarray):
                obj = obj.base
            bases[id(obj)] = obj.nbytes
        elif isinstance(obj, (tuple, list)):
            todo.extend(obj)
        elif isinstance(obj, Mapping):
            todo.extend(obj.values())
        elif hasattr(obj, "__dict__"):
            todo.extend(vars(obj).values())
        elif hasattr(obj, "__attrs_attrs__"):
            todo.extend(getattr(obj, a.name) for a in obj.__attrs_attrs__)
    bases.pop(id(grads), None)
    return sum(bases.values())


@pytest.mark.parametrize("model_fn, shape", [(seed_net, (1, 28, 28)), (lenet, (1, 28, 28)), (lenet, (3, 64, 64)),
                                             (bn_net, (1, 12, 12)), (res_net, (1, 12, 12))])
@pytest.mark.parametrize("train", [True, False])
def test_auto_shards_fill_the_working_set_budget(model_fn, shape, train):
    from fnnet.train import MIN_SHARD_ROWS, SHARD_BYTES

    model = model_fn()
    params, _ = model.init(fn.random.key(0), shape)
    per_row = fn.train.row_bytes(model, params, shape, train=train)
    # the layers' ledger counts what their buffers hold, row for row
    assert per_row == _allocated(model, params, (2, *shape), train=train) - _allocated(model, params, (1, *shape),
                                                                                        train=train)
    one = _allocated(model, params, (1, *shape), train=train)
    assert _allocated(model, params, (5, *shape), train=train) == one + 4 * per_row
    if train:
        rows = fn.train.least_shard_rows(model, params, shape)
        assert rows & (rows - 1) == 0  # a power of two
        assert rows == MIN_SHARD_ROWS or rows * per_row <= SHARD_BYTES < 2 * rows * per_row


def _counter():
    """A layer with state that does not pool shards' sums (it counts the rows it saw)."""

    def forward(params, x, buf, state):
        return x, None, fn.freeze({"rows": state["rows"] + x.shape[0]})

    return fn.Layer("counter", lambda key, shape, dtype: (fn.tree.EMPTY, shape), forward,
                    lambda cache, dy: (fn.tree.EMPTY, dy), lambda params, shape, dtype: shape,
                    init_state=lambda params: fn.freeze({"rows": np.zeros((), np.int64)}))


def test_a_model_with_state_is_cut_only_when_its_state_pools_the_shards():
    bn = fn.serial(fn.conv2d(2, 3), fn.batch_norm(), fn.relu(), fn.flatten(), fn.dense(10))
    params, _ = bn.init(fn.random.key(0), (1, 12, 12))
    assert bn.cuttable and fn.batch_norm().cuttable and fn.residual(fn.serial(fn.dense(3), fn.batch_norm())).cuttable
    step = fn.train_step(bn, fn.softmax_cross_entropy, optim.sgd(0.1), rows_per_shard=2)
    assert step.cut(params, (5, 1, 12, 12), np.dtype(np.float32)) == (2, 2, 1)
    custom = fn.serial(fn.flatten(), _counter(), fn.dense(10))
    assert not custom.cuttable and not fn.residual(_counter()).cuttable
    params, _ = custom.init(fn.random.key(0), (1, 12, 12))
    with pytest.raises(fn.InvalidValueError, match="has state .* does not combine shards' sums .* cannot be cut"):
        fn.train_step(custom, fn.softmax_cross_entropy, optim.sgd(0.1), rows_per_shard=2)
    step = fn.train_step(custom, fn.softmax_cross_entropy, optim.sgd(0.1))  # "auto": one shard
    assert step.cut(params, (4096, 1, 12, 12), np.dtype(np.float32)) == (4096,)


@pytest.mark.parametrize("rows", [0, -2, 2.5, "all", True])
def test_bad_rows_per_shard_are_named(rows):
    with pytest.raises(fn.InvalidValueError, match=f"rows_per_shard must be 'auto', None or an int >= 1.*{rows!r}"):
        fn.train_step(seed_net(), fn.softmax_cross_entropy, optim.sgd(0.1), rows_per_shard=rows)


def test_the_old_name_of_rows_per_shard_warns_and_means_rows():
    with pytest.warns(DeprecationWarning, match=r"train_step\(shards=\) is train_step\(rows_per_shard=\)"):
        step = fn.train_step(seed_net(), fn.softmax_cross_entropy, optim.sgd(0.1), shards=3)
    assert step.rows_per_shard == 3
    with pytest.warns(DeprecationWarning, match="Step.shards is Step.rows_per_shard"):
        assert step.shards == 3


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2"])
def test_bad_thread_counts_are_named(threads):
    step, _ = make()
    with pytest.raises(fn.InvalidValueError, match=f"jit: threads must be an int >= 1, got {threads!r}"):
        fn.jit(step, threads=threads)


def test_jit_uses_every_core_by_default():
    step, _ = make()
    assert fn.jit(step).threads == fn.threads.cores() >= 1
    assert fn.jit(step, threads=3).threads == 3


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_predict_gives_the_same_bits_on_any_number_of_threads(threads):
    model = lenet()
    params, _ = model.init(fn.random.key(0), (1, 12, 12))
    x, _ = batch(np.random.default_rng(0), 150)  # chunks of 16: nine whole, one of 6
    one = fn.predict(model, params, x, batch_size=16, threads=1)
    got = fn.predict(model, params, x, batch_size=16, threads=threads)
    assert got.tobytes() == one.tobytes() and got.shape == (150, 10)
    whole, _ = model.forward(params, x, train=False)
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(fn.InvalidValueError, match="predict: threads must be an int >= 1, got 0"):
        fn.predict(model, params, x, threads=0)


@pytest.mark.parametrize("pooled", [True, False])
def test_predict_shares_chunks_between_threads_only_when_they_are_heavy(monkeypatch, pooled):
    # by default, threads only for chunks whose eval-mode buffers pass CHUNK_BYTES (its own
    # rule, not the training cut's); an explicit thread count is always honoured
    import fnnet.train._predict as train_mod

    model = lenet()
    params, _ = model.init(fn.random.key(0), (1, 12, 12))
    heaviest_alone = fn.train.CHUNK_BYTES // fn.train.row_bytes(model, params, (1, 12, 12), train=False)
    assert heaviest_alone > 1
    batch_size = heaviest_alone + 1 if pooled else heaviest_alone
    pools = []

    class Recording(train_mod.ThreadPoolExecutor):
        def __init__(self, workers, **kw):
            pools.append(workers)
            super().__init__(workers, **kw)

    monkeypatch.setattr(train_mod, "ThreadPoolExecutor", Recording)
    monkeypatch.setattr(fn.threads, "cores", lambda: 2)
    x, _ = batch(np.random.default_rng(0), 2 * batch_size + 10)  # three chunks
    got = fn.predict(model, params, x, batch_size=batch_size)
    assert pools == ([2] if pooled else [])
    assert got.tobytes() == fn.predict(model, params, x, batch_size=batch_size, threads=1).tobytes()
    fn.predict(model, params, x, batch_size=batch_size, threads=2)
    assert pools[-1] == 2
