"""Property-based tests (Hypothesis): every public argument and file field, fed generated
values, either works or is refused with an FnnetError that names it.

The profile below is deterministic (derandomized, 60 examples a test, no example
database) so that CI runs the same examples every time, in a few seconds. What the suites
found is fixed and kept as a table row where a hand-written test was missing.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import pathlib
import struct

import numpy as np
import pytest
from conftest import pipeline_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fnnet as fn
from fnnet import data, optim

settings.register_profile("fnnet", derandomize=True, max_examples=60, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fnnet")

# values of the wrong type and range: floats where ints belong, bools, None, NaN/inf,
# negatives, zero, huge values, wrong-length tuples and strings
WEIRD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-64, 64), st.sampled_from([10**12, -(10**12), 2**63]),
    st.booleans(), st.none(),
    st.text(max_size=4), st.tuples(st.integers(-3, 6)), st.tuples(st.integers(-3, 6), st.integers(-3, 6),
                                                                    st.integers(-3, 6)),
    st.lists(st.integers(-2, 4), max_size=3), st.just(object()),
)

KEY = fn.random.key(0)


def _layer_use(layer, shape=(2, 6, 6)):
    """A layer that was accepted must init and run on a valid input (or refuse it, named)."""
    assert isinstance(layer, fn.Layer)
    params, out = layer.init(KEY, shape)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    y, _, _ = layer.forward_with_state(params, layer.init_state(params), x, key=KEY)
    assert y.shape == (2, *out)


# (name, argument, call with the value, what to do with what it returns)
CASES = [
    ("conv2d", "features", lambda v: fn.conv2d(v, 3), _layer_use),
    ("conv2d", "kernel_size", lambda v: fn.conv2d(2, v), _layer_use),
    ("conv2d", "stride", lambda v: fn.conv2d(2, 3, stride=v), _layer_use),
    ("conv2d", "padding", lambda v: fn.conv2d(2, 3, padding=v), _layer_use),
    ("conv2d", "dilation", lambda v: fn.conv2d(2, 3, dilation=v), _layer_use),
    ("conv2d", "w_init", lambda v: fn.conv2d(2, 3, w_init=v), _layer_use),
    ("conv2d", "b_init", lambda v: fn.conv2d(2, 3, b_init=v), _layer_use),
    ("dense", "features", lambda v: fn.dense(v), lambda layer: _layer_use(fn.serial(fn.flatten(), layer))),
    ("dense", "w_init", lambda v: fn.dense(3, w_init=v), lambda layer: _layer_use(fn.serial(fn.flatten(), layer))),
    ("max_pool2d", "window", lambda v: fn.max_pool2d(v), _layer_use),
    ("max_pool2d", "stride", lambda v: fn.max_pool2d(2, v), _layer_use),
    ("avg_pool2d", "window", lambda v: fn.avg_pool2d(v), _layer_use),
    ("avg_pool2d", "stride", lambda v: fn.avg_pool2d(2, v), _layer_use),
    ("dropout", "rate", lambda v: fn.dropout(v), _layer_use),
    ("batch_norm", "momentum", lambda v: fn.batch_norm(v), _layer_use),
    ("batch_norm", "eps", lambda v: fn.batch_norm(eps=v), _layer_use),
    ("leaky_relu", "negative_slope", lambda v: fn.leaky_relu(v), _layer_use),
    ("reshape", "shape", lambda v: fn.reshape(v), _layer_use),
    ("serial", "layer", lambda v: fn.serial(fn.relu(), v), _layer_use),
    ("residual", "block", lambda v: fn.residual(v), _layer_use),
    ("residual", "shortcut", lambda v: fn.residual(fn.relu(), v), _layer_use),
    ("sgd", "learning_rate", lambda v: optim.sgd(v), None),
    ("sgd", "momentum", lambda v: optim.sgd(0.1, v), None),
    ("sgd", "nesterov", lambda v: optim.sgd(0.1, 0.9, nesterov=v), None),
    ("scale", "factor", lambda v: optim.scale(v), None),
    ("scale_by_rms", "decay", lambda v: optim.scale_by_rms(v), None),
    ("scale_by_schedule", "schedule", lambda v: optim.scale_by_schedule(v), None),
    ("add_decayed_weights", "weight_decay", lambda v: optim.add_decayed_weights(v), None),
    ("constant", "value", lambda v: optim.constant(v), "schedule"),
    ("cosine_decay", "alpha", lambda v: optim.cosine_decay(0.1, 10, alpha=v), "schedule"),
    ("adam", "learning_rate", lambda v: optim.adam(v), None),
    ("adam", "b1", lambda v: optim.adam(0.1, b1=v), None),
    ("adam", "eps", lambda v: optim.adam(0.1, eps=v), None),
    ("adamw", "weight_decay", lambda v: optim.adamw(0.1, weight_decay=v), None),
    ("rmsprop", "decay", lambda v: optim.rmsprop(0.1, decay=v), None),
    ("adagrad", "initial_accumulator_value", lambda v: optim.adagrad(0.1, initial_accumulator_value=v), None),
    ("keras_sgd", "decay", lambda v: optim.keras_sgd(0.1, decay=v), None),
    ("clip_by_global_norm", "max_norm", lambda v: optim.clip_by_global_norm(v), None),
    ("track_ema", "decay", lambda v: optim.track_ema(v), None),
    ("chain", "argument", lambda v: optim.chain(optim.sgd(0.1), v), None),
    ("masked", "inner", lambda v: optim.masked(v, {"w": True}), None),
    ("cosine_decay", "decay_steps", lambda v: optim.cosine_decay(0.1, v), "schedule"),
    ("cosine_decay", "warmup_steps", lambda v: optim.cosine_decay(0.1, 10, warmup_steps=v), "schedule"),
    ("exponential_decay", "transition_steps", lambda v: optim.exponential_decay(0.1, 0.5, v), "schedule"),
    ("exponential_decay", "decay_rate", lambda v: optim.exponential_decay(0.1, v, 10), "schedule"),
    ("inverse_time_decay", "decay", lambda v: optim.inverse_time_decay(0.1, v), "schedule"),
    ("piecewise_constant", "boundaries", lambda v: optim.piecewise_constant(v, [1.0, 2.0]), "schedule"),
    ("translate", "max_shift", lambda v: data.augment.translate(v), "augment"),
    ("affine", "rotate", lambda v: data.augment.affine(v, 0.1, 5.0), "augment"),
    ("affine", "scale", lambda v: data.augment.affine(10.0, v, 5.0), "augment"),
    ("cutout", "size", lambda v: data.augment.cutout(v), "augment"),
    ("hflip", "p", lambda v: data.augment.hflip(v), "augment"),
    ("augment.chain", "argument", lambda v: data.augment.chain(data.augment.translate(1), v), "augment"),
    ("train_step", "model", lambda v: fn.train_step(v, fn.softmax_cross_entropy, optim.sgd(0.1)), None),
    ("train_step", "loss", lambda v: fn.train_step(fn.serial(fn.flatten(), fn.dense(3)), v, optim.sgd(0.1)), None),
    ("jit", "step", lambda v: fn.jit(v), None),
    ("predict", "model", lambda v: fn.predict(v, {}, np.ones((2, 2, 2), np.float32)), None),
    ("train_step", "rows_per_shard",
     lambda v: fn.train_step(fn.serial(fn.flatten(), fn.dense(3)), fn.softmax_cross_entropy, optim.sgd(0.1),
                             rows_per_shard=v), "step"),
    ("train_step", "optimizer", lambda v: fn.train_step(fn.serial(fn.flatten(), fn.dense(3)),
                                                        fn.softmax_cross_entropy, v), "step"),
    ("train_step", "key", lambda v: fn.train_step(fn.serial(fn.flatten(), fn.dropout(0.5), fn.dense(3)),
                                                  fn.softmax_cross_entropy, optim.sgd(0.1), key=v), "step"),
    ("jit", "threads", lambda v: fn.jit(fn.train_step(fn.serial(fn.flatten(), fn.dense(3)),
                                                      fn.softmax_cross_entropy, optim.sgd(0.1)), threads=v), "step"),
    ("predict", "batch_size", lambda v: _predict(batch_size=v), None),
    ("predict", "threads", lambda v: _predict(threads=v), None),
]
NAMES = {"layer": "serial", "argument": "chain", "max_shift": "shift", "size": "cutout"}


def _predict(**kw):
    model = fn.serial(fn.flatten(), fn.dense(3))
    params, _ = model.init(KEY, (2, 2))
    return fn.predict(model, params, np.ones((5, 2, 2), np.float32), **kw)


def _huge(value) -> bool:
    if isinstance(value, (tuple, list)):
        return any(map(_huge, value))
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and abs(value) > 64


def _use(kind, made):
    """What an accepted value must then do."""
    if kind is None:
        return
    if callable(kind):
        kind(made)
    elif kind == "schedule":
        for t in (0, 1, 7, 10**6):
            value = made(t)
            assert isinstance(value, (int, float, np.floating)), value
    elif kind == "augment":
        out = made(KEY, np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32))
        assert out.shape == (2, 1, 8, 8)
    elif kind == "step":
        step = made
        state = fn.TrainState.create(step.model.init(KEY, (2, 2))[0] if hasattr(step, "model") else
                                     step.step.model.init(KEY, (2, 2))[0],
                                     (step.optimizer if hasattr(step, "optimizer") else step.step.optimizer))
        step(state, (np.ones((4, 2, 2), np.float32), np.array([0, 1, 2, 0])))


@pytest.mark.parametrize("name,arg,call,kind", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
@given(value=WEIRD)
def test_every_argument_works_or_is_refused_by_name(name, arg, call, kind, value):
    try:
        made = call(value)
    except fn.FnnetError as err:
        assert NAMES.get(arg, arg) in str(err) or name in str(err), (name, arg, value, str(err))
        return
    if _huge(value):  # (accepted: a layer of 10**12 features is valid; making its params is not this test's)
        return
    try:
        _use(kind, made)
    except fn.FnnetError as err:  # (an accepted value may still be refused when the layer meets its input)
        assert name in str(err) or arg in str(err) or "serial" in str(err), (name, arg, value, str(err))


# -- files ---------------------------------------------------------------------------------


@given(magic=st.one_of(st.just(b"\x00\x00\x08\x03"), st.binary(min_size=0, max_size=4)),
       dims=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=4), payload=st.integers(0, 300),
       zipped=st.booleans())
def test_idx_files_are_read_or_refused_naming_the_file(tmp_path_factory, magic, dims, payload, zipped):
    """Any header (dims up to 2**32 - 1: nothing is allocated beyond the file's bytes) and
    any payload length: the array the header describes, or a DataError naming the file."""
    path = tmp_path_factory.mktemp("idx") / ("x.idx.gz" if zipped else "x.idx")
    raw = magic + b"".join(struct.pack(">I", d) for d in dims) + bytes(range(256)) * 2
    raw = raw[: len(magic) + 4 * len(dims) + payload]
    path.write_bytes(gzip.compress(raw) if zipped else raw)
    try:
        got = data.read_idx(path, 3)
    except fn.DataError as err:
        assert str(path) in str(err)
        return
    assert got.shape == tuple(dims[:3]) and got.dtype == np.uint8 and len(dims) >= 3


def _checkpoint(folder: pathlib.Path) -> tuple[pathlib.Path, bytes]:
    path = folder / "c.npz"
    fn.checkpoint.save(path, {"w": np.arange(12.0).reshape(3, 4), "b": (np.ones(2, np.float32),)}, {"step": 3})
    return path, path.read_bytes()


@given(cut=st.integers(0, 10**6), flip=st.integers(0, 10**6), bit=st.integers(0, 7), how=st.sampled_from(
    ["truncate", "flip", "append"]))
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path_factory, cut, flip, bit, how):
    path, whole = _checkpoint(tmp_path_factory.mktemp("ckpt"))
    if how == "truncate":
        damaged = whole[: cut % len(whole)]
    elif how == "flip":
        i = flip % len(whole)
        damaged = whole[:i] + bytes([whole[i] ^ (1 << bit)]) + whole[i + 1:]
    else:
        damaged = whole + bytes([cut % 256]) * (1 + flip % 64)
    path.write_bytes(damaged)
    try:
        tree, meta = fn.checkpoint.load(path)
    except fn.DataError as err:
        assert str(path) in str(err)
        return
    # (a byte the format does not read, such as zip padding: the same tree, verified by its sha256)
    assert meta["step"] == 3 and tree["w"].tolist() == np.arange(12.0).reshape(3, 4).tolist()


JSON = st.recursive(st.one_of(st.just("*"), st.none(), st.integers(-3, 3), st.text(max_size=3)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=10)


@given(structure=st.one_of(JSON.map(__import__("json").dumps), st.text(max_size=20)),
       sha=st.one_of(st.none(), st.text(max_size=8), st.just("right")), metadata=st.one_of(JSON, st.dictionaries(
           st.text(max_size=3), JSON, max_size=2)), leaves=st.integers(0, 3),
       shape=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_generated_checkpoint_headers_are_read_or_refused_naming_the_file(tmp_path_factory, structure, sha, metadata,
                                                                         leaves, shape):
    """Headers written by hand (their own sha256 recomputed, so that every field is read):
    any structure, digest, metadata and number of leaves. (Leaves whose .npy header declares
    more than the file holds: tests/test_bad_input.py.)"""
    from fnnet import checkpoint

    path = tmp_path_factory.mktemp("hdr") / "c.npz"
    arrays = {f"leaf_{i}": np.zeros(shape if i == 0 else (2,), np.float32) for i in range(leaves)}
    header = {"format": checkpoint.FORMAT, "structure": structure, "sha256": sha, "metadata": metadata}
    if sha == "right":
        try:
            header["sha256"] = checkpoint._digest(structure, list(arrays.values()))
        except Exception:  # (a structure the digest cannot take: the header's own check decides)
            header["sha256"] = "x"
    try:
        header["header_sha256"] = checkpoint._header_sha256(header)
    except TypeError:
        header["header_sha256"] = None
    arrays["__header__"] = np.frombuffer(__import__("json").dumps(header).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    try:
        tree, meta = checkpoint.load(path)
    except fn.DataError as err:
        assert str(path) in str(err)
        return
    assert isinstance(meta, dict) and len(fn.tree_leaves(tree)) == leaves


# -- trees ---------------------------------------------------------------------------------

LEAF = st.one_of(st.builds(lambda s: np.zeros(s, np.float32), st.tuples(st.integers(0, 3), st.integers(1, 4))),
                 st.builds(lambda s: np.zeros(s), st.integers(1, 4)), st.integers(), st.none(), st.text(max_size=2))
TREES = st.recursive(LEAF, lambda inner: st.one_of(st.dictionaries(st.text(max_size=3), inner, max_size=3),
                                                   st.lists(inner, max_size=3), st.tuples(inner)), max_leaves=8)


@given(tree=st.one_of(TREES, st.dictionaries(st.sampled_from(["w", "b", "x"]), TREES, max_size=3)))
def test_params_trees_train_or_are_refused_naming_the_path(tree):
    """A dense layer's params replaced by generated trees (wrong keys, shapes, dtypes,
    containers, depth): the step trains, or refuses them with an FnnetError."""
    model = fn.serial(fn.flatten(), fn.dense(3))
    good, _ = model.init(KEY, (2, 2))
    params = {"flatten_0": good["flatten_0"], "dense_1": tree}
    opt = optim.adam(1e-3)
    try:
        state = fn.TrainState.create(params, opt)
        fn.jit(fn.train_step(model, fn.softmax_cross_entropy, opt))(
            state, (np.ones((4, 2, 2), np.float32), np.array([0, 1, 2, 0])))
    except fn.FnnetError as err:
        assert "dense" in str(err) or "params" in str(err), str(err)


# -- the pipeline's flags ------------------------------------------------------------------

FLAGS = ["--seed", "--steps", "--epochs", "--batch-size", "--lr", "--eval-every", "--eval-samples", "--train-size",
         "--shift", "--rotate", "--scale", "--shear", "--cutout", "--flip", "--label-smoothing", "--ema", "--threads",
         "--shard-rows",
         "--stop-after", "--model", "--preset", "--dataset", "--tta"]
TEXT = st.one_of(st.sampled_from(["0", "-1", "1e400", "nan", "inf", "-inf", "1.5", "2", "", "x", "1e-300", "64",
                                  "10000000000", "cnn", "tutorial"]), st.text(max_size=4))


@given(flag=st.sampled_from(FLAGS), text=TEXT)
def test_pipeline_flags_are_taken_or_refused_naming_the_flag(flag, text):
    """What a flag is given: a config, or exit status 2 / a FlagError naming the flag
    (before any data is read or any file written: parsing and the config alone)."""
    recipes = pipeline_module("recipes")
    rng = np.random.default_rng(0)
    split = data.Split(rng.random((256, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 256))
    ds = data.Dataset("mnist", split, split, split, tuple("0123456789"), "fake")
    argv = ["--steps", "3", flag, text] if flag not in ("--steps", "--epochs") else [flag, text]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            recipes.make_config(recipes.parse_args(argv), ds)
    except SystemExit as exc:
        assert exc.code == 2 and flag in err.getvalue(), err.getvalue()
    except fn.FnnetError as err:
        assert flag in str(err) or "augmentation flags" in str(err), str(err)


@given(spec=st.one_of(st.text(max_size=12), st.builds(lambda n, v: f"{n}={v}", st.sampled_from(
    ["lr", "batch-size", "model", "seed", "shift", "x"]), st.text(max_size=8))))
def test_sweep_specs_are_parsed_or_refused_naming_the_flag(spec):
    import sys as _sys

    _sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "pipelines"))
    try:
        import sweep
    finally:
        _sys.path.pop(0)
    for flag, parse in (("--grid", sweep.parse_grid), ("--sample", sweep.parse_sample)):
        try:
            parse(spec)
        except sweep.SweepError as err:
            assert flag in str(err) or "sweep" in str(err), str(err)


# -- checkpoint.save writes only what load reads back ---------------------------------------

LEAF_DTYPES = ["<f4", ">f4", "<f8", ">f8", "<f2", ">f2", "|b1", "|i1", "|u1", ">i2", "<i4", ">i8", "<u8", ">u4",
               "<c8", ">c16", "<U3", "|S2", "<m8[s]"]
SAVE_KEYS = st.sampled_from(["w", "b", "__metadata__", "a.b", "", "<root>", "é", "0", "conv2d_0"])


@st.composite
def _leaves(draw):
    dtype = np.dtype(draw(st.sampled_from(LEAF_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    values = np.random.default_rng(draw(st.integers(0, 9))).integers(0, 100, size=shape)
    return values.astype(dtype)


SAVE_TREES = st.recursive(_leaves(), lambda t: st.one_of(st.dictionaries(SAVE_KEYS, t, min_size=1, max_size=3),
                                                          st.lists(t, min_size=1, max_size=2).map(tuple)),
                          max_leaves=5)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@given(tree=SAVE_TREES, metadata=st.one_of(st.none(), st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 2)),
                                                                       st.integers(0, 9), max_size=2)))
def test_save_writes_what_load_reads_back_or_refuses_and_keeps_the_old_file(tmp_path_factory, suffix, tree, metadata):
    path = tmp_path_factory.mktemp("ck") / f"ck{suffix}"
    old = fn.checkpoint.save(path, {"old": np.arange(3.0)})
    before = path.read_bytes()
    try:
        sha = fn.checkpoint.save(path, tree, metadata)
    except fn.FnnetError as exc:
        assert path.read_bytes() == before, "a refused save touched the old file"
        assert str(exc)
        assert fn.checkpoint.load(path)[1] == {} and fn.checkpoint.digest(fn.checkpoint.load(path)[0]) == old
        return
    back, meta = fn.checkpoint.load(path)
    assert fn.checkpoint.digest(back) == sha
    assert meta == (metadata or {})
    for (p, a), (q, b) in zip(fn.tree.tree_leaves_with_path(tree), fn.tree.tree_leaves_with_path(back), strict=True):
        assert p == q and a.shape == b.shape and np.array_equal(a, b)
        assert b.dtype == a.dtype if suffix == ".npz" else b.dtype == a.dtype.newbyteorder("<")
    assert sorted(q.name for q in path.parent.iterdir()) == [path.name]  # (no temporary file left)


# -- the interop functions' arguments, safetensors names and dtypes, graphs of several outputs ---


def _bn_model():
    model = fn.serial(fn.conv2d(2, 3), fn.batch_norm(), fn.relu(), fn.flatten(), fn.dense(3))
    params, _ = model.init(KEY, (1, 5, 5))
    return model, params, model.init_state(params)


def _interop_cases(folder: pathlib.Path) -> list:
    from fnnet.pytorch import from_state_dict, to_state_dict

    model, params, state = _bn_model()
    sd = to_state_dict(model, params, (1, 5, 5), model_state=state)
    onnx_path = folder / "m.onnx"
    return [
        ("to_onnx", "input_shape", lambda v: fn.export.to_onnx(model, params, v, onnx_path, model_state=state)),
        ("to_onnx", "dtype", lambda v: fn.export.to_onnx(model, params, (1, 5, 5), onnx_path, model_state=state,
                                                         dtype=v)),
        ("to_onnx", "model_state", lambda v: fn.export.to_onnx(model, params, (1, 5, 5), onnx_path, model_state=v)),
        ("to_onnx", "path", lambda v: fn.export.to_onnx(model, params, (1, 5, 5), v, model_state=state)),
        ("to_state_dict", "input_shape", lambda v: to_state_dict(model, params, v, model_state=state)),
        ("to_state_dict", "model_state", lambda v: to_state_dict(model, params, (1, 5, 5), model_state=v)),
        ("from_state_dict", "state_dict", lambda v: from_state_dict(model, v, (1, 5, 5))),
        ("from_state_dict", "input_shape", lambda v: from_state_dict(model, sd, v)),
        ("from_state_dict", "dtype", lambda v: from_state_dict(model, sd, (1, 5, 5), dtype=v)),
        ("from_state_dict", "modules", lambda v: from_state_dict(model, sd, (1, 5, 5), modules=v)),
        ("read_tensors", "path", lambda v: fn.checkpoint.read_tensors(v)),
        ("write_tensors", "path", lambda v: fn.checkpoint.write_tensors(v, {"w": np.ones(2)})),
        ("write_tensors", "tensors", lambda v: fn.checkpoint.write_tensors(folder / "t.safetensors", v)),
        ("write_tensors", "metadata", lambda v: fn.checkpoint.write_tensors(folder / "t.safetensors",
                                                                            {"w": np.ones(2)}, v)),
    ]


INTEROP = [(fun, arg) for fun, arg, _ in _interop_cases(pathlib.Path("."))]


@pytest.mark.parametrize("fun,arg", INTEROP, ids=[f"{f}-{a}" for f, a in INTEROP])
@given(value=st.one_of(WEIRD, st.just({"batch_norm_1": {}}), st.just({"dense_4": "0"})))
def test_interop_arguments_work_or_are_refused_naming_the_function(tmp_path_factory, fun, arg, value):
    if arg == "path" and isinstance(value, str):
        return  # (a text is a path: it would write in the working folder; the path tests write in tmp_path)
    folder = tmp_path_factory.mktemp("interop")
    call = next(c for f, a, c in _interop_cases(folder) if (f, a) == (fun, arg))
    with contextlib.suppress(fn.FnnetError):  # (what is refused is an FnnetError; anything else fails)
        call(value)


SAFE_NAMES = st.one_of(st.sampled_from(["w", "__metadata__", "", "a.b", "é", "0.weight"]), st.text(max_size=4))
SAFE_DTYPES = ["<f4", ">f4", "<f2", ">f2", "<f8", ">i2", "|i1", "|u1", "|b1", ">u8", "<c8", "<U2"]


@given(tensors=st.dictionaries(SAFE_NAMES, st.tuples(st.sampled_from(SAFE_DTYPES),
                                                      st.lists(st.integers(0, 3), max_size=2)), max_size=4),
       bf16=st.lists(st.integers(0, 2**16 - 1), max_size=6))
def test_safetensors_files_hold_every_name_and_dtype_or_refuse_them(tmp_path_factory, tensors, bf16):
    folder = tmp_path_factory.mktemp("st")
    arrays = {k: np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape).astype(dt)
              for k, (dt, shape) in tensors.items()}
    try:
        fn.checkpoint.write_tensors(folder / "t.safetensors", arrays)
    except fn.FnnetError:
        assert not list(folder.iterdir())  # refused before a file was made
    else:
        back, _ = fn.checkpoint.read_tensors(folder / "t.safetensors")
        assert list(back) == list(arrays)
        for k, a in arrays.items():
            assert back[k].dtype == a.dtype.newbyteorder("<") and np.array_equal(back[k], a)
    # a torch file's bfloat16: read as float32 with the same bits in its top half
    raw = np.array(bf16, "<u2")
    header = json.dumps({"b": {"dtype": "BF16", "shape": [len(bf16)], "data_offsets": [0, raw.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    (folder / "bf16.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + raw.tobytes())
    b = fn.checkpoint.read_tensors(folder / "bf16.safetensors")[0]["b"]
    assert b.dtype == np.float32 and np.array_equal(b.view("<u4") >> 16, raw.astype("<u4"))


@given(branches=st.lists(st.sampled_from(["dense", "identity", "relu"]), min_size=1, max_size=3),
       join=st.sampled_from(["sum", "concat", None]))
def test_graphs_with_several_outputs_are_refused_by_name_and_joined_ones_run(branches, join):
    parts = {"dense": lambda: fn.dense(4), "identity": fn.identity, "relu": fn.relu}
    layers = [fn.dense(4), fn.fan_out(len(branches)), fn.parallel(*[parts[b]() for b in branches])]
    layers += {"sum": [fn.fan_in_sum()], "concat": [fn.fan_in_concat(axis=1)], None: []}[join]
    model = fn.serial(*layers)
    params, shape = model.init(KEY, (3,))
    x, y = np.ones((4, 3), np.float32), np.arange(4) % 2
    opt = fn.optim.sgd(0.1)
    runs = [lambda: fn.predict(model, params, x), lambda: model.forward(params, x),
            lambda: fn.jit(fn.train_step(model, fn.softmax_cross_entropy, opt))(fn.TrainState.create(params, opt),
                                                                               (x, y)),
            lambda: fn.pytorch.to_state_dict(model, params, (3,))]
    for run_ in runs:
        if join is None:  # (one branch too: fan_out(1) gives a tuple of one)
            with pytest.raises(fn.InvalidValueError, match=rf"gives {len(branches)} outputs? \(a fan_out without a "
                                                           r"fan-in at its end\)"):
                run_()
        else:
            run_()
