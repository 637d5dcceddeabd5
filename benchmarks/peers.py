"""The frameworks fnnet is measured against, each training the same three networks.

Every peer exposes ``make(net, batch, threads) -> (train_step, infer)``: ``train_step()``
runs one SGD step (forward + backward + update) on the next of ``DATA_BATCHES``
batches in turn, ``infer()`` one forward pass on a fixed batch of 1000. ``threads`` is
1 (one thread) or None (the peer's own default for all cores: PyTorch's intra-op
threads, XLA's thread pool, fnnet's jit and predict threads). A peer whose package is missing raises ImportError.

Networks (float32, NCHW, softmax cross-entropy, plain SGD lr 0.01):
  NET-SEED    conv 1->1 3x3 valid => relu => maxpool 2 => flatten (169) => dense 64 => relu => dense 10
  NET-LENET   conv 1->8 3x3 => relu => maxpool 2 => conv 8->16 3x3 => relu => maxpool 2
              => flatten (400) => dense 128 => relu => dense 10
  NET-DEFAULT the MNIST pipeline's default preset: conv 1->16 3x3 => relu => maxpool 2
              => conv 16->32 3x3 => relu => maxpool 2 => flatten (800) => dense 128 => relu => dense 10
  NET-BN      NET-DEFAULT with batch norm after each conv (batch statistics in training, running
              statistics, momentum 0.9, in inference)
  NET-BEST    the MNIST `best` preset's CNN: conv 1->32 3x3 => relu => maxpool 2 => conv 32->64 3x3
              => relu => maxpool 2 => flatten (1600) => dense 128 => relu => dense 10
  NET-CIFAR   a CIFAR-shaped net, input 3x32x32: three blocks of conv 3x3 (same padding) => batch
              norm => relu => maxpool 2, at 32, 64 and 128 channels => flatten (2048) => dense 10
"""

from __future__ import annotations

import itertools
import pathlib

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# (kind, args): conv (out, in[, padding]), pool, flatten, dense (in, out), relu, bn (channels)
NETS = {
    "NET-SEED": [("conv", 1, 1), ("relu",), ("pool",), ("flatten",), ("dense", 169, 64), ("relu",),
                 ("dense", 64, 10)],
    "NET-LENET": [("conv", 8, 1), ("relu",), ("pool",), ("conv", 16, 8), ("relu",), ("pool",), ("flatten",),
                  ("dense", 400, 128), ("relu",), ("dense", 128, 10)],
    "NET-DEFAULT": [("conv", 16, 1), ("relu",), ("pool",), ("conv", 32, 16), ("relu",), ("pool",), ("flatten",),
                    ("dense", 800, 128), ("relu",), ("dense", 128, 10)],
}
NETS["NET-BN"] = [layer for spec in NETS["NET-DEFAULT"] for layer in ([spec, ("bn", spec[1])] if spec[0] == "conv"
                                                                      else [spec])]
NETS["NET-BEST"] = [("conv", 32, 1), ("relu",), ("pool",), ("conv", 64, 32), ("relu",), ("pool",), ("flatten",),
                    ("dense", 1600, 128), ("relu",), ("dense", 128, 10)]
NETS["NET-CIFAR"] = [layer for c_in, c in ((3, 32), (32, 64), (64, 128))
                     for layer in (("conv", c, c_in, 1), ("bn", c), ("relu",), ("pool",))] + [("flatten",),
                                                                                              ("dense", 2048, 10)]
TRAIN_BATCHES = {"NET-SEED": (2, 32, 128), "NET-LENET": (2, 32, 128), "NET-DEFAULT": (64,), "NET-BN": (64,),
                 "NET-BEST": (64,), "NET-CIFAR": (128,)}
INPUT = {"NET-CIFAR": (3, 32, 32)}
"""Each network's input (C, H, W) where it is not MNIST's (1, 28, 28)."""


def input_shape(net: str) -> tuple[int, int, int]:
    return INPUT.get(net, (1, 28, 28))


def _pad(layer: tuple) -> int:
    return layer[3] if layer[0] == "conv" and len(layer) > 3 else 0
BN_MOMENTUM, BN_EPS = 0.9, 1e-5
LR = 0.01
INFER_BATCH = 1000


def report(lines: list[str], out: str) -> None:
    """Print a results table (its lines) and write it to ``out``, making the folder."""
    text = "\n".join(lines)
    print("\n" + text)
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def flops_per_sample(net: str) -> tuple[float, float]:
    """(forward, training) multiply-add FLOPs per sample of the conv and dense layers;
    training counts the forward pass and two backward products (3x)."""
    fwd, hw = 0.0, input_shape(net)[1]
    for layer in NETS[net]:
        if layer[0] == "conv":
            hw += 2 * _pad(layer) - 2
            fwd += 2 * layer[1] * layer[2] * 9 * hw * hw
        elif layer[0] == "pool":
            hw //= 2
        elif layer[0] == "dense":
            fwd += 2 * layer[1] * layer[2]
    return fwd, 3 * fwd


