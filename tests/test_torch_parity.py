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
    """Stand-ins for fnnet's fan_out, parallel, fan_in_sum and fan_in_concat, as torch modules."""
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

    return FanOut, Parallel, Sum, Concat, Nothing


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
