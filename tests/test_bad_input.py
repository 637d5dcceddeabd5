"""Bad input, as a careless or hostile user gives it: every case is an FnnetError (or the
pipeline's exit status 2/3) whose message names the argument, file or flag, and no file
on disk changes. One table per surface: API and optimizers, data files, checkpoints, CLI."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import json
import math
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from test_data import idx_bytes, write_set

import fnnet as fn
from fnnet import checkpoint, data, optim, random

ROOT = pathlib.Path(__file__).resolve().parents[1]
# the divergence cases overflow on purpose; numpy says so before fnnet refuses the result
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
SCRIPT = ROOT / "pipelines" / "mnist.py"


def snapshot(root: pathlib.Path) -> dict:
    """Every file under ``root`` with its bytes (to prove a refusal changed nothing)."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(act, error: type, names: list[str], root: pathlib.Path | None = None) -> None:
    """``act()`` raises ``error`` (an FnnetError) whose message holds every one of
    ``names``, and no file under ``root`` changed."""
    before = snapshot(root) if root is not None else None
    with pytest.raises(error) as e:
        act()
    assert isinstance(e.value, fn.FnnetError)
    for n in names:
        assert n in str(e.value), f"{n!r} not in {str(e.value)!r}"
    if root is not None:
        assert snapshot(root) == before, "a refusal changed a file"


# -- the API: optimizers, transforms, schedules, steps, trees ----------------------------

MODEL = fn.serial(fn.flatten(), fn.dense(10))
OTHER = fn.serial(fn.flatten(), fn.dense(16), fn.relu(), fn.dense(10))
BN = fn.serial(fn.conv2d(4, 3), fn.batch_norm(), fn.flatten(), fn.dense(10))
BN8 = fn.serial(fn.conv2d(8, 3), fn.batch_norm(), fn.flatten(), fn.dense(10))
X = np.random.default_rng(0).random((4, 1, 6, 6)).astype(np.float32)
Y = np.array([1, 2, 3, 4])


def params(model=MODEL):
    return model.init(random.key(0), (1, 6, 6))[0]


def stepped(opt, *, model=MODEL, jit=False, state=None, x=X, y=Y, shards="auto"):
    """One step of ``model`` with ``opt`` (``state``: a function making it), made and run
    when the case runs; the error it raises is the case's."""

    def act():
        step = fn.train_step(model, fn.softmax_cross_entropy, opt, rows_per_shard=shards)
        step = fn.jit(step) if jit else step
        s = fn.TrainState.create(params(model), opt, model) if state is None else state()
        return step(s, (x, y))

    return act


def unchanged_after_divergence(jit):
    """sgd(1e38) overflows the update: the error names the step and the learning rate,
    and the state passed in is bit-identical afterwards."""
    opt = optim.sgd(1e38)
    state = fn.TrainState.create(params(), opt)
    before = checkpoint.digest(state.params)
    step = fn.train_step(MODEL, fn.softmax_cross_entropy, opt)
    step = fn.jit(step) if jit else step

    def act():
        try:
            step(state, (X * 1e3, Y))
        finally:
            assert checkpoint.digest(state.params) == before

    return act


nan, inf = float("nan"), float("inf")
CLIPPED = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.1, momentum=0.9))  # runs on trees, not flat

