"""Layers: each constructor returns a :class:`Layer` record of pure functions.

``Layer`` and the protocol's function types (``InitFn``, ``ForwardFn``...) live in
``_layer.py``, what a hook sees (``Sig``, and ``Carry``, what training carries beside it) in
``_sig.py``, the fusion tags in ``_fusion.py``, the runner (``prepare``, ``run``, ``run_backward``; public as
``fnnet.runner``) in ``_runner.py``; the combinators
(``serial``, ``residual``) and ``summary`` in ``combinators.py``, which runs its
sub-layers through that runner. For writing layers: ``elementwise`` makes a layer without params from two
array functions, and ``check_params`` is the params check the built-in layers use.
``Fusion`` tags, ``with_bias`` and ``normalized`` are how the built-in layers take part in fusion
(``_fuse.py``, whose ``RULES`` pick the fused runs of ``serial``). ``OnnxFn`` is the
optional ONNX mapping a layer carries (``fnnet.export``), ``onnx_op`` the mapping of a
layer that is one ONNX operator.
"""

from ._checks import check_params
from ._fusion import Fusion, normalized, with_bias
from ._layer import BackwardFn, BuffersFn, CheckFn, ForwardFn, InitFn, Layer, OnnxFn, onnx_op
from ._sig import Carry, Sig
from .activations import elementwise, elu, gelu, leaky_relu, log_softmax, relu, sigmoid, silu, softmax, softplus, tanh
from .combinators import fan_in_concat, fan_in_sum, fan_out, parallel, residual, serial
from .conv import conv2d, conv_algorithm
from .conv_transpose import conv_transpose2d
from .dense import dense
from .dropout import dropout
from .norm import batch_norm, group_norm, layer_norm
from .pool import avg_pool2d, global_avg_pool2d, max_pool2d
from .reshape import flatten, identity, reshape
from .summary import summary
from .upsample import upsample2d

__all__ = [
    "BackwardFn",
    "BuffersFn",
    "Carry",
    "CheckFn",
    "ForwardFn",
    "Fusion",
    "InitFn",
    "Layer",
    "OnnxFn",
    "Sig",
    "avg_pool2d",
    "batch_norm",
    "check_params",
    "conv2d",
    "conv_algorithm",
    "conv_transpose2d",
    "dense",
    "dropout",
    "elementwise",
    "elu",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "flatten",
    "gelu",
    "global_avg_pool2d",
    "group_norm",
    "identity",
    "layer_norm",
    "leaky_relu",
    "log_softmax",
    "max_pool2d",
    "normalized",
    "onnx_op",
    "parallel",
    "relu",
    "reshape",
    "residual",
    "serial",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "summary",
    "tanh",
    "upsample2d",
    "with_bias",
]