DATA_BATCHES = 8
"""Training batches every peer cycles through, step after step: one batch repeated lets
the CPU's branch predictor learn a data-dependent kernel (a branchy max-pool loop ran
5x faster on one input repeated than on fresh ones), which real training never sees."""


def data(batch: int, seed: int = 0, shape: tuple = (1, 28, 28)):
    rng = np.random.default_rng(seed)
    return rng.random((batch, *shape), dtype=np.float32), rng.integers(0, 10, batch)


def batches(batch: int, convert=lambda a: a, shape: tuple = (1, 28, 28)):
    """An endless cycle of ``DATA_BATCHES`` different training batches ``(x, y)`` of inputs
    ``shape``, each array passed through ``convert`` (a framework's array type) once, up front."""
    return itertools.cycle([tuple(convert(a) for a in data(batch, seed, shape)) for seed in range(DATA_BATCHES)])


def init_weights(net: str, seed: int = 0) -> list:
    """He-normal weights and zero biases, float32, PyTorch layouts (conv (K, C, 3, 3), dense (out, in))."""
    rng = np.random.default_rng(seed)
    out = []
    for layer in NETS[net]:
        if layer[0] == "conv":
            k, c = layer[1], layer[2]
            out.append(((rng.standard_normal((k, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32),
                        np.zeros(k, np.float32)))
        elif layer[0] == "dense":
            i, o = layer[1], layer[2]
            out.append(((rng.standard_normal((o, i)) * np.sqrt(2 / i)).astype(np.float32), np.zeros(o, np.float32)))
    return out


# -- fnnet ------------------------------------------------------------------------------------


def _fnnet_model(net: str):
    import fnnet as fn

    layers = []
    for layer in NETS[net]:
        kind = layer[0]
        if kind == "conv":
            layers.append(fn.conv2d(layer[1], 3, padding=_pad(layer)))
        elif kind == "dense":
            layers.append(fn.dense(layer[2]))
        elif kind == "relu":
            layers.append(fn.relu())
        elif kind == "pool":
            layers.append(fn.max_pool2d(2))
        elif kind == "bn":
            layers.append(fn.batch_norm(BN_MOMENTUM, BN_EPS))
        else:
            layers.append(fn.flatten())
    return fn.serial(*layers)


def make_fnnet(net: str, batch: int, threads: int | None = 1, use_jit: bool = True):
    import fnnet as fn

    model = _fnnet_model(net)
    params, _ = model.init(fn.random.key(0), input_shape(net))
    opt = fn.optim.sgd(LR)
    step = fn.train_step(model, fn.softmax_cross_entropy, opt)
    step = fn.jit(step, threads=threads) if use_jit else step
    box = [fn.TrainState.create(params, opt, model)]
    train_data = batches(batch, shape=input_shape(net))
    xi, _ = data(INFER_BATCH, shape=input_shape(net))

    def train_step():
        box[0], _ = step(box[0], next(train_data))

    def infer():  # (fnnet picks its own chunk size)
        fn.predict(model, box[0].params, xi, threads=threads, model_state=box[0].model_state)

    return train_step, infer


def make_fnnet_1t(net: str, batch: int, threads: int | None = 1):
    """fnnet's jit on one thread, beside its all-core row: the scaling, in the same run."""
    return make_fnnet(net, batch, threads=1)


def make_fnnet_step(net: str, batch: int, threads: int | None = 1):
    return make_fnnet(net, batch, threads, use_jit=False)


# -- plain numpy ------------------------------------------------------------------------------


def _np_conv_fwd(x, w, b, pad=0):
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    k = w.shape[0]
    win = sliding_window_view(x, (3, 3), axis=(2, 3))  # (N, C, Ho, Wo, 3, 3)
    ho, wo = h - 2, wd - 2
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * 9)
    y = cols @ w.reshape(k, -1).T + b
    return y.reshape(n, ho, wo, k).transpose(0, 3, 1, 2), cols


def _np_conv_bwd(dy, cols, w, x_shape, pad=0):
    n, c, h, wd = x_shape[0], x_shape[1], x_shape[2] + 2 * pad, x_shape[3] + 2 * pad
    k = w.shape[0]
    ho, wo = h - 2, wd - 2
    dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, k)
    dw = (dy2.T @ cols).reshape(w.shape)
    db = dy2.sum(axis=0)
    dcols = (dy2 @ w.reshape(k, -1)).reshape(n, ho, wo, c, 3, 3)
    dx = np.zeros((n, c, h, wd), np.float32)
    for i in range(3):
        for j in range(3):
            dx[:, :, i : i + ho, j : j + wo] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dx[:, :, pad : h - pad, pad : wd - pad], dw, db


