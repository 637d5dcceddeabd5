"""The layers and combinators of a modern CNN against PyTorch in float64: the same weights
(moved by fnnet.pytorch.to_state_dict) give the same outputs, and the same gradients of
the params and of the input, to 1e-9. Needs torch (``interop``, nox -s interop)."""

from __future__ import annotations

import numpy as np
import pytest

import fnnet as fn
from fnnet.pytorch import to_state_dict

pytestmark = pytest.mark.interop
TOLERANCE = 1e-9


def _torch_blocks():
    """Stand-ins for fnnet's fan_out, parallel, fan_in_sum, fan_in_concat, a layer torch has
    no module for, and residual, as torch modules."""
    import torch
    from torch import nn

    class FanOut(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n = n

        def forward(self, x):
            return (x,) * self.n

    class Parallel(nn.ModuleList):
        def forward(self, xs):
            return tuple(m(x) for m, x in zip(self, xs))

    class Sum(nn.Module):
        def forward(self, xs):
            return sum(xs[1:], xs[0])

    class Concat(nn.Module):
        def forward(self, xs):
            return torch.cat(xs, 1)

    class Nothing(nn.Module):  # fnnet layers without weights that torch has no one module for
        def forward(self, x):
            return x

    class Residual(nn.Module):  # fnnet's residual(block, shortcut): its params are block.*, shortcut.*
        def __init__(self, block, shortcut):
            super().__init__()
            self.block, self.shortcut = block, shortcut

        def forward(self, x):
            return self.block(x) + self.shortcut(x)

    return FanOut, Parallel, Sum, Concat, Nothing, Residual


# (id, fnnet layer, torch module (nn, blocks), per-sample input shape)
ROWS = [
    ("conv_groups_2", lambda: fn.conv2d(4, 3, padding=1, groups=2),
     lambda nn, b: nn.Conv2d(4, 4, 3, padding=1, groups=2), (4, 6, 6)),
    ("conv_depthwise_x2_s2_dil2", lambda: fn.conv2d(6, 3, stride=2, dilation=2, groups=3),
     lambda nn, b: nn.Conv2d(3, 6, 3, stride=2, dilation=2, groups=3), (3, 9, 8)),
    ("conv_transpose_s2_p1_op1", lambda: fn.conv_transpose2d(3, 3, stride=2, padding=1, output_padding=1),
     lambda nn, b: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1), (2, 4, 5)),
    ("conv_transpose_2x3_s12_dil2_p1", lambda: fn.conv_transpose2d(2, (2, 3), stride=(1, 2), padding=1, dilation=2),
     lambda nn, b: nn.ConvTranspose2d(3, 2, (2, 3), stride=(1, 2), padding=1, dilation=2), (3, 3, 4)),
    ("layer_norm_chw", fn.layer_norm, lambda nn, b: nn.LayerNorm((3, 4, 5)), (3, 4, 5)),
    ("layer_norm_last_axis", lambda: fn.layer_norm(1, eps=1e-3), lambda nn, b: nn.LayerNorm(6, eps=1e-3), (2, 6)),
    ("group_norm_2", lambda: fn.group_norm(2), lambda nn, b: nn.GroupNorm(2, 4), (4, 3, 3)),
    ("group_norm_instance", lambda: fn.group_norm(3, eps=1e-4), lambda nn, b: nn.GroupNorm(3, 3, eps=1e-4), (3, 5)),
    ("gelu", fn.gelu, lambda nn, b: nn.GELU(), (2, 3, 4)),
    ("gelu_tanh", lambda: fn.gelu("tanh"), lambda nn, b: nn.GELU(approximate="tanh"), (7,)),
    ("silu", fn.silu, lambda nn, b: nn.SiLU(), (2, 5)),
    ("elu", lambda: fn.elu(0.7), lambda nn, b: nn.ELU(0.7), (3, 4)),
    ("softplus_beta2_threshold1", lambda: fn.softplus(2.0, 1.0), lambda nn, b: nn.Softplus(2.0, 1.0), (9,)),
    ("upsample_2x3", lambda: fn.upsample2d((2, 3)), lambda nn, b: nn.Upsample(scale_factor=(2, 3), mode="nearest"),
     (2, 3, 2)),
    (
        "inception",
        lambda: fn.serial(fn.fan_out(3), fn.parallel(
            fn.conv2d(2, 1), fn.serial(fn.conv2d(2, 1), fn.relu(), fn.conv2d(3, 3, padding=1)),
            fn.serial(fn.conv2d(1, 5, padding=2), fn.gelu())), fn.fan_in_concat()),
        lambda nn, b: nn.Sequential(b[0](3), b[1]([
            nn.Conv2d(2, 2, 1), nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Conv2d(2, 3, 3, padding=1)),
            nn.Sequential(nn.Conv2d(2, 1, 5, padding=2), nn.GELU())]), b[3]()),
        (2, 5, 5),
    ),
    (
        "fan_in_sum_dense",
        lambda: fn.serial(fn.fan_out(2), fn.parallel(fn.dense(4), fn.serial(fn.dense(4), fn.silu())), fn.fan_in_sum()),
        lambda nn, b: nn.Sequential(b[0](2), b[1]([nn.Linear(3, 4), nn.Sequential(nn.Linear(3, 4), nn.SiLU())]),
                                    b[2]()),
        (3,),
    ),
    (
        "unet_tiny",
        lambda: fn.serial(
            fn.conv2d(2, 3, padding=1), fn.fan_out(2),
            fn.parallel(fn.identity(), fn.serial(fn.max_pool2d(2), fn.conv2d(4, 3, padding=1), fn.group_norm(2),
                                                 fn.relu(), fn.conv_transpose2d(2, 2, stride=2))),
            fn.fan_in_concat(), fn.conv2d(2, 1),
        ),
        lambda nn, b: nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1), b[0](2),
            b[1]([b[4](), nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
                                        nn.ConvTranspose2d(4, 2, 2, stride=2))]),
            b[3](), nn.Conv2d(4, 2, 1),
        ),
        (1, 4, 6),
    ),
]


