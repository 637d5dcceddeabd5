"""Models leave fnnet as ONNX: :func:`to_onnx` writes what :func:`fnnet.predict` computes.

Every built-in layer and combinator carries its ONNX mapping (``Layer.onnx``, an
:class:`~fnnet.layers.OnnxFn`); a layer of yours declares its own the same way
(docs/interop.md). The nodes are collected by a :class:`Graph`, which needs no onnx;
:func:`to_onnx` alone imports onnx (the extra ``fnnet[onnx]``), checks the model with
``onnx.checker.check_model(full_check=True)`` and writes it atomically.

The file: opset :data:`OPSET`, IR version :data:`IR_VERSION` (what onnxruntime reads:
onnx's own default is newer), one input ``x`` (batch, *input_shape) and one output
``y`` (batch, *output_shape) with a dynamic batch axis, the params and running
statistics as initializers named by their paths (``conv2d_0.w``), and metadata:
fnnet's version, the params' sha256 (:func:`fnnet.checkpoint.digest`), the model
state's, the input shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._errors import InvalidTypeError, InvalidValueError, ShapeError
from ._io import atomic_write, check_writable
from ._version import __version__
from .checkpoint import digest
from .layers import Layer
from .runner import check_init_dtype, one_output
from .tree import EMPTY, check_like, tree_leaves, tree_map
from .typing import DTypeLike, Params, PyTree, Shape

__all__ = ["Graph", "IR_VERSION", "OPSET", "to_onnx"]

OPSET = 17
"""The ONNX opset of the files :func:`to_onnx` writes."""

IR_VERSION = 8
"""Their IR version: the one that came with opset 17, read by every onnxruntime since 1.11."""

BATCH = "batch"  # the name of the dynamic batch axis


class Graph:
    """The nodes and initializers of a model on its way to ONNX, collected by the layers'
    mappings (no onnx needed). ``dtype``: the dtype of the input, params and outputs."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.nodes: list[tuple[str, tuple[str, ...], str, dict]] = []  # (op, inputs, name (= its output's), attributes)
        self.initializers: dict[str, np.ndarray] = {}
        self.paths: dict[str, tuple[str, ...]] = {}  # an initializer from param(): its path in the params or state
        self.layers: dict[tuple[str, ...], Layer] = {}  # the layer at each path the graph went through
        self._path: tuple[str, ...] = ()

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        """Add the node ``op_type`` on ``inputs`` (names of values) with ``attributes``;
        returns the name of its one output."""
        name = "/".join((*self._path, f"{op_type}_{len(self.nodes)}"))
        self.nodes.append((op_type, inputs, name, attributes))
        return name

    def param(self, name: str, array: Any) -> str:
        """Add ``array`` (a param or a state leaf of the current layer, called ``name`` in its
        tree) as an initializer named by its path (``conv2d_0.w``); returns that name."""
        full = ".".join((*self._path, name))
        if full in self.initializers:
            raise InvalidValueError(f"{'/'.join(self._path) or '<model>'}: its ONNX mapping adds {name!r} twice")
        self.initializers[full] = np.asarray(array)
        self.paths[full] = (*self._path, name)
        return full

    def const(self, array: Any) -> str:
        """Add a constant (a shape, an axis list) as an initializer; returns its name."""
        full = "/".join((*self._path, f"const_{len(self.initializers)}"))
        self.initializers[full] = np.asarray(array)
        return full

    def floats(self, values: Any) -> str:
        """Add numbers (a scalar or an array) as a constant of the graph's dtype, the one a
        mapping's arithmetic with its input needs; returns its name."""
        return self.const(np.asarray(values, self.dtype))

    def layer(self, key: str, layer: Layer, params: Params, state: PyTree, x: Any, input_shape: Any
              ) -> tuple[Any, Any]:
        """Add the sub-layer ``key`` of a combinator on ``x`` (per-sample ``input_shape``):
        ``(output name, per-sample output shape)`` (between ``fan_out`` and a fan-in, names
        and shapes are tuples of them). A combinator's mapping calls this for
        each of its layers; names and errors then carry the path (``residual_2/block``)."""
        self._path = (*self._path, key) if key else self._path
        try:
            where = "/".join(self._path) or layer.name
            self.layers[self._path] = layer
            if layer.onnx is None:
                raise InvalidTypeError(
                    f"to_onnx: {where} (a {layer.name!r} layer) has no ONNX mapping: give it one as "
                    "Layer(..., onnx=...) or elementwise(..., onnx=...) (docs/interop.md)")
            y = layer.onnx(self, params, state, x, tuple(input_shape))
            if not (isinstance(y, str) or isinstance(y, tuple) and y and all(isinstance(v, str) for v in y)):
                raise InvalidTypeError(f"to_onnx: the ONNX mapping of {where} returned a {type(y).__name__}, "
                                       "not the name of its output (or a tuple of names, between fan_out and fan-in)")
            return y, layer.output_shape(params, input_shape, self.dtype)
        finally:
            self._path = self._path[:-1] if key else self._path