API = [
    # found by the property-based suites (tests/test_properties.py): raw TypeError or OverflowError before
    ("conv2d kernel_size None", lambda: fn.conv2d(2, None), fn.InvalidValueError, ["conv2d", "kernel_size", "None"]),
    ("batch_norm momentum None", lambda: fn.batch_norm(None), fn.InvalidValueError, ["batch_norm", "momentum"]),
    ("dropout rate None", lambda: fn.dropout(None), fn.InvalidValueError, ["dropout", "rate", "None"]),
    ("leaky_relu slope None", lambda: fn.leaky_relu(None), fn.InvalidValueError, ["negative_slope", "None"]),
    ("reshape shape None", lambda: fn.reshape(None), fn.InvalidValueError, ["reshape", "shape", "None"]),
    ("piecewise_constant boundaries 0.0", lambda: optim.piecewise_constant(0.0, [1.0]), fn.InvalidValueError,
     ["piecewise_constant", "boundaries", "0.0"]),
    ("train_step key not a Key", lambda: fn.train_step(fn.serial(fn.flatten(), fn.dense(3)), fn.softmax_cross_entropy,
                                                        optim.sgd(0.1), key=object()), fn.InvalidTypeError,
     ["train_step", "key must be a fnnet.random.Key"]),
    ("dense w_init not callable", lambda: fn.dense(3, w_init=1), fn.InvalidTypeError, ["dense", "w_init", "1"]),
    ("predict of no model", lambda: fn.predict(None, {}, np.ones((2, 2))), fn.InvalidTypeError,
     ["predict", "model must be a fnnet Layer"]),
    ("exponential_decay growing past float", lambda: optim.sgd(optim.exponential_decay(0.1, 2.0, 1)).update(
        {"w": np.ones(1)}, fn.freeze({"count": np.array(5000), "learning_rate": np.array(0.1)})),
     fn.InvalidValueError, ["the schedule gave inf at step 5000", "learning rate"]),
    # optimizers and transforms: PyTorch's rules are the floor
    ("sgd negative lr", lambda: optim.sgd(-0.1), fn.InvalidValueError, ["sgd", "learning_rate", "-0.1"]),
    ("sgd nan lr", lambda: optim.sgd(nan), fn.InvalidValueError, ["learning_rate", "nan"]),
    ("sgd inf lr", lambda: optim.sgd(inf), fn.InvalidValueError, ["learning_rate", "inf"]),
    ("sgd string lr", lambda: optim.sgd("fast"), fn.InvalidValueError, ["learning_rate", "'fast'"]),
    ("sgd bool lr", lambda: optim.sgd(True), fn.InvalidValueError, ["learning_rate", "True"]),
    ("sgd momentum > 1", lambda: optim.sgd(0.1, momentum=1.5), fn.InvalidValueError, ["momentum", "1.5"]),
    ("sgd negative momentum", lambda: optim.sgd(0.1, momentum=-0.1), fn.InvalidValueError, ["momentum", "-0.1"]),
    ("sgd nesterov no momentum", lambda: optim.sgd(0.1, nesterov=True), fn.InvalidValueError, ["nesterov", "momentum"]),
    ("keras_sgd negative lr", lambda: optim.keras_sgd(-0.01), fn.InvalidValueError, ["keras_sgd", "learning_rate"]),
    ("keras_sgd nan decay", lambda: optim.keras_sgd(0.1, decay=nan), fn.InvalidValueError, ["keras_sgd", "decay"]),
    ("keras_sgd negative decay", lambda: optim.keras_sgd(0.1, decay=-1), fn.InvalidValueError, ["decay", "-1"]),
    ("adam negative eps", lambda: optim.adam(1e-3, eps=-1.0), fn.InvalidValueError, ["eps", "-1.0"]),
    ("adam nan eps", lambda: optim.adam(1e-3, eps=nan), fn.InvalidValueError, ["eps", "nan"]),
    ("adam b1 = 1", lambda: optim.adam(1e-3, b1=1.0), fn.InvalidValueError, ["b1", "1.0"]),
    ("adam b2 negative", lambda: optim.adam(1e-3, b2=-0.5), fn.InvalidValueError, ["b2", "-0.5"]),
    ("adam negative lr", lambda: optim.adam(-1e-3), fn.InvalidValueError, ["learning_rate", "-0.001"]),
    ("adamw negative weight decay", lambda: optim.adamw(1e-3, weight_decay=-1), fn.InvalidValueError,
     ["weight_decay", "-1"]),
    ("rmsprop decay = 1", lambda: optim.rmsprop(0.1, decay=1.0), fn.InvalidValueError, ["decay", "1.0"]),
    ("rmsprop inf eps", lambda: optim.rmsprop(0.1, eps=inf), fn.InvalidValueError, ["eps", "inf"]),
    ("rmsprop momentum nan", lambda: optim.rmsprop(0.1, momentum=nan), fn.InvalidValueError, ["momentum", "nan"]),
    ("adagrad negative accumulator", lambda: optim.adagrad(0.1, initial_accumulator_value=-1), fn.InvalidValueError,
     ["initial_accumulator_value", "-1"]),
    ("adagrad negative eps", lambda: optim.adagrad(0.1, eps=-1e-7), fn.InvalidValueError, ["eps"]),
    ("scale nan", lambda: optim.scale(nan), fn.InvalidValueError, ["scale", "factor", "nan"]),
    ("clip zero", lambda: optim.clip_by_global_norm(0), fn.InvalidValueError, ["max_norm", "0"]),
    ("clip nan", lambda: optim.clip_by_global_norm(nan), fn.InvalidValueError, ["max_norm", "nan"]),
    ("trace decay 2", lambda: optim.trace(2.0), fn.InvalidValueError, ["trace", "decay", "2.0"]),
    ("scale_by_schedule not callable", lambda: optim.scale_by_schedule(0.1), fn.InvalidTypeError,
     ["scale_by_schedule", "callable", "0.1"]),
    ("chain of a float", lambda: optim.chain(optim.sgd(0.1), 0.1), fn.InvalidTypeError, ["chain", "argument 1"]),
    ("masked of a function", lambda: optim.masked(print, {}), fn.InvalidTypeError, ["masked", "inner"]),
    # schedules
    ("cosine nan init", lambda: optim.cosine_decay(nan, 10), fn.InvalidValueError, ["cosine_decay", "init_value"]),
    ("cosine zero steps", lambda: optim.cosine_decay(1.0, 0), fn.InvalidValueError, ["decay_steps", "0"]),
    ("cosine float steps", lambda: optim.cosine_decay(1.0, 2.5), fn.InvalidValueError, ["decay_steps", "2.5"]),
    ("cosine alpha 2", lambda: optim.cosine_decay(1.0, 10, alpha=2), fn.InvalidValueError, ["alpha", "2"]),
    ("cosine negative warmup", lambda: optim.cosine_decay(1.0, 10, warmup_steps=-1), fn.InvalidValueError,
     ["warmup_steps", "-1"]),
    ("exponential zero rate", lambda: optim.exponential_decay(1.0, 0.0, 10), fn.InvalidValueError, ["decay_rate"]),
    ("exponential zero steps", lambda: optim.exponential_decay(1.0, 0.5, 0), fn.InvalidValueError,
     ["transition_steps", "0"]),
    ("piecewise unsorted", lambda: optim.piecewise_constant([5, 1], [1, 2, 3]), fn.InvalidValueError,
     ["piecewise_constant", "[5, 1]"]),
    ("piecewise inf value", lambda: optim.piecewise_constant([5], [1, inf]), fn.InvalidValueError, ["values[1]"]),
    ("inverse time nan", lambda: optim.inverse_time_decay(inf, 0.1), fn.InvalidValueError, ["init_value", "inf"]),
    ("constant nan", lambda: optim.constant(nan), fn.InvalidValueError, ["constant", "value", "nan"]),
    # schedule values are checked at each step, before they are used
    ("schedule gives a negative lr", stepped(optim.sgd(lambda t: -1.0)), fn.InvalidValueError,
     ["schedule gave -1.0 at step 0", "learning rate"]),
    ("schedule gives nan", stepped(optim.adam(lambda t: nan), jit=True), fn.InvalidValueError,
     ["schedule gave nan at step 0"]),
    ("schedule gives a string", stepped(optim.sgd(lambda t: "x")), fn.InvalidValueError, ["schedule gave 'x'"]),
    ("scale schedule gives inf", stepped(optim.chain(optim.scale_by_schedule(lambda t: inf), optim.sgd(0.1))),
     fn.InvalidValueError, ["scale_by_schedule", "inf"]),
    # non-finite params are never returned; the state passed in is kept
    ("update overflows", unchanged_after_divergence(False), fn.DivergenceError,
     ["step 0", "NaN or inf", "dense_1/w", "learning rate (1e+38)"]),
    ("update overflows under jit", unchanged_after_divergence(True), fn.DivergenceError,
     ["step 0", "dense_1/w", "learning rate"]),
    ("inputs contain NaN", stepped(optim.sgd(0.1), x=np.full_like(X, np.nan)), fn.InvalidValueError,
     ["inputs contain NaN"]),
    # states of another model or optimizer
    ("params of another model",
     stepped(optim.sgd(0.1), state=lambda: fn.TrainState.create(params(OTHER), optim.sgd(0.1))),
     fn.TreeMismatchError, ["params must hold exactly the keys", "dense_3"]),
    ("opt state of adam for sgd",
     stepped(optim.sgd(0.1), state=lambda: fn.TrainState(params(), optim.adam(0.1).init(params()))),
     fn.TreeMismatchError, ["state.opt_state", "optimizer", "expected a mapping with keys ['count', 'learning_rate']"]),
    ("opt state of another model",
     stepped(optim.adam(0.1), jit=True, state=lambda: fn.TrainState(params(), optim.adam(0.1).init(params(OTHER)))),
     fn.TreeMismatchError, ["state.opt_state", "mu"]),
    ("opt state of another model, tree optimizer",
     stepped(CLIPPED, state=lambda: fn.TrainState(params(), CLIPPED.init(params(OTHER)))),
     fn.TreeMismatchError, ["state.opt_state", "1/0/trace"]),
    ("model state of another model",
     stepped(optim.sgd(0.1), model=BN,
             state=lambda: fn.TrainState(params(BN), optim.sgd(0.1).init(params(BN)), 0, BN8.init_state(params(BN8)))),
     fn.TreeMismatchError, ["state.model_state", "batch_norm_1/mean", "float32[4]", "float32[8]"]),
    ("empty batch", stepped(optim.sgd(0.1), x=X[:0], y=Y[:0]), fn.ShapeError,
     ["serial: the batch is empty", "(0, 1, 6, 6)"]),
    ("empty batch under jit, shards of 2", stepped(optim.sgd(0.1), jit=True, x=X[:0], y=Y[:0], shards=2),
     fn.ShapeError, ["the batch is empty"]),
    ("empty batch through a conv model", stepped(optim.sgd(0.1), model=fn.serial(fn.conv2d(2, 3), fn.flatten(),
                                                                                  fn.dense(10)),
                                                 jit=True, x=X[:0], y=Y[:0]),
     fn.ShapeError, ["serial: the batch is empty"]),
    ("TrainState negative step", lambda: fn.TrainState(params(), optim.sgd(0.1).init(params()), -1),
     fn.InvalidValueError, ["TrainState.step", "-1"]),
    ("TrainState float step", lambda: fn.TrainState(params(), optim.sgd(0.1).init(params()), 1.5),
     fn.InvalidValueError, ["TrainState.step", "1.5"]),
    ("train_step of a function", lambda: fn.train_step(print, fn.softmax_cross_entropy, optim.sgd(0.1)),
     fn.InvalidTypeError, ["Step.model", "Layer"]),
    ("train_step of an optax-like tuple", lambda: fn.train_step(MODEL, fn.softmax_cross_entropy, (print, print)),
     fn.InvalidTypeError, ["Step.optimizer", "GradientTransformation"]),
    ("jit of a function", lambda: fn.jit(print), fn.InvalidTypeError, ["jit", "train_step"]),
    ("predict batch size 0", lambda: fn.predict(MODEL, params(), X, batch_size=0), fn.InvalidValueError,
     ["predict", "batch_size", "0"]),
    ("tree_map kinds", lambda: fn.tree_map(lambda a, b: a, {"a": 1}, (1,)), fn.TreeMismatchError,
     ["<root>", "a mapping with keys ['a']", "a tuple of 1"]),
    ("random.key negative", lambda: random.key(-1), fn.InvalidValueError, ["seed", "-1"]),
]