@pytest.mark.parametrize("name,layer,module,shape", ROWS, ids=[r[0] for r in ROWS])
def test_outputs_and_gradients_match_pytorch_in_float64(name, layer, module, shape):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = layer()
    params, _ = model.init(fn.random.key(3), shape, dtype=np.float64)
    params = fn.tree_map(lambda a: a + 0.1 * np.random.default_rng(a.size).standard_normal(a.shape), params)
    twin = module(nn, _torch_blocks()).double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in to_state_dict(model, params, shape).items()})
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, *shape)) * 2
    y, cache = model.forward(params, x)
    dy = rng.standard_normal(y.shape)
    grads, dx = model.backward(cache, dy)

    xt = torch.from_numpy(x).requires_grad_(True)
    yt = twin(xt)
    (yt * torch.from_numpy(dy)).sum().backward()
    assert yt.shape == y.shape
    assert np.max(np.abs(yt.detach().numpy() - y)) <= TOLERANCE
    assert np.max(np.abs(xt.grad.numpy() - dx)) <= TOLERANCE
    torch_grads = {k: p.grad.numpy() for k, p in twin.named_parameters()}
    ours = to_state_dict(model, grads, shape)
    assert sorted(torch_grads) == sorted(ours)
    for k, g in ours.items():
        assert np.max(np.abs(torch_grads[k] - g)) <= TOLERANCE, k


