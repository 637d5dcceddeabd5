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
}
"""The CNNs ``--model`` picks, with what each is (``model_of`` builds them)."""


@functools.cache
def model_of(name: str) -> fn.Layer:
    """The CNN ``--model name`` picks (its help says what each is). One object a name
    (layers are immutable): the memory check, the step and the evaluations share the
    cost of a row found once (:func:`fnnet.train.row_bytes`)."""
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
