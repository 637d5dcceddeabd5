"""Layers: each constructor returns a :class:`Layer` record of pure functions."""

from ._base import Layer
from .activations import leaky_relu, relu, sigmoid, tanh
from .conv import conv2d
from .dense import dense
from .pool import avg_pool2d, max_pool2d
from .reshape import flatten

__all__ = [
    "Layer",
    "avg_pool2d",
    "conv2d",
    "dense",
    "flatten",
    "leaky_relu",
    "max_pool2d",
    "relu",
    "sigmoid",
    "tanh",
]