def _np_pool_fwd(x):
    n, c, h, w = x.shape
    ho, wo = h // 2, w // 2
    xr = x[:, :, : 2 * ho, : 2 * wo].reshape(n, c, ho, 2, wo, 2)
    y = xr.max(axis=(3, 5))
    mask = xr == y[:, :, :, None, :, None]
    return y, (mask, x.shape)


def _np_pool_bwd(dy, cache):
    mask, shape = cache
    n, c, ho, _, wo, _ = mask.shape
    dx = np.zeros(shape, np.float32)
    dx[:, :, : 2 * ho, : 2 * wo] = (mask * dy[:, :, :, None, :, None]).reshape(n, c, 2 * ho, 2 * wo)
    return dx


def make_numpy(net: str, batch: int, threads: int | None = 1):
    """A plain-numpy implementation: im2col by sliding_window_view, BLAS matmuls, SGD."""
    weights = init_weights(net)
    spec = NETS[net]
    # batch norm: [scale, shift, running mean, running var] per bn layer, by position in spec
    bn = {i: [np.ones(s[1], np.float32), np.zeros(s[1], np.float32), np.zeros(s[1], np.float32),
              np.ones(s[1], np.float32)] for i, s in enumerate(spec) if s[0] == "bn"}
    train_data = batches(batch, shape=input_shape(net))
    xi, _ = data(INFER_BATCH, shape=input_shape(net))

    def forward(inp, keep):
        caches, wi = [], 0
        h = inp
        for li, layer in enumerate(spec):
            kind = layer[0]
            if kind == "bn":
                g, beta, rm, rv = bn[li]
                if keep:  # batch statistics; the running ones updated
                    mean, var = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3))
                    m = h.size // h.shape[1]
                    bn[li][2] = BN_MOMENTUM * rm + (1 - BN_MOMENTUM) * mean
                    bn[li][3] = BN_MOMENTUM * rv + (1 - BN_MOMENTUM) * var * (m / (m - 1))
                else:
                    mean, var = rm, rv
                inv = (1 / np.sqrt(var + BN_EPS)).astype(np.float32)
                xhat = (h - mean[:, None, None]) * inv[:, None, None]
                caches.append((xhat, inv, li))
                h = xhat * g[:, None, None] + beta[:, None, None]
                continue
            if kind == "conv":
                w, b = weights[wi]
                out, cols = _np_conv_fwd(h, w, b[None], _pad(layer))
                caches.append((cols, h.shape, wi, _pad(layer)))
                h, wi = out, wi + 1
            elif kind == "dense":
                w, b = weights[wi]
                caches.append((h, wi))
                h, wi = h @ w.T + b, wi + 1
            elif kind == "relu":
                h = np.maximum(h, 0)
                caches.append(h)
            elif kind == "pool":
                h, c = _np_pool_fwd(h)
                caches.append(c)
            else:
                caches.append(h.shape)
                h = h.reshape(h.shape[0], -1)
        return h, caches

    def train_step():
        x, y = next(train_data)
        logits, caches = forward(x, True)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(batch), y] -= 1
        d = p / batch
        for layer, cache in zip(reversed(spec), reversed(caches)):
            kind = layer[0]
            if kind == "dense":
                h, wi = cache
                w, b = weights[wi]
                dw, db, d = d.T @ h, d.sum(axis=0), d @ w
                weights[wi] = (w - LR * dw, b - LR * db)
            elif kind == "conv":
                cols, shape, wi, pad = cache
                w, b = weights[wi]
                d, dw, db = _np_conv_bwd(d, cols, w, shape, pad)
                weights[wi] = (w - LR * dw, b - LR * db)
            elif kind == "relu":
                d = d * (cache > 0)
            elif kind == "pool":
                d = _np_pool_bwd(d, cache)
            elif kind == "bn":
                xhat, inv, li = cache
                g = bn[li][0]
                m = d.size // d.shape[1]
                dg, db = (d * xhat).sum(axis=(0, 2, 3)), d.sum(axis=(0, 2, 3))
                d = (g * inv / m)[:, None, None] * (m * d - db[:, None, None] - xhat * dg[:, None, None])
                bn[li][0], bn[li][1] = g - LR * dg, bn[li][1] - LR * db
            else:
                d = d.reshape(cache)

    def infer():
        forward(xi, False)

    return train_step, infer