@pytest.mark.parametrize("name,act,error,names", API, ids=[c[0] for c in API])
def test_api(name, act, error, names):
    assert_refused(act, error, names)


# -- data files ----------------------------------------------------------------------------


def _pickle(tmp: pathlib.Path, spoil) -> pathlib.Path:
    rng = np.random.default_rng(0)
    splits = [[rng.random((n, 784)).astype(np.float32), rng.integers(0, 10, n)] for n in (20, 10, 10)]
    spoil(splits)
    d = tmp / "pkl" / "mnist"
    d.mkdir(parents=True)
    with open(d / "mnist.pkl", "wb") as f:
        pickle.dump(tuple(tuple(s) for s in splits), f)
    return tmp / "pkl"


def _load_pickle(tmp, spoil):
    d = _pickle(tmp, spoil)
    return lambda: data.load("mnist", d, source="pickle", verify=False, validation=10)


def _idx_dir(tmp, role=None, replace=None):
    d = tmp / "idx"
    paths = write_set(d / "mnist", n_train=30, n_test=12)
    if role is not None:
        paths[role].unlink()
        replace(paths[role])  # (with gzip-compressed bytes where it writes a file)
    return d


def _folder(p):
    p.mkdir()


DATA = [
    ("data_dir missing", lambda tmp: lambda: data.load("mnist", tmp / "nowhere"), fn.DataNotFoundError,
     ["data_dir", "nowhere", "no such folder"]),
    ("data_dir is a file", lambda tmp: (tmp.joinpath("f").write_text("x"), lambda: data.load("mnist", tmp / "f"))[1],
     fn.DataNotFoundError, ["data_dir", "is a file"]),
    ("a folder where a file should be",
     lambda tmp: (lambda d: lambda: data.load("mnist", d, verify=False, validation=5))(
         _idx_dir(tmp, "train_labels", _folder)),
     fn.DataError, ["train-labels-idx1-ubyte.gz", "is not a file"]),
    ("labels file with image magic",
     lambda tmp: (lambda d: lambda: data.load("mnist", d, verify=False, validation=5))(
         _idx_dir(tmp, "train_labels", lambda p: p.write_bytes(gzip.compress(idx_bytes(np.zeros((30, 28, 28))))))),
     fn.DataError, ["train-labels-idx1-ubyte", "magic"]),
    ("IDX label out of range",
     lambda tmp: (lambda d: lambda: data.load("mnist", d, verify=False, validation=5))(
         _idx_dir(tmp, "train_labels", lambda p: p.write_bytes(gzip.compress(idx_bytes(np.full(30, 12)))))),
     fn.DataError, ["train-labels-idx1-ubyte", "label 12"]),
    ("pickle images of another shape",
     lambda tmp: _load_pickle(tmp, lambda s: s[0].__setitem__(0, s[0][0].reshape(784, 20))),
     fn.DataError, ["mnist.pkl", "train images", "(784, 20)"]),
    ("pickle labels out of range", lambda tmp: _load_pickle(tmp, lambda s: s[1].__setitem__(1, np.full(10, 10))),
     fn.DataError, ["mnist.pkl", "validation labels", "0..9"]),
    ("pickle float labels", lambda tmp: _load_pickle(tmp, lambda s: s[2].__setitem__(1, np.zeros(10))),
     fn.DataError, ["mnist.pkl", "test labels", "float64"]),
    ("pickle count mismatch", lambda tmp: _load_pickle(tmp, lambda s: s[0].__setitem__(1, np.zeros(19, np.int64))),
     fn.DataError, ["mnist.pkl", "20 images", "(19,)"]),
    ("pickle pixels out of range", lambda tmp: _load_pickle(tmp, lambda s: s[0].__setitem__(0, s[0][0] * 255)),
     fn.DataError, ["mnist.pkl", "pixel values", "[0, 1]"]),
    ("pickle NaN pixels", lambda tmp: _load_pickle(tmp, lambda s: s[2].__setitem__(0, np.full((10, 784), np.nan))),
     fn.DataError, ["mnist.pkl", "test pixel values"]),
    ("unknown dataset", lambda tmp: lambda: data.load("cifar"), fn.InvalidValueError, ["cifar", "mnist"]),
    ("unknown source", lambda tmp: lambda: data.load("mnist", source="csv"), fn.InvalidValueError, ["source", "csv"]),
    ("no pickle of fashion-mnist", lambda tmp: lambda: data.load("fashion-mnist", source="pickle"),
     fn.InvalidValueError, ["fashion-mnist", "pickle"]),
]