def to_onnx(model: Layer, params: Params, input_shape: Sequence[int], path: str | os.PathLike, *,
            model_state: PyTree = EMPTY, dtype: DTypeLike | None = None) -> Any:
    """Write ``model`` with ``params`` (and ``model_state``, batch norm's running
    statistics) as the ONNX file ``path``: what :func:`fnnet.predict` computes for inputs
    (N, *input_shape), N any. Returns the ``onnx.ModelProto`` written.

    ``dtype`` is the file's, for the input, the weights and the outputs: by default the
    params' (float32 for a model without any). onnxruntime runs every mapping in float32;
    its CPU provider has no float64 ``Conv`` or ``MaxPool``, so a float64 model meant for
    it is written with ``dtype=np.float32`` (the params are cast; the metadata's digests
    are the trained ones').

    Nothing is written unless the whole model maps and passes
    ``onnx.checker.check_model(full_check=True)``: a layer without a mapping is an
    :class:`~fnnet.InvalidTypeError` naming it, params that do not fit the model name the
    layer; the file is replaced atomically (an existing one stays whole until then).
    Needs onnx (``pip install onnx onnxruntime``; in fnnet's checkout, the extra:
    ``pip install '.[onnx]'``).
    """
    input_shape, own, out_shape = checked_model("to_onnx", model, params, input_shape, model_state)
    dtype = check_init_dtype("to_onnx", own if dtype is None else dtype)
    path = check_writable(path, "to_onnx: path")
    metadata = {"fnnet_version": __version__, "params_sha256": digest(params),
                "model_state_sha256": digest(model_state), "input_shape": json.dumps(list(input_shape)),
                "dtype": dtype.name}  # (the digests of what was trained, before any cast)
    if dtype != own:
        params, model_state = (tree_map(lambda a: a.astype(dtype), t) for t in (params, model_state))
    graph = Graph(dtype)
    y, _ = graph.layer("", model, params, model_state, "x", input_shape)  # (names an unmapped layer)
    onnx = require_onnx("to_onnx")
    _check_ops(onnx, graph)
    proto = _proto(onnx, graph, y, input_shape, out_shape, metadata)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InvalidValueError(f"to_onnx: the ONNX checker refused the model{_node_of(graph, str(exc))}: "
                                f"{str(exc).strip().splitlines()[0][:300]}") from None
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return proto