# -- PyTorch ----------------------------------------------------------------------------------


def make_torch(net: str, batch: int, threads: int | None = 1):
    import torch

    if threads == 1:
        torch.set_num_threads(1)  # (else its default: one intra-op thread a core)
    mods, weights = [], iter(init_weights(net))
    for layer in NETS[net]:
        kind = layer[0]
        if kind == "conv":
            m = torch.nn.Conv2d(layer[2], layer[1], 3, padding=_pad(layer))
        elif kind == "dense":
            m = torch.nn.Linear(layer[1], layer[2])
        elif kind == "bn":  # (torch's momentum weighs the new batch: 1 - ours)
            mods.append(torch.nn.BatchNorm2d(layer[1], eps=BN_EPS, momentum=1 - BN_MOMENTUM))
            continue
        else:
            mods.append({"relu": torch.nn.ReLU(), "pool": torch.nn.MaxPool2d(2), "flatten": torch.nn.Flatten()}[kind])
            continue
        w, b = next(weights)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(w))
            m.bias.copy_(torch.from_numpy(b))
        mods.append(m)
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    train_data = batches(batch, torch.from_numpy, input_shape(net))
    xi = torch.from_numpy(data(INFER_BATCH, shape=input_shape(net))[0])

    def train_step():
        x, y = next(train_data)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    def infer():
        model.eval()
        with torch.inference_mode():
            model(xi)
        model.train()

    return train_step, infer


# -- JAX --------------------------------------------------------------------------------------


def make_jax(net: str, batch: int, threads: int | None = 1):
    """(One thread or not is XLA_FLAGS, set by the harness before jax is imported.)"""
    import jax
    import jax.numpy as jnp

    spec = NETS[net]
    widths = [layer[1] for layer in spec if layer[0] == "bn"]
    # trained: (w, b) of each conv and dense, (scale, shift) of each batch norm; state: running (mean, var)
    params = ([(jnp.asarray(w), jnp.asarray(b)) for w, b in init_weights(net)],
              [(jnp.ones(c), jnp.zeros(c)) for c in widths])
    state = [(jnp.zeros(c), jnp.ones(c)) for c in widths]

    def forward(params, state, h, train):
        (weights, norms), wi, ni, new_state = params, 0, 0, []
        for layer in spec:
            kind = layer[0]
            if kind == "conv":
                w, b = weights[wi]
                pad = _pad(layer)
                h = jax.lax.conv_general_dilated(h, w, (1, 1), [(pad, pad), (pad, pad)]) + b[None, :, None, None]
                wi += 1
            elif kind == "dense":
                w, b = weights[wi]
                h = h @ w.T + b
                wi += 1
            elif kind == "bn":
                (g, beta), (rm, rv) = norms[ni], state[ni]
                if train:
                    mean, var = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3))
                    m = h.size // h.shape[1]
                    new_state.append((BN_MOMENTUM * rm + (1 - BN_MOMENTUM) * mean,
                                      BN_MOMENTUM * rv + (1 - BN_MOMENTUM) * var * (m / (m - 1))))
                else:
                    mean, var = rm, rv
                inv = jax.lax.rsqrt(var + BN_EPS)
                h = (h - mean[None, :, None, None]) * (inv * g)[None, :, None, None] + beta[None, :, None, None]
                ni += 1
            elif kind == "relu":
                h = jnp.maximum(h, 0)
            elif kind == "pool":
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
            else:
                h = h.reshape(h.shape[0], -1)
        return h, new_state

    def loss_fn(params, state, x, y):
        logits, new_state = forward(params, state, x, True)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), new_state

    @jax.jit
    def update(params, state, x, y):
        grads, new_state = jax.grad(loss_fn, has_aux=True)(params, state, x, y)
        return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), new_state

    infer_fn = jax.jit(lambda params, state, h: forward(params, state, h, False)[0])
    train_data = batches(batch, jnp.asarray, input_shape(net))
    xi = jnp.asarray(data(INFER_BATCH, shape=input_shape(net))[0])
    box = [(params, state)]

    def train_step():
        box[0] = update(*box[0], *next(train_data))
        jax.block_until_ready(box[0])

    def infer():
        infer_fn(*box[0], xi).block_until_ready()

    return train_step, infer


PEERS = {
    "fnnet jit": make_fnnet,
    "fnnet jit 1 thread": make_fnnet_1t,
    "fnnet step": make_fnnet_step,
    "numpy": make_numpy,
    "torch": make_torch,
    "jax": make_jax,
}
