"""fnnet: a functional neural-network library in numpy with Pythran-compiled kernels.

Params are immutable pytrees; every layer is a pair of pure functions; ``serial``
composes layers; ``train_step`` folds model, loss and optimizer into one pure step,
and ``jit`` specialises it.
"""

from . import checkpoint, data, distributed, init, kernels, layers, losses, metrics, optim, random, runtime, tree
from ._errors import (
    DataError,
    DataNotFoundError,
    DivergenceError,
    DTypeError,
    FnnetError,
    InvalidTypeError,
    InvalidValueError,
    ShapeError,
    TreeMismatchError,
)
from ._jit import JitStep, jit
from .combinators import residual, serial, summary
from .layers import (
    Layer,
    avg_pool2d,
    batch_norm,
    conv2d,
    dense,
    dropout,
    flatten,
    global_avg_pool2d,
    identity,
    leaky_relu,
    log_softmax,
    max_pool2d,
    relu,
    reshape,
    sigmoid,
    softmax,
    tanh,
)
from .losses import mse, softmax_cross_entropy
from .train import Step, TrainState, predict, train_step
from .tree import freeze, param_count, tree_flatten, tree_leaves, tree_map, tree_structure, tree_unflatten

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "DataNotFoundError",
    "DivergenceError",
    "DTypeError",
    "FnnetError",
    "InvalidTypeError",
    "InvalidValueError",
    "JitStep",
    "Layer",
    "ShapeError",
    "Step",
    "TrainState",
    "TreeMismatchError",
    "avg_pool2d",
    "batch_norm",
    "checkpoint",
    "data",
    "conv2d",
    "dense",
    "distributed",
    "dropout",
    "flatten",
    "freeze",
    "global_avg_pool2d",
    "identity",
    "init",
    "jit",
    "kernels",
    "layers",
    "leaky_relu",
    "log_softmax",
    "losses",
    "max_pool2d",
    "metrics",
    "mse",
    "optim",
    "param_count",
    "predict",
    "random",
    "relu",
    "reshape",
    "runtime",
    "residual",
    "serial",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "summary",
    "tanh",
    "train_step",
    "tree",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
    "tree_structure",
    "tree_unflatten",
]
