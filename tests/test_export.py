"""ONNX export: every row of the layer table and every pipeline model, run in onnxruntime,
infers what ``fnnet.predict`` infers (max abs difference <= 1e-5 in float32); the file's
batch axis, opset, IR version and metadata; the refusals. The tests that need onnx and
onnxruntime are marked ``interop`` (nox -s interop); the refusals that need neither run
everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import pipeline_module
from test_layers import LAYERS

import fnnet as fn
from fnnet.export import IR_VERSION, OPSET, Graph, to_onnx

UNMAPPED = {"custom_channel_scale_without_hook", "swish_elementwise"}  # (the table's custom layers without a mapping)
TOLERANCE = 1e-5


def _trained_like(layer, params, seed=0):
    """The layer's state with running statistics that are not the initial ones (as after training)."""
    state = layer.init_state(params)
    rng = np.random.default_rng(seed)
    return fn.tree_map(lambda a: (np.abs(a) + rng.random(a.shape)).astype(a.dtype), state)


def _onnx_outputs(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.interop
@pytest.mark.parametrize("name,factory,shape", [row for row in LAYERS if row[0] not in UNMAPPED],
                         ids=[row[0] for row in LAYERS if row[0] not in UNMAPPED])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_every_layer_of_the_table_infers_in_onnxruntime_what_predict_infers(tmp_path, name, factory, shape, dtype):
    layer = factory()
    params, _ = layer.init(fn.random.key(1), shape, dtype=dtype)
    state = _trained_like(layer, params)
    path = tmp_path / "m.onnx"
    # float64 params go out as float32 (onnxruntime has no float64 Conv or MaxPool): the same model, rounded
    to_onnx(layer, params, shape, path, model_state=state, dtype=np.float32)
    for n in (1, 7):  # the batch axis is dynamic
        x = np.random.default_rng(n).standard_normal((n, *shape)).astype(dtype)
        want = fn.predict(layer, params, x, model_state=state)
        got = _onnx_outputs(path, x.astype(np.float32))
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.max(np.abs(got - want)) <= TOLERANCE, name


@pytest.mark.interop
@pytest.mark.parametrize("model_name", pipeline_module("recipes").MODELS)
def test_every_pipeline_model_infers_in_onnxruntime_what_predict_infers(tmp_path, model_name):
    recipes = pipeline_module("recipes")
    cfg = recipes.Config(preset="best", dataset="mnist", seed=0, model=model_name, dtype="float32", batch_size=2,
                         sampling="epoch", steps=1, optimizer="adam_cosine", lr=1e-3, eval_every=1, eval_samples=0)
    model = recipes.build_model(cfg)
    params, _ = model.init(fn.random.key(3), (1, 28, 28))
    state = _trained_like(model, params) if model.stateful else fn.tree.EMPTY
    to_onnx(model, params, (1, 28, 28), tmp_path / "m.onnx", model_state=state)
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    got = _onnx_outputs(tmp_path / "m.onnx", x)
    assert np.max(np.abs(got - fn.predict(model, params, x, model_state=state))) <= TOLERANCE


@pytest.mark.interop
def test_the_file_checks_and_says_what_it_holds(tmp_path):
    import onnx

    model = fn.serial(fn.conv2d(4, 3, padding="same"), fn.batch_norm(), fn.relu(), fn.max_pool2d(2), fn.flatten(),
                      fn.dense(3), fn.softmax())
    params, _ = model.init(fn.random.key(0), (2, 6, 6))
    state = _trained_like(model, params)
    proto = to_onnx(model, params, (2, 6, 6), tmp_path / "m.onnx", model_state=state)
    loaded = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded == proto
    assert loaded.ir_version == IR_VERSION and [(o.domain, o.version) for o in loaded.opset_import] == [("", OPSET)]
    assert OPSET >= 17
    meta = {p.key: p.value for p in loaded.metadata_props}
    assert meta["fnnet_version"] == fn.__version__
    assert meta["params_sha256"] == fn.checkpoint.digest(params)
    assert meta["model_state_sha256"] == fn.checkpoint.digest(state)
    assert json.loads(meta["input_shape"]) == [2, 6, 6] and meta["dtype"] == "float32"
    (inp,), (out,) = loaded.graph.input, loaded.graph.output
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 2, 6, 6]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 3]
    names = {i.name for i in loaded.graph.initializer}
    assert {"conv2d_0.w", "conv2d_0.b", "batch_norm_1.scale", "batch_norm_1.mean", "dense_5.w"} <= names


def test_a_layer_without_a_mapping_is_named_and_nothing_is_written(tmp_path):
    swish = fn.layers.elementwise("swish", lambda x, out: x / (1 + np.exp(-x)), lambda x, dy, out: dy,
                                  grad_from_input=True)
    model = fn.serial(fn.dense(3), fn.residual(fn.serial(fn.dense(3), swish)), fn.dense(2))
    params, _ = model.init(fn.random.key(0), (4,))
    path = tmp_path / "m.onnx"
    path.write_bytes(b"an earlier export")
    with pytest.raises(fn.InvalidTypeError, match=r"residual_1/block/swish_1 \(a 'swish' layer\) has no ONNX "
                                                  r"mapping: give it one as Layer\(\.\.\., onnx=\.\.\.\)"):
        to_onnx(model, params, (4,), path)
    assert path.read_bytes() == b"an earlier export" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_bad_arguments_are_refused_before_any_work():
    model = fn.serial(fn.conv2d(2, 3), fn.batch_norm(), fn.flatten(), fn.dense(2))
    params, _ = model.init(fn.random.key(0), (1, 5, 5))
    with pytest.raises(fn.InvalidValueError, match="has state.*pass model_state=state.model_state"):
        to_onnx(model, params, (1, 5, 5), "never.onnx")
    with pytest.raises(fn.ShapeError, match="conv2d_0: conv2d: expected input of shape"):
        to_onnx(model, params, (3, 5, 5), "never.onnx", model_state=model.init_state(params))
    with pytest.raises(fn.InvalidTypeError, match="model must be a fnnet Layer"):
        to_onnx(params, params, (1, 5, 5), "never.onnx")
    with pytest.raises(fn.DTypeError, match="to_onnx"):
        to_onnx(model, params, (1, 5, 5), "never.onnx", model_state=model.init_state(params), dtype=np.int32)