def _torch_pipeline_models():
    """The pipeline's VGG and ResNet (pipelines/models.py) written as a PyTorch user writes
    them: the same layers, in modules named as ``to_state_dict`` names fnnet's."""
    from torch import nn

    class GlobalAvgPool(nn.Module):  # (fnnet's global_avg_pool2d: (N, C, H, W) -> (N, C), one module)
        def forward(self, x):
            return x.mean((2, 3))

    def conv_bn(c_in, c_out, stride=1, size=3):
        return [nn.Conv2d(c_in, c_out, size, stride=stride, padding=size // 2), nn.BatchNorm2d(c_out)]

    def vgg(widths):
        layers, c_in = [], 1
        for c in widths:
            layers += [*conv_bn(c_in, c), nn.ReLU(), *conv_bn(c, c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        return nn.Sequential(*layers, GlobalAvgPool(), nn.Linear(c_in, 10))

    Residual = _torch_blocks()[5]

    def block(c_in, c, stride):
        body = nn.Sequential(*conv_bn(c_in, c, stride), nn.ReLU(), *conv_bn(c, c))
        shortcut = nn.Identity() if stride == 1 else nn.Sequential(*conv_bn(c_in, c, stride, size=1))
        return nn.Sequential(Residual(body, shortcut), nn.ReLU())

    def resnet(widths, blocks):
        stages, c_in = [], widths[0]
        for i, c in enumerate(widths):
            for b in range(blocks):
                stages.append(block(c_in, c, 2 if i and not b else 1))
                c_in = c
        return nn.Sequential(*conv_bn(1, widths[0]), nn.ReLU(), *stages, GlobalAvgPool(), nn.Linear(c_in, 10))

    return {"vgg": lambda: vgg((32, 64, 128)), "vgg_small": lambda: vgg((16, 32, 64)),
            "resnet": lambda: resnet((16, 32, 64), 1), "resnet14": lambda: resnet((16, 32, 64), 2)}


@pytest.mark.parametrize("name", ["vgg", "vgg_small", "resnet", "resnet14"])
def test_the_pipelines_vgg_and_resnet_match_pytorch_in_float64(name):
    """Train mode (batch statistics): outputs, every gradient and the running statistics
    after the pass; then eval mode (running statistics): outputs."""
    import torch
    from conftest import pipeline_module

    model, shape = pipeline_module("models").model_of(name), (1, 28, 28)
    params, _ = model.init(fn.random.key(3), shape, dtype=np.float64)
    rng = np.random.default_rng(0)
    params = fn.tree_map(lambda a: a + 0.1 * rng.standard_normal(a.shape), params)  # (scales and shifts not 1 and 0)
    state = fn.tree_map(lambda a: np.abs(a + 0.1 * rng.standard_normal(a.shape)), model.init_state(params))
    twin = _torch_pipeline_models()[name]().double()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                          to_state_dict(model, params, shape, model_state=state).items()})
    x = rng.standard_normal((4, *shape))
    y, cache, new_state = model.forward_with_state(params, state, x)
    dy = rng.standard_normal(y.shape)
    grads, dx = model.backward(cache, dy)

    twin.train()
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = twin(xt)
    (yt * torch.from_numpy(dy)).sum().backward()
    assert np.max(np.abs(yt.detach().numpy() - y)) <= TOLERANCE
    assert np.max(np.abs(xt.grad.numpy() - dx)) <= TOLERANCE
    ours = to_state_dict(model, grads, shape, model_state=state)  # (the gradients, named as the params)
    torch_grads = {k: p.grad.numpy() for k, p in twin.named_parameters()}
    assert sorted(torch_grads) == sorted(k for k in ours if k in dict(twin.named_parameters()))
    assert len(torch_grads) == len(fn.tree_leaves(grads))
    for k, g in torch_grads.items():
        assert np.max(np.abs(ours[k] - g)) <= TOLERANCE, k
    running = to_state_dict(model, params, shape, model_state=new_state)
    for k, v in twin.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            assert np.max(np.abs(v.numpy() - running[k])) <= TOLERANCE, k

    twin.eval()
    y_eval, _, _ = model.forward_with_state(params, new_state, x, train=False)
    with torch.no_grad():
        assert np.max(np.abs(twin(torch.from_numpy(x)).numpy() - y_eval)) <= TOLERANCE