def checked_model(fun: str, model: Any, params: Params, input_shape: Any, model_state: PyTree
                  ) -> tuple[Shape, np.dtype, Shape]:
    """``(input_shape, the params' dtype, output_shape)`` after checking ``model``, the
    params against it, ``input_shape`` (one sample's) and ``model_state`` against the
    state the model keeps (structure, shapes and dtypes: a TreeMismatchError naming the
    path), each error naming ``fun`` and the argument."""
    if not isinstance(model, Layer):
        raise InvalidTypeError(f"{fun}: model must be a fnnet Layer, got {type(model).__name__}")
    input_shape = sample_shape(fun, input_shape)
    own = params_dtype(params)
    out_shape = one_output(model, model.output_shape(params, input_shape, own))  # (checks params and shape)
    if model.stateful and not model_state:
        raise InvalidValueError(f"{fun}: the {model.name} model has state (batch norm): pass "
                                "model_state=state.model_state, the running statistics predict uses")
    check_like(model_state, model.init_state(params) if model.stateful else EMPTY,
               f"{fun}: model_state does not fit the model and its {own} params")
    return input_shape, own, out_shape


def sample_shape(fun: str, input_shape: Any) -> Shape:
    """``input_shape`` as a tuple of positive ints, or a ShapeError naming ``fun``."""
    try:
        shape = tuple(int(d) for d in input_shape)
        if all(d == e and not isinstance(e, bool) for d, e in zip(shape, input_shape, strict=True)) \
                and all(d > 0 for d in shape):
            return shape
    except (TypeError, ValueError):
        pass
    raise ShapeError(f"{fun}: input_shape must be one sample's shape, a sequence of positive ints, got {input_shape!r}")


def _check_ops(onnx: Any, graph: Graph) -> None:
    """An InvalidValueError naming the layer whose mapping emitted an op opset 17 lacks."""
    for op, _, name, _ in graph.nodes:
        if not onnx.defs.has(op, max_inclusive_version=OPSET):
            raise InvalidValueError(f"to_onnx: the ONNX mapping of {_layer_of(name)} emits {op!r}, which is not an "
                                    f"operator of ONNX opset {OPSET}")


def _node_of(graph: Graph, message: str) -> str:
    """`` at <layer>`` for the first node the checker's message names, or ''."""
    for _, _, name, _ in graph.nodes:
        if name in message:
            return f" at {_layer_of(name)}"
    return ""


def _layer_of(node: str) -> str:
    """The layer path a node's name (``residual_2/block/Conv_3``) starts with."""
    return node.rsplit("/", 1)[0] if "/" in node else "the model"


def params_dtype(params: Params) -> np.dtype:
    """The dtype of ``params`` (its first leaf's; float32 for a model without params)."""
    leaves = tree_leaves(params)
    return leaves[0].dtype if leaves else np.dtype(np.float32)


def require_onnx(what: str) -> Any:
    """The onnx module, or an error saying which extra brings it."""
    try:
        import onnx
    except ImportError:
        raise InvalidTypeError(f"{what} needs onnx: pip install onnx onnxruntime") from None
    return onnx


def _proto(onnx: Any, graph: Graph, y: str, input_shape: Shape, out_shape: Shape, metadata: dict) -> Any:
    """The ModelProto of ``graph``, with input ``"x"`` and the value ``y`` as its output ``"y"``."""
    h, elem = onnx.helper, onnx.helper.np_dtype_to_tensor_dtype(graph.dtype)

    def named(value: str) -> str:
        return "y" if value == y else value

    nodes = [h.make_node(op, [named(v) for v in inputs], [named(name)], name=name, **attrs)
             for op, inputs, name, attrs in graph.nodes]
    if y not in {node[2] for node in graph.nodes}:  # a mapping that returned its input or an initializer
        nodes.append(h.make_node("Identity", [y], ["y"], name="output"))
    inits = [onnx.numpy_helper.from_array(np.ascontiguousarray(a), name) for name, a in graph.initializers.items()]
    g = h.make_graph(nodes, "fnnet", [h.make_tensor_value_info("x", elem, [BATCH, *input_shape])],
                     [h.make_tensor_value_info("y", elem, [BATCH, *out_shape])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", OPSET)], producer_name="fnnet",
                         producer_version=__version__, ir_version=IR_VERSION)
    h.set_model_props(model, metadata)
    return model
