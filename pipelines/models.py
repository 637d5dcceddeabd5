"""The CNNs the pipeline trains, by the name ``--model`` gives (``recipes.Config.model``)."""

from __future__ import annotations

import functools

import fnnet as fn

__all__ = ["MODELS", "model_of"]

# cnn: conv 16 => conv 32 => dense 128 (valid convs); cnn_wide: conv 32 => conv 64; ..._same: same padding;
# ..._same1: same padding on the first conv only (the one that sees the frame's edges); ..._bn: batch norm
# after each conv; ..._drop: dropout 0.5 after the dense 128 (its 400k weights are most of the params)
MODELS = {
    "tutorial": "the seed network: conv 1 (3x3) => pool => dense 64 => dense 10",
    "cnn": "conv 16 => pool => conv 32 => pool => dense 128 => dense 10 (valid padding)",
    "cnn_wide": "cnn with 32 and 64 filters",
    "cnn_same": "cnn with same padding in both convs",
    "cnn_wide_same": "cnn_wide with same padding in both convs",
    "cnn_wide_same1": "cnn_wide with same padding in the first conv only",
    "cnn_wide_same_drop": "cnn_wide_same with dropout 0.5 before the last dense layer",
    "cnn_wide_bn": "cnn_wide with batch norm after each conv",
    "vgg": "VGG-style: 3 blocks of two 3x3 convs (same padding, batch norm, relu) and a 2x2 max pool, 32, 64 "
           "and 128 filters => global average pool => dense 10",
    "vgg_small": "vgg with 16, 32 and 64 filters (a quarter of its work)",
    "resnet": "a small ResNet (ResNet8): a stem conv 16 (3x3, batch norm, relu), then 3 stages of one residual "
              "block each (two 3x3 convs with batch norm; 16, 32, 64 filters; stages 2 and 3 halve the map, "
              "their shortcut a strided 1x1 conv with batch norm) => global average pool => dense 10",
    "resnet14": "resnet with two residual blocks a stage (ResNet14)",
}
"""The CNNs ``--model`` picks, with what each is (``model_of`` builds them)."""


@functools.cache
def model_of(name: str) -> fn.Layer:
    """The CNN ``--model name`` picks (its help says what each is). One object a name
    (layers are immutable): the memory check, the step and the evaluations share the
    cost of a row found once (:func:`fnnet.train.row_bytes`)."""
    if name.startswith("vgg"):
        return vgg((16, 32, 64) if name == "vgg_small" else (32, 64, 128))
    if name.startswith("resnet"):
        return resnet((16, 32, 64), blocks=2 if name == "resnet14" else 1)
    if name == "tutorial":
        w, b = fn.init.normal(0.01), fn.init.zeros
        return fn.serial(
            fn.conv2d(1, 3, w_init=w, b_init=b), fn.relu(), fn.max_pool2d(2), fn.flatten(),
            fn.dense(64, w_init=w, b_init=b), fn.relu(), fn.dense(10, w_init=w, b_init=b),
        )
    c1, c2 = (32, 64) if name.startswith("cnn_wide") else (16, 32)
    drop = [fn.dropout(0.5)] if name.endswith("_drop") else []
    name = name.removesuffix("_drop")
    pad1 = "same" if name.endswith(("_same", "_same1")) else "valid"
    pad2 = "same" if name.endswith("_same") else "valid"
    norm = [fn.batch_norm()] if name.endswith("_bn") else []
    return fn.serial(
        fn.conv2d(c1, 3, padding=pad1), *norm, fn.relu(), fn.max_pool2d(2),
        fn.conv2d(c2, 3, padding=pad2), *norm, fn.relu(), fn.max_pool2d(2),
        fn.flatten(), fn.dense(128), fn.relu(), *drop, fn.dense(10),
    )


def _conv_bn(filters: int, stride: int = 1, size: int = 3) -> list[fn.Layer]:
    """A conv (``size`` x ``size``, padding ``size // 2``: strided, it halves the map) and batch norm."""
    return [fn.conv2d(filters, size, stride=stride, padding=size // 2), fn.batch_norm()]


def vgg(widths: tuple[int, ...]) -> fn.Layer:
    """VGG-style: per width, two (conv 3x3, batch norm, relu) and a 2x2 max pool; then a
    global average pool and dense 10. (N, 1, 28, 28) -> (N, 10)."""
    blocks = [layer for c in widths for layer in (*_conv_bn(c), fn.relu(), *_conv_bn(c), fn.relu(), fn.max_pool2d(2))]
    return fn.serial(*blocks, fn.global_avg_pool2d(), fn.dense(10))


def residual_block(filters: int, stride: int) -> fn.Layer:
    """relu(x + (conv-bn-relu-conv-bn)(x)); where the block halves the map or changes the
    width, the shortcut is a strided 1x1 conv with batch norm (He et al., 2016, option B)."""
    body = fn.serial(*_conv_bn(filters, stride), fn.relu(), *_conv_bn(filters))
    shortcut = None if stride == 1 else fn.serial(*_conv_bn(filters, stride, size=1))
    return fn.serial(fn.residual(body, shortcut), fn.relu())


def resnet(widths: tuple[int, ...], blocks: int) -> fn.Layer:
    """A small ResNet: a stem (conv 3x3, batch norm, relu) of ``widths[0]`` filters, then a
    stage of ``blocks`` residual blocks per width, each stage after the first halving the
    map; a global average pool and dense 10. (N, 1, 28, 28) -> (N, 10)."""
    stages = [residual_block(c, 2 if i and not b else 1) for i, c in enumerate(widths) for b in range(blocks)]
    return fn.serial(*_conv_bn(widths[0]), fn.relu(), *stages, fn.global_avg_pool2d(), fn.dense(10))
