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
    with pytest.raises(fn.InvalidTypeError, match="must be a mapping, a path or a torch.nn.Module, got list"):
        from_state_dict(model, [1, 2], shape)
    with pytest.raises(fn.DataError, match="no such file"):
        from_state_dict(model, "missing.safetensors", shape)


def _dense_stack(n=13, width=16):
    model = fn.serial(*[fn.dense(width) for _ in range(n)])
    params, _ = model.init(fn.random.key(5), (width,))
    return model, params


@pytest.mark.parametrize("via", ["dict", "safetensors"])
@pytest.mark.parametrize("prefix", ["", "net."])
def test_numbered_modules_map_in_the_order_of_their_numbers_whatever_the_keys_order(tmp_path, via, prefix):
    # 13 modules: "10" sorts before "2" as a string, the order a safetensors file lists them in
    model, params = _dense_stack()
    sd = {prefix + k: v for k, v in to_state_dict(model, params, (16,)).items()}
    sd = dict(sorted(sd.items()))
    assert list(sd)[2].startswith(prefix + "1") and list(sd)[4] == prefix + "10.bias"
    if via == "safetensors":
        fn.checkpoint.write_tensors(tmp_path / "w.safetensors", sd)
        sd = tmp_path / "w.safetensors"
    back, _ = from_state_dict(model, sd, (16,))
    assert fn.checkpoint.digest(back) == fn.checkpoint.digest(params)


def _named(order, shapes=((16, 16), (16, 16))):
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in zip(("fc1", "fc2"), shapes)}
    sd = {}
    for name in order:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = weights[name], rng.standard_normal(weights[name].shape[0]).astype(
            np.float32)
    return sd


def test_modules_of_the_same_shapes_under_names_without_an_order_are_refused_not_guessed():
    model, _ = _dense_stack(2)
    sd = _named(["fc2", "fc1"])  # registered fc2 first, run fc1 first: nothing in the dict says so
    with pytest.raises(fn.InvalidValueError, match=r"does not say its modules' order, and 'fc2', 'fc1' have the same "
                                                   r"shapes \(weight \(16, 16\), bias \(16,\)\).*Pass the torch module "
                                                   r"itself.*modules=\{fnnet layer: torch module\} for the layers "
                                                   r"dense_0, dense_1"):
        from_state_dict(model, sd, (16,))
    params, _ = from_state_dict(model, sd, (16,), modules={"dense_0": "fc1", "dense_1": "fc2"})
    assert np.array_equal(params["dense_0"]["w"], sd["fc1.weight"].T)
    assert np.array_equal(params["dense_1"]["b"], sd["fc2.bias"])


def test_modules_that_differ_in_shape_map_by_shape_when_their_names_say_no_order():
    model = fn.serial(fn.dense(16), fn.relu(), fn.dense(3))
    sd = _named(["fc2", "fc1"], shapes=((16, 4), (3, 16)))  # fc1 is Linear(4, 16), fc2 Linear(16, 3)
    params, _ = from_state_dict(model, sd, (4,))
    assert np.array_equal(params["dense_0"]["w"], sd["fc1.weight"].T)
    assert np.array_equal(params["dense_2"]["w"], sd["fc2.weight"].T)
    with pytest.raises(fn.ShapeError, match=r"dense_2 takes weight \(5, 16\), bias \(5,\); no module of the state "
                                            r"dict has those shapes"):
        from_state_dict(fn.serial(fn.dense(16), fn.relu(), fn.dense(5)), sd, (4,))