@pytest.mark.parametrize("name,make,error,names", DATA, ids=[c[0] for c in DATA])
def test_data_files(tmp_path, monkeypatch, name, make, error, names):
    monkeypatch.delenv("FNNET_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert_refused(make(tmp_path), error, names, tmp_path)


# -- checkpoints ---------------------------------------------------------------------------


def _entries(p: pathlib.Path) -> dict:
    with zipfile.ZipFile(p) as z:
        return {n: z.read(n) for n in z.namelist()}


def _header(p: pathlib.Path) -> dict:
    with np.load(p) as z:
        return json.loads(bytes(z["__header__"]).decode())


def _npy(a: np.ndarray, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def _rewrite(p: pathlib.Path, entries: dict, compress=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(p, "w", compress) as z:
        for n, b in entries.items():
            z.writestr(n, b)


def _edit_header(p, edit, keep_digest=True):
    h = _header(p)
    edit(h)
    if not keep_digest:
        h["header_sha256"] = checkpoint._header_sha256(h)
    e = _entries(p)
    e["__header__.npy"] = _npy(np.frombuffer(json.dumps(h).encode(), np.uint8))
    _rewrite(p, e)


def _crafted(kind):
    """A checkpoint ``c.npz`` spoilt in one way; returns the load call."""

    def make(tmp: pathlib.Path):
        p = tmp / "c.npz"
        checkpoint.save(p, {"w": np.arange(4.0), "b": np.zeros(2)}, {"step": 3})
        e = _entries(p)
        if kind == "metadata edited":
            _edit_header(p, lambda h: h["metadata"].update(step=300))
        elif kind == "old format":
            _edit_header(p, lambda h: h.update(format="fnnet-checkpoint-1"), keep_digest=False)
        elif kind == "header not an object":
            e["__header__.npy"] = _npy(np.frombuffer(b"[1, 2]", np.uint8))
            _rewrite(p, e)
        elif kind == "header without structure":
            _edit_header(p, lambda h: h.pop("structure"))
        elif kind == "structure of an unknown kind":
            _edit_header(p, lambda h: h.update(structure=json.dumps({"set": ["*"]})), keep_digest=False)
        elif kind == "structure with a number key":
            _edit_header(p, lambda h: h.update(structure=json.dumps({"dict": [[1, "*"]]})), keep_digest=False)
        elif kind == "header not UTF-8":
            e["__header__.npy"] = _npy(np.frombuffer(b"\xff\xfe{", np.uint8))
            _rewrite(p, e)
        elif kind == "leaf size crafted":
            raw = e["leaf_0.npy"]
            e["leaf_0.npy"] = raw.replace(b"(4,)", b"(999999999999,)".ljust(4))
            _rewrite(p, e)
        elif kind == "leaf compressed":
            _rewrite(p, e, zipfile.ZIP_DEFLATED)
        elif kind == "leaf missing":
            e.pop("leaf_1.npy")
            _rewrite(p, e)
        elif kind == "extra entry":
            e["evil.npy"] = _npy(np.zeros(1))
            _rewrite(p, e)
        elif kind == "leaf of objects":
            e["leaf_0.npy"] = _npy(np.array([object()] * 4), allow_pickle=True)
            _rewrite(p, e)
        elif kind == "empty file":
            p.write_bytes(b"")
        elif kind == "a folder":
            p.unlink()
            p.mkdir()
        return lambda: checkpoint.load(p)

    return make


CHECKPOINTS = [
    ("metadata edited", ["c.npz", "metadata was modified"]),
    ("old format", ["c.npz", "fnnet-checkpoint-1", "start that run again"]),
    ("header not an object", ["c.npz", "not a JSON object"]),
    ("header without structure", ["c.npz", "lacks structure"]),
    ("structure of an unknown kind", ["c.npz", "bad structure node"]),
    ("structure with a number key", ["c.npz", "bad mapping node"]),
    ("header not UTF-8", ["c.npz", "UnicodeDecodeError"]),
    ("leaf size crafted", ["c.npz", "leaf_0 declares", "999999999999"]),
    ("leaf compressed", ["c.npz", "not stored as fnnet writes it"]),
    ("leaf missing", ["c.npz", "no leaf_1"]),
    ("extra entry", ["c.npz", "4 entries for 2 leaves"]),
    ("leaf of objects", ["c.npz", "Python objects"]),
    ("empty file", ["c.npz", "corrupt checkpoint"]),
    ("a folder", ["c.npz", "it is a folder"]),
]


@pytest.mark.parametrize("kind,names", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_checkpoints(tmp_path, kind, names):
    assert_refused(_crafted(kind)(tmp_path), fn.DataError, names, tmp_path)


SAVES = [
    ("save over a folder", lambda p: (p.mkdir(), lambda: checkpoint.save(p, {"w": np.zeros(1)}))[1],
     fn.InvalidValueError, ["c.npz", "is a folder"]),
    ("metadata not JSON", lambda p: lambda: checkpoint.save(p, {"w": np.zeros(1)}, {"x": object()}),
     fn.InvalidTypeError, ["metadata", "JSON"]),
    ("a leaf that is text", lambda p: lambda: checkpoint.save(p, {"w": ("text",)}), fn.InvalidTypeError,
     ["w/0", "str"]),
    ("load like another tree", lambda p: (checkpoint.save(p, {"w": np.zeros(2)}),
                                          lambda: checkpoint.load(p, like={"w": np.zeros(3)}))[1],
     fn.TreeMismatchError, ["c.npz", "at w expected float64[3], got float64[2]"]),
]


@pytest.mark.parametrize("name,make,error,names", SAVES, ids=[c[0] for c in SAVES])
def test_checkpoint_saves(tmp_path, name, make, error, names):
    assert_refused(make(tmp_path / "c.npz"), error, names, tmp_path)


def test_a_save_removes_what_killed_saves_left_and_nothing_else(tmp_path):
    p = tmp_path / "c.npz"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".c.npz.{dead.pid}.0badc0de.tmp", tmp_path / f".c.npz.{os.getpid()}.0badc0de.tmp",
             tmp_path / ".c.npz.k3x9q2ab.tmp"]  # the last one named as earlier versions named them
    running = tmp_path / f".c.npz.{os.getppid()}.0badc0de.tmp"  # a process that still runs: maybe saving now
    others = [tmp_path / f".d.npz.{dead.pid}.0badc0de.tmp", tmp_path / "notes.tmp"]
    for q in (*stale, running, *others):
        q.write_bytes(b"half a checkpoint")
    checkpoint.save(p, {"w": np.zeros(1)})
    assert not any(q.exists() for q in stale)
    assert running.exists() and all(q.exists() for q in others)


def test_a_save_killed_at_random_moments_leaves_the_last_checkpoint_and_is_cleaned_up(tmp_path):
    """SIGKILL while saving 40 MB: the old checkpoint always loads, and the next save
    leaves no temporary file."""
    import signal
    import time

    p = tmp_path / "c.npz"
    checkpoint.save(p, {"w": np.zeros(1)}, {"step": 0})
    code = ("import sys, numpy as np; from fnnet import checkpoint\n"
            "big = {'w': np.ones(5_000_000)}\n"
            "for i in range(1, 1000): checkpoint.save(sys.argv[1], big, {'step': i})")
    for delay in (0.4, 0.7, 1.0):
        proc = subprocess.Popen([sys.executable, "-c", code, str(p)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, meta = checkpoint.load(p)  # whole: the old or a new one, never a torn one
        assert isinstance(meta["step"], int)
    checkpoint.save(p, {"w": np.zeros(1)}, {"step": -1})
    assert [q.name for q in tmp_path.iterdir()] == ["c.npz"]


# -- the pipeline's flags ------------------------------------------------------------------


def _pipeline():
    if str(SCRIPT.parent) not in sys.path:  # (as `python pipelines/mnist.py` has it: its recipes beside it)
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("fnnet_pipeline_mnist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PIPELINE = _pipeline()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Fake MNIST files (random pixels, 10,200 training images) and a finished run."""
    root = tmp_path_factory.mktemp("lab")
    write_set(root / "data" / "mnist", n_train=10_200, n_test=50)
    code, _, err = cli(root, ["--out", "run", *FAST])
    assert code == 0, err
    return root


FAST = ["--data-dir", "data", "--no-verify", "--train-size", "200", "--batch-size", "16", "--steps", "6",
        "--eval-every", "3", "--eval-samples", "50"]


def cli(root: pathlib.Path, argv: list[str]) -> tuple[int, str, str]:
    """Run the pipeline's ``main`` in ``root``: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = PIPELINE.main(argv)
            except SystemExit as e:  # argparse
                code = e.code
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


def _without(flags: list[str], *names: str) -> list[str]:
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
        elif f in names:
            skip = True
        else:
            out.append(f)
    return out


NEW = ["--out", "new", *FAST]  # a fresh --out: only the flag under test is wrong
FLAGS = [
    ("epochs 0", [*_without(NEW, "--steps"), "--epochs", "0"], 2, ["--epochs", "> 0", "'0'"]),
    ("epochs -1", [*_without(NEW, "--steps"), "--epochs", "-1"], 2, ["--epochs", "'-1'"]),
    ("epochs nan", [*_without(NEW, "--steps"), "--epochs", "nan"], 2, ["--epochs", "'nan'"]),
    ("epochs inf", [*_without(NEW, "--steps"), "--epochs", "inf"], 2, ["--epochs", "'inf'"]),
    ("epochs text", [*_without(NEW, "--steps"), "--epochs", "two"], 2, ["--epochs", "'two'"]),
    ("epochs below one step", [*_without(NEW, "--steps"), "--epochs", "0.01"], 2,
     ["--epochs 0.01", "less than one step", "13 steps of 16"]),
    ("steps 0", [*NEW, "--steps", "0"], 2, ["--steps", "'0'"]),
    ("steps and epochs", [*NEW, "--epochs", "1"], 2, ["--epochs", "not allowed with argument --steps"]),
    ("eval-every 0", [*NEW, "--eval-every", "0"], 2, ["--eval-every", "'0'"]),
    ("eval-samples -1", [*NEW, "--eval-samples", "-1"], 2, ["--eval-samples", "'-1'"]),
    ("eval-samples above the validation set", [*NEW, "--eval-samples", "20000"], 2,
     ["--eval-samples 20000", "10000 validation images"]),
    ("train-size above the data", [*_without(NEW, "--steps"), "--train-size", "1000000000", "--epochs", "1"], 2,
     ["--train-size 1000000000", "only 200 training images"]),
    ("train-size 0", [*NEW, "--train-size", "0"], 2, ["--train-size", "'0'"]),
    ("batch-size above the train size", [*NEW, "--batch-size", "500"], 2, ["--batch-size 500", "200 training"]),
    ("batch-size 2.5", [*NEW, "--batch-size", "2.5"], 2, ["--batch-size", "'2.5'"]),
    ("lr inf", [*NEW, "--lr", "inf"], 2, ["--lr", "'inf'"]),
    ("lr 0", [*NEW, "--lr", "0"], 2, ["--lr", "'0'"]),
    ("lr negative", [*NEW, "--lr=-1e-3"], 2, ["--lr", "'-1e-3'"]),
    ("seed -1", [*NEW, "--seed", "-1"], 2, ["--seed", "'-1'"]),
    ("stop-after -3", [*NEW, "--stop-after", "-3"], 2, ["--stop-after", "'-3'"]),
    ("unknown preset", [*NEW, "--preset", "fast"], 2, ["--preset", "'fast'"]),
    ("rotate 500", [*NEW, "--rotate", "500"], 2, ["augmentation flags", "rotate", "500"]),
    ("shift -1", [*NEW, "--shift=-1"], 2, ["--shift", "'-1'"]),
    ("label smoothing 1", [*NEW, "--label-smoothing", "1"], 2, ["--label-smoothing 1", "below 1"]),
    ("ema 1", [*NEW, "--ema", "1"], 2, ["--ema 1", "below 1"]),
    ("unknown model", [*NEW, "--model", "resnet50"], 2, ["--model", "'resnet50'"]),
    ("data-dir missing", [*_without(NEW, "--data-dir"), "--data-dir", "nodata"], 2,
     ["--data-dir nodata", "no such folder"]),
    ("out is a file", [*_without(NEW, "--out"), "--out", "data/mnist/t10k-labels-idx1-ubyte.gz"], 2,
     ["--out", "t10k-labels-idx1-ubyte.gz", "is a file"]),
    ("out holds a run", ["--out", "run", *FAST], 2, ["--out run", "holds a run", "--resume", "--overwrite"]),
    ("out holds a run, another seed", ["--out", "run", *FAST, "--seed", "5"], 2, ["--out run", "holds a run"]),
    ("resume and overwrite", ["--out", "run", *FAST, "--resume", "--overwrite"], 2,
     ["--overwrite", "not allowed with argument --resume"]),
    ("resume without a checkpoint", [*NEW, "--resume"], 2, ["--resume", "new/checkpoint.npz", "missing"]),
    ("resume with another preset", ["--out", "run", *FAST, "--preset", "tutorial", "--resume"], 2,
     ["--resume", "another config", "preset: 'default' there, 'tutorial' now"]),
    ("resume with another lr", ["--out", "run", *FAST, "--lr", "0.5", "--resume"], 2,
     ["another config", "lr: 0.002 there, 0.5 now", "the checkpoint's config: {", "this run's config:       {"]),
    ("resume with another seed", ["--out", "run", *FAST, "--seed", "1", "--resume"], 2,
     ["another config", "seed: 0 there, 1 now"]),
]


@pytest.mark.parametrize("name,argv,code,names", FLAGS, ids=[c[0] for c in FLAGS])
def test_cli(lab, name, argv, code, names):
    before = snapshot(lab)
    got, out, err = cli(lab, argv)
    assert got == code, err
    for n in names:
        assert n in err, f"{n!r} not in {err!r}"
    assert snapshot(lab) == before, "a refused run changed a file"
    assert not (lab / "new").exists()


def test_cli_overwrite_replaces_the_whole_run(lab, tmp_path):
    import shutil

    shutil.copytree(lab / "run", tmp_path / "run")
    (tmp_path / "data").symlink_to(lab / "data")
    code, _, err = cli(tmp_path, ["--out", "run", *FAST, "--seed", "3", "--steps", "4", "--overwrite"])
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["seed"] == 3 and summary["steps"] == 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 4], "no row of the old run is left"
    _, meta = checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    assert meta["config"]["seed"] == 3


def test_cli_resume_tolerates_and_reports_a_torn_metrics_line(lab, tmp_path):
    import shutil

    (tmp_path / "data").symlink_to(lab / "data")
    args = ["--out", "run", *_without(FAST, "--steps"), "--steps", "9"]
    assert cli(tmp_path, [*args, "--stop-after", "6"])[0] == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 9, "epo')  # a kill in the middle of a write
    code, out, err = cli(tmp_path, [*args, "--resume"])
    assert code == 0, err
    assert "metrics.jsonl: dropped a torn last line" in err
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [3, 6, 9]
    shutil.rmtree(tmp_path / "run")


def test_cli_resume_refuses_a_metrics_file_broken_in_the_middle(lab, tmp_path):
    (tmp_path / "data").symlink_to(lab / "data")
    args = ["--out", "run", *_without(FAST, "--steps"), "--steps", "9"]
    assert cli(tmp_path, [*args, "--stop-after", "6"])[0] == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text("garbage\n" + metrics.read_text())
    before = snapshot(tmp_path / "run")
    code, _, err = cli(tmp_path, [*args, "--resume"])
    assert code == 2 and "metrics.jsonl: line 1 is not a metrics row" in err
    assert snapshot(tmp_path / "run") == before


def test_cli_non_finite_update_exits_3_with_the_last_checkpoint_intact(lab, tmp_path):
    (tmp_path / "data").symlink_to(lab / "data")
    flags = [*_without(FAST, "--eval-every"), "--eval-every", "1"]  # a checkpoint after every step
    code, _, err = cli(tmp_path, ["--out", "run", *flags, "--preset", "tutorial", "--lr", "1e100"])
    assert code == 3, err
    assert "error: training diverged: step " in err and "NaN or inf" in err and "lower --lr" in err
    failed = int(err.split("training diverged: step ")[1].split(":")[0])
    _, meta = checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    tree, meta = checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    assert 1 <= meta["step"] <= failed  # the last good state's checkpoint: nothing non-finite was saved
    assert all(np.isfinite(leaf).all() for leaf in fn.tree_leaves(tree))
    assert not (tmp_path / "run" / "summary.json").exists()


def test_cli_a_finite_explosion_is_a_warning_and_exit_3(lab, tmp_path):
    (tmp_path / "data").symlink_to(lab / "data")
    code, out, err = cli(tmp_path, ["--out", "run", *FAST, "--lr", "1e3"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert code == 3 and summary["diverged"] is True, (out, err)
    assert summary["warnings"] and "above twice the chance level" in summary["warnings"][-1]
    assert "warning: diverging" in out and "the run ended diverged (exit status 3)" in err
    assert summary["warnings"][-1].split(":")[0] == "diverging"
    assert math.isfinite(summary["test_loss"])


def test_cli_tiny_evaluation_windows_judge_enough_examples_and_the_final_state(lab, tmp_path):
    """Evaluations after every step of 2 images: no window of so few examples is judged,
    and the exit status says what the final state is (a resumed run too)."""
    (tmp_path / "data").symlink_to(lab / "data")
    flags = [*_without(FAST, "--eval-every", "--batch-size", "--steps"), "--eval-every", "1", "--batch-size", "2",
             "--steps", "12"]
    code, out, err = cli(tmp_path, ["--out", "run", *flags, "--stop-after", "6"])
    assert code == 0, err
    code, out, err = cli(tmp_path, ["--out", "run", *flags, "--resume"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert code == 0 and summary["diverged"] is False and summary["warnings"] == [], (out, err)
    assert summary["val_loss"] < 2 * math.log(10) and "diverging" not in out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13)) and not any("warnings" in r for r in rows)


def test_summary_records_what_decides_the_bits(lab):
    s = json.loads((lab / "run" / "summary.json").read_text())
    info = s["runtime"]
    assert info["numpy"] == np.__version__ and info["fnnet"] == fn.__version__
    assert {"name", "version", "core"} <= set(info["blas"]) and info["cpu"]
    assert info == json.loads(json.dumps(fn.runtime.info()))