def test_a_mapping_that_returns_no_name_is_named():
    odd = fn.Layer("odd", *[getattr(fn.identity(), f) for f in ("_init", "_forward", "_backward", "_check")],
                   onnx=lambda g, params, state, x, shape: None)
    with pytest.raises(fn.InvalidTypeError, match="the ONNX mapping of odd returned a NoneType"):
        Graph(np.dtype(np.float32)).layer("", odd, {}, {}, "x", (3,))


@pytest.mark.interop
def test_a_custom_layer_declares_its_mapping_as_the_guide_shows(tmp_path):
    from test_layers import _readme_layer

    layer = fn.serial(fn.conv2d(3, 3), _readme_layer("channel_scale")(), fn.relu())
    params, _ = layer.init(fn.random.key(0), (2, 6, 6))
    to_onnx(layer, params, (2, 6, 6), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((4, 2, 6, 6)).astype(np.float32)
    assert np.max(np.abs(_onnx_outputs(tmp_path / "m.onnx", x) - fn.predict(layer, params, x))) <= TOLERANCE


# -- every argument checked, naming it (#37) ------------------------------------------------


def _bn_net():
    model = fn.serial(fn.conv2d(4, 3), fn.batch_norm(), fn.relu(), fn.flatten(), fn.dense(3))
    params, _ = model.init(fn.random.key(0), (1, 6, 6))
    return model, params, model.init_state(params)


def test_to_onnx_and_to_state_dict_check_every_argument_before_any_work(tmp_path):
    model, params, state = _bn_net()
    with pytest.raises(fn.DTypeError, match=r"to_onnx: dtype must be float32 or float64, got 'banana'"):
        to_onnx(model, params, (1, 6, 6), tmp_path / "m.onnx", model_state=state, dtype="banana")
    wide = {"batch_norm_1": {k: np.zeros(8, np.float32) for k in state["batch_norm_1"]}}
    for fun in (lambda s: to_onnx(model, params, (1, 6, 6), tmp_path / "m.onnx", model_state=s),
                lambda s: fn.pytorch.to_state_dict(model, params, (1, 6, 6), model_state=s)):
        with pytest.raises(fn.TreeMismatchError, match=r"model_state does not fit the model and its float32 params.*"
                                                       r"batch_norm_1/mean expected float32\[4\], got float32\[8\]"):
            fun(wide)
        with pytest.raises(fn.TreeMismatchError, match=r"batch_norm_1/mean expected float32\[4\], got float64\[4\]"):
            fun(fn.tree_map(lambda a: a.astype(np.float64), state))  # (onnxruntime: NOT_IMPLEMENTED BatchNorm)
    for shape in [(1, 6.5, 6), (1, 0, 6), "16", None, (True, 6, 6)]:
        with pytest.raises(fn.ShapeError, match="input_shape must be one sample's shape"):
            to_onnx(model, params, shape, tmp_path / "m.onnx", model_state=state)
        with pytest.raises(fn.ShapeError, match="input_shape must be one sample's shape"):
            fn.pytorch.to_state_dict(model, params, shape, model_state=state)
    (tmp_path / "file").write_text("x")
    with pytest.raises(fn.InvalidValueError, match=r"m.onnx: cannot be written, .*file is a file, not a folder"):
        to_onnx(model, params, (1, 6, 6), tmp_path / "file" / "m.onnx", model_state=state)
    with pytest.raises(fn.InvalidValueError, match=r"is a folder, not a file to write"):
        to_onnx(model, params, (1, 6, 6), tmp_path, model_state=state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_model_with_several_outputs_is_refused_naming_the_fan_out(tmp_path):
    model = fn.serial(fn.dense(4), fn.fan_out(2))
    params, _ = model.init(fn.random.key(0), (3,))
    with pytest.raises(fn.InvalidValueError, match=r"gives 2 outputs \(a fan_out without a fan-in at its end\)"):
        to_onnx(model, params, (3,), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.interop
def test_a_mapping_that_emits_an_unknown_op_is_refused_naming_the_layer(tmp_path):
    banana = fn.layers.elementwise("banana", lambda x, out: x, lambda x, dy, out: dy,
                                   onnx=lambda graph, params, state, x, shape: graph.op("Banana", x))
    model = fn.serial(fn.dense(2), banana)
    params, _ = model.init(fn.random.key(0), (3,))
    with pytest.raises(fn.InvalidValueError, match=r"the ONNX mapping of banana_1 emits 'Banana', which is not an "
                                                   r"operator of ONNX opset 17"):
        to_onnx(model, params, (3,), tmp_path / "m.onnx")
    wrong = fn.layers.elementwise("wrong", lambda x, out: x, lambda x, dy, out: dy,
                                  onnx=lambda graph, params, state, x, shape: graph.op("Relu", x, x))  # 2 inputs
    with pytest.raises(fn.InvalidValueError, match=r"the ONNX checker refused the model at wrong_1"):
        to_onnx(fn.serial(fn.dense(2), wrong), {"dense_0": params["dense_0"], "wrong_1": {}}, (3,),
                tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
