"""Layers: each constructor returns a :class:`Layer` record of pure functions."""

from ._base import Layer, bind
from .activations import leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from .conv import conv2d
from .dense import dense
from .dropout import dropout
from .norm import batch_norm
from .pool import avg_pool2d, global_avg_pool2d, max_pool2d
from .reshape import flatten, identity, reshape

__all__ = [
    "Layer",
    "avg_pool2d",
    "batch_norm",
    "bind",
    "conv2d",
    "dense",
    "dropout",
    "flatten",
    "global_avg_pool2d",
    "identity",
    "leaky_relu",
    "log_softmax",
    "max_pool2d",
    "relu",
    "reshape",
    "sigmoid",
    "softmax",
    "tanh",
]
