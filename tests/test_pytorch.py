"""PyTorch state dicts in and out: the names nn.Sequential gives, the round trip, safetensors
files, the refusals (numpy alone); and, with torch (``interop``, nox -s interop), the same
weights give the same predictions in torch and in fnnet, in both directions."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import pipeline_module
from test_export import _trained_like

import fnnet as fn
from fnnet.pytorch import from_state_dict, to_state_dict


def cnn():
    return fn.serial(fn.conv2d(4, 3, padding=1), fn.batch_norm(), fn.relu(), fn.max_pool2d(2), fn.flatten(),
                     fn.dense(10))


def mlp():
    return fn.serial(fn.flatten(), fn.dense(16), fn.batch_norm(), fn.tanh(), fn.dropout(0.2), fn.dense(3))


def resnet():
    block = fn.serial(fn.conv2d(4, 3, stride=2, padding=1), fn.batch_norm(), fn.relu(), fn.conv2d(4, 3, padding=1))
    return fn.serial(fn.conv2d(2, 3, padding="same"), fn.relu(), fn.residual(block, fn.conv2d(4, 1, stride=2)),
                     fn.global_avg_pool2d(), fn.dense(5), fn.log_softmax())


MODELS = {"cnn": (cnn, (1, 8, 8)), "mlp": (mlp, (2, 3, 3)), "resnet": (resnet, (1, 8, 8))}


def _setup(name, dtype=np.float32):
    factory, shape = MODELS[name]
    model = factory()
    params, _ = model.init(fn.random.key(7), shape, dtype=dtype)
    state = _trained_like(model, params)
    return model, params, state, shape


def test_a_serial_gets_the_names_nn_sequential_gives_its_modules():
    model, params, state, shape = _setup("cnn")
    sd = to_state_dict(model, params, shape, model_state=state)
    assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                        "1.num_batches_tracked", "5.weight", "5.bias"]
    assert sd["0.weight"].shape == (4, 1, 3, 3)  # OIHW, as fnnet's
    assert sd["5.weight"].shape == (10, 64) and np.array_equal(sd["5.weight"], params["dense_5"]["w"].T)
    assert np.array_equal(sd["1.running_var"], state["batch_norm_1"]["var"]) and sd["1.num_batches_tracked"] == 0
    assert all(a.flags.writeable and a.flags.c_contiguous for a in sd.values())
    names = list(to_state_dict(*_setup("resnet")[:2], (1, 8, 8), model_state=_setup("resnet")[2]))
    assert names[:2] == ["0.weight", "0.bias"] and "2.block.0.weight" in names and "2.block.1.running_mean" in names
    assert "2.shortcut.weight" in names and names[-2:] == ["4.weight", "4.bias"]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("via", ["dict", "safetensors"])
def test_to_and_from_a_state_dict_give_back_the_same_params_and_state(tmp_path, name, via):
    model, params, state, shape = _setup(name, np.float64)
    sd = to_state_dict(model, params, shape, model_state=state)
    if via == "safetensors":
        fn.checkpoint.write_tensors(tmp_path / "sd.safetensors", sd)
        sd = tmp_path / "sd.safetensors"
    back, back_state = from_state_dict(model, sd, shape)
    assert fn.checkpoint.digest(back) == fn.checkpoint.digest(params)
    assert fn.checkpoint.digest(back_state) == fn.checkpoint.digest(state)
    assert all(not a.flags.writeable for a in fn.tree_leaves(back))  # (frozen, as init's)


@pytest.mark.parametrize("model_name", pipeline_module("recipes").MODELS)
def test_every_pipeline_model_goes_out_and_back(model_name):
    recipes = pipeline_module("recipes")
    cfg = recipes.Config(preset="best", dataset="mnist", seed=0, model=model_name, dtype="float32", batch_size=2,
                         sampling="epoch", steps=1, optimizer="adam_cosine", lr=1e-3, eval_every=1, eval_samples=0)
    model = recipes.build_model(cfg)
    params, _ = model.init(fn.random.key(3), (1, 28, 28))
    state = model.init_state(params)
    back, back_state = from_state_dict(model, to_state_dict(model, params, (1, 28, 28), model_state=state),
                                       (1, 28, 28))
    assert fn.checkpoint.digest((back, back_state)) == fn.checkpoint.digest((params, state))


def test_the_dtype_follows_the_state_dict_unless_given():
    model, params, state, shape = _setup("cnn", np.float32)
    sd = to_state_dict(model, params, shape, model_state=state)
    assert fn.tree_leaves(from_state_dict(model, sd, shape)[0])[0].dtype == np.float32
    as64, _ = from_state_dict(model, sd, shape, dtype=np.float64)
    assert all(a.dtype == np.float64 for a in fn.tree_leaves(as64))


def test_a_module_without_bias_gives_zeros():
    model, params, state, shape = _setup("cnn")
    sd = to_state_dict(model, params, shape, model_state=state)
    del sd["0.bias"]  # Conv2d(..., bias=False)
    back, _ = from_state_dict(model, sd, shape)
    assert not back["conv2d_0"]["b"].any() and np.array_equal(back["conv2d_0"]["w"], params["conv2d_0"]["w"])


def test_a_mismatch_names_the_first_layer_and_module_that_differ():
    model, params, state, shape = _setup("cnn")
    sd = to_state_dict(model, params, shape, model_state=state)
    wider = fn.serial(fn.conv2d(5, 3, padding=1), fn.batch_norm(), fn.relu(), fn.max_pool2d(2), fn.flatten(),
                      fn.dense(10))
    with pytest.raises(fn.ShapeError, match=r"conv2d_0 takes weight \(5, 1, 3, 3\), bias \(5,\), the state "
                                            r"dict's module '0' has weight \(4, 1, 3, 3\), bias \(4,\)"):
        from_state_dict(wider, sd, shape)
    more = fn.serial(*[layer for _, layer in model.children], fn.relu(), fn.dense(2))
    with pytest.raises(fn.ShapeError, match=r"dense_7 takes weight \(2, 10\), bias \(2,\); the state dict has "
                                            r"no module left"):
        from_state_dict(more, sd, shape)
    with pytest.raises(fn.ShapeError, match=r"module '5' has no fnnet layer left to go to"):
        from_state_dict(fn.serial(fn.conv2d(4, 3, padding=1), fn.batch_norm(), fn.relu()), sd, shape)
    with pytest.raises(fn.InvalidTypeError, match="state_dict must be a mapping or a path"):
        from_state_dict(model, [1, 2], shape)
    with pytest.raises(fn.DataError, match="no such file"):
        from_state_dict(model, "missing.safetensors", shape)


def test_layers_without_a_pytorch_module_are_named():
    from test_layers import _readme_layer

    model = fn.serial(fn.conv2d(3, 3), _readme_layer("channel_scale")())
    params, _ = model.init(fn.random.key(0), (1, 5, 5))
    with pytest.raises(fn.InvalidTypeError, match=r"channel_scale_1: a 'channel_scale' layer has no PyTorch module "
                                                  r"here \(the layers with weights that map: conv2d, dense"):
        to_state_dict(model, params, (1, 5, 5))
    swish = fn.layers.elementwise("swish", lambda x, out: x, lambda x, dy, out: dy)
    with pytest.raises(fn.InvalidTypeError, match=r"swish_1 \(a 'swish' layer\) has no ONNX mapping"):
        from_state_dict(fn.serial(fn.dense(2), swish), {}, (3,))


# -- against torch -------------------------------------------------------------------------


def _torch_twin(name, torch):
    nn = torch.nn
    if name == "cnn":
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64, 10))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(18, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.2),
                             nn.Linear(16, 3))

    class Residual(nn.Module):
        def __init__(self, block, shortcut):
            super().__init__()
            self.block, self.shortcut = block, shortcut

        def forward(self, x):
            return self.block(x) + self.shortcut(x)

    block = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1))
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), Residual(block, nn.Conv2d(2, 4, 1, stride=2)),
                         nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),  # (global_avg_pool2d: one module)
                         nn.Linear(4, 5), nn.LogSoftmax(dim=1))


@pytest.mark.interop
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_weights_trained_in_torch_predict_the_same_in_fnnet(tmp_path, name, dtype):
    import safetensors.torch as st_torch
    import torch

    torch.manual_seed(0)
    twin = _torch_twin(name, torch).to(torch.float64 if dtype == np.float64 else torch.float32)
    for m in twin.modules():  # running statistics as after training
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    twin.eval()
    st_torch.save_file(twin.state_dict(), tmp_path / "torch.safetensors")  # torch's side: a file, no fnnet
    model, _, _, shape = _setup(name)
    params, state = from_state_dict(model, tmp_path / "torch.safetensors", shape)
    x = np.random.default_rng(1).standard_normal((6, *shape)).astype(dtype)
    with torch.no_grad():
        want = twin(torch.from_numpy(x)).numpy()
    got = fn.predict(model, params, x, model_state=state) if model.stateful else fn.predict(model, params, x)
    assert np.max(np.abs(got - want)) <= 1e-5


@pytest.mark.interop
@pytest.mark.parametrize("name", sorted(MODELS))
def test_weights_trained_in_fnnet_predict_the_same_in_torch(tmp_path, name):
    import safetensors.torch as st_torch
    import torch

    model, params, state, shape = _setup(name)
    fn.checkpoint.write_tensors(tmp_path / "fnnet.safetensors", to_state_dict(model, params, shape, model_state=state))
    twin = _torch_twin(name, torch)
    twin.load_state_dict(st_torch.load_file(tmp_path / "fnnet.safetensors"))  # strict: every key, no other
    twin.eval()
    x = np.random.default_rng(2).standard_normal((6, *shape)).astype(np.float32)
    with torch.no_grad():
        got = twin(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - fn.predict(model, params, x, model_state=state))) <= 1e-5