@pytest.mark.parametrize("modules, match", [
    ({"dense_0": "fc1"}, r"must map every fnnet layer with weights and no other \(dense_0, dense_1\); not mapped: "
                         r"dense_1"),
    ({"dense_0": "fc1", "dense_1": "fc2", "dense_9": "fc2"}, r"not layers of the model: 'dense_9'"),
    ({"dense_0": "fc1", "dense_1": "fc3"}, r"modules names 'fc3', not modules of the state dict \(its modules: "
                                           r"'fc1', 'fc2'\)"),
    ({"dense_0": "fc1", "dense_1": "fc1"}, r"use each module of the state dict once; used twice: 'fc1'; unused: "
                                           r"'fc2'"),
])
def test_a_wrong_modules_mapping_names_what_is_wrong(modules, match):
    model, _ = _dense_stack(2)
    with pytest.raises(fn.InvalidValueError, match=match):
        from_state_dict(model, _named(["fc1", "fc2"]), (16,), modules=modules)
    with pytest.raises(fn.InvalidTypeError, match="modules must be a mapping of fnnet layer paths"):
        from_state_dict(model, _named(["fc1", "fc2"]), (16,), modules=[("dense_0", "fc1")])


def test_layer_paths_are_the_keys_of_modules():
    _, params, state, shape = _setup("resnet")
    assert fn.pytorch.layer_paths(resnet(), shape) == [
        "conv2d_0", "residual_2/block/conv2d_0", "residual_2/block/batch_norm_1", "residual_2/block/conv2d_3",
        "residual_2/shortcut", "dense_4"]


@pytest.mark.parametrize("shape", [(16.5,), (0,), "16", (16, None), 16])
def test_a_bad_input_shape_is_named(shape):
    model, params = _dense_stack(2)
    with pytest.raises(fn.ShapeError, match="input_shape must be one sample's shape, a sequence of positive ints"):
        from_state_dict(model, to_state_dict(model, params, (16,)), shape)


def test_a_state_dict_entry_that_is_not_a_number_is_named():
    model, params = _dense_stack(2)
    sd = to_state_dict(model, params, (16,)) | {"1.weight": np.array(["a"] * 256).reshape(16, 16)}
    with pytest.raises(fn.DTypeError, match=r"the state dict's 1.weight is <U1, not a number type"):
        from_state_dict(model, sd, (16,))


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

    from test_torch_parity import _torch_blocks

    Residual = _torch_blocks()[5]  # noqa: N806 - a class
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


def _registered_out_of_order(torch):
    class Net(torch.nn.Module):  # fc2 registered first, fc1 run first; the same shapes
        def __init__(self):
            super().__init__()
            self.fc2, self.fc1 = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    return Net()


@pytest.mark.interop
def test_the_torch_module_itself_gives_its_forward_order(tmp_path):
    import safetensors.torch as st_torch
    import torch

    torch.manual_seed(0)
    net = _registered_out_of_order(torch).train()
    model = fn.serial(fn.dense(16), fn.relu(), fn.dense(16))
    params, _ = from_state_dict(model, net, (16,))
    assert net.training  # (its mode is restored)
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(fn.predict(model, params, x) - want)) <= 1e-5
    st_torch.save_file(net.state_dict(), tmp_path / "w.safetensors")  # the file alone cannot say which is first
    with pytest.raises(fn.InvalidValueError, match="'fc1', 'fc2' have the same shapes"):
        from_state_dict(model, tmp_path / "w.safetensors", (16,))


@pytest.mark.interop
def test_a_torch_module_that_runs_a_module_twice_is_refused():
    import torch

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    with pytest.raises(fn.InvalidValueError, match=r"runs 'fc' more than once in its forward pass \(shared weights\)"):
        from_state_dict(fn.serial(fn.dense(4), fn.dense(4)), Tied(), (4,))


@pytest.mark.interop
def test_a_bfloat16_torch_file_maps_as_its_float32_values(tmp_path):
    import safetensors.torch as st_torch
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).to(torch.bfloat16)
    st_torch.save_file(net.state_dict(), tmp_path / "bf16.safetensors")
    params, _ = from_state_dict(fn.serial(fn.dense(3)), tmp_path / "bf16.safetensors", (4,))
    assert params["dense_0"]["w"].dtype == np.float32
    assert np.array_equal(params["dense_0"]["w"], net[0].weight.detach().float().numpy().T)
