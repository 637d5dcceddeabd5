"""PyTorch weights in and out, without torch: state dicts as ``name -> array`` mappings.

:func:`from_state_dict` puts a PyTorch model's weights into a structurally matching
fnnet model; :func:`to_state_dict` gives fnnet's as a state dict that
``torch.nn.Module.load_state_dict`` takes. Either side can be a safetensors file
(:func:`fnnet.checkpoint.write_tensors`; ``safetensors.torch.save_file`` on torch's), so
torch itself is never needed here.

:data:`MODULES` says what each built-in layer with weights is to PyTorch: ``conv2d`` is
``Conv2d`` (weight OIHW, as fnnet's), ``dense`` is ``Linear`` (weight (out, in): fnnet's
transposed), ``batch_norm`` is ``BatchNorm1d``/``BatchNorm2d`` (weight, bias,
running_mean, running_var; ``num_batches_tracked`` is written as 0 and ignored when
read). Layers without weights (activations, pooling, flatten) have no entries, in
either library. The layers are found as the ONNX export finds them (:class:`fnnet.export.Graph`,
through every combinator), and matched in order: fnnet's layers with weights in the
order of the forward pass, torch's modules in the state dict's order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import random
from ._errors import InvalidTypeError, ShapeError
from .checkpoint import read_tensors
from .export import Graph, params_dtype
from .layers._checks import check_init_dtype
from .layers._layer import Layer
from .tree import EMPTY, freeze, tree_leaves_with_path, tree_structure, tree_unflatten
from .typing import DTypeLike, Params, PyTree, Shape

__all__ = ["MODULES", "from_state_dict", "to_state_dict"]

MODULES: dict[str, dict[str, tuple[str, bool]]] = {
    # fnnet layer -> {its param or state leaf: (PyTorch's name, transposed)}, in PyTorch's order
    "conv2d": {"w": ("weight", False), "b": ("bias", False)},
    "dense": {"w": ("weight", True), "b": ("bias", False)},
    "batch_norm": {"scale": ("weight", False), "shift": ("bias", False), "mean": ("running_mean", False),
                   "var": ("running_var", False)},
    "conv_transpose2d": {"w": ("weight", False), "b": ("bias", False)},
    "layer_norm": {"scale": ("weight", False), "shift": ("bias", False)},
    "group_norm": {"scale": ("weight", False), "shift": ("bias", False)},
}
"""What each built-in layer with weights is to PyTorch: ``{layer name: {leaf: (PyTorch's
name, transposed)}}``."""
UNUSED = ("num_batches_tracked",)  # (BatchNorm's step counter: only its momentum=None mode reads it)


def _modules(model: Layer, params: Params, state: PyTree, input_shape: Shape) -> list[tuple[str, str, list]]:
    """``(fnnet layer path, torch module name, [(torch name, tree path, transposed), ...])``
    for each layer with weights, in the order of the forward pass."""
    graph = Graph(params_dtype(params))
    graph.layer("", model, params, state, "x", input_shape)
    owned: dict[tuple, list[tuple]] = {}  # layer path -> its leaves' paths, in the order the mapping added them
    for path in graph.paths.values():
        owned.setdefault(path[:-1], []).append(path)
    out = []
    for layer_path, paths in owned.items():
        layer, where = graph.layers[layer_path], "/".join(layer_path) or model.name
        names = MODULES.get(layer.name)
        if names is None or {p[-1] for p in paths} != set(names):
            raise InvalidTypeError(f"{where}: a {layer.name!r} layer has no PyTorch module here (the layers with "
                                   f"weights that map: {', '.join(MODULES)})")
        # "conv2d_0" is serial's 0-th module, as nn.Sequential names it; other keys ("block") stay
        module = ".".join(m[1] if (m := re.fullmatch(r"[A-Za-z0-9_]+_(\d+)", k)) else k for k in layer_path)
        out.append((where, module, [(torch, (*layer_path, leaf), transposed)
                                    for leaf, (torch, transposed) in names.items()]))
    return out


def to_state_dict(model: Layer, params: Params, input_shape: Sequence[int], *, model_state: PyTree = EMPTY
                  ) -> dict[str, np.ndarray]:
    """``model``'s weights as a PyTorch state dict (``"0.weight"``: serial's layers are
    numbered as ``nn.Sequential`` numbers its modules; a residual's ``block`` and
    ``shortcut`` keep their names), for inputs of per-sample ``input_shape``. Save it with
    :func:`fnnet.checkpoint.write_tensors` and load it in torch with
    ``model.load_state_dict(safetensors.torch.load_file(path))``."""
    input_shape = tuple(input_shape)
    model.output_shape(params, input_shape, params_dtype(params))
    values = dict(tree_leaves_with_path(params)) | dict(tree_leaves_with_path(model_state))
    out = {}
    for _, module, entries in _modules(model, params, model_state, input_shape):
        prefix = f"{module}." if module else ""
        for name, path, transposed in entries:
            a = values[path]
            out[prefix + name] = np.array(a.T if transposed else a, order="C")  # (a copy: torch wants writeable)
        if "running_mean" in {name for name, _, _ in entries}:  # BatchNorm's state dict also holds its step counter
            out[prefix + UNUSED[0]] = np.zeros((), np.int64)
    return out


def from_state_dict(model: Layer, state_dict: Mapping[str, Any] | str | os.PathLike, input_shape: Sequence[int], *,
                    dtype: DTypeLike | None = None) -> tuple[Params, PyTree]:
    """``(params, model_state)`` of ``model`` from a PyTorch state dict: a mapping of names
    to arrays (or CPU tensors), or the path of a safetensors file. ``dtype``: the params'
    (default: the state dict's floating dtype). The modules are matched in order (module
    docstring); a module without ``bias`` (``bias=False``) gives zeros. A mismatch is a
    :class:`~fnnet.ShapeError` naming the first fnnet layer and torch module that differ."""
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = read_tensors(state_dict)[0]
    if not isinstance(state_dict, Mapping):
        raise InvalidTypeError(f"from_state_dict: state_dict must be a mapping or a path, got "
                               f"{type(state_dict).__name__}")
    arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, a in arrays.items():
        module, _, name = key.rpartition(".")
        if name not in UNUSED:
            groups.setdefault(module, {})[name] = a
    floats = [a.dtype for a in arrays.values() if a.dtype.kind == "f"]
    dtype = check_init_dtype("from_state_dict", dtype if dtype is not None else (floats[0] if floats else np.float32))
    input_shape = tuple(input_shape)
    template, _ = model.init(random.key(0), input_shape, dtype=dtype)
    template_state = model.init_state(template)
    values = dict(tree_leaves_with_path(template)) | dict(tree_leaves_with_path(template_state))
    torch_modules, modules = list(groups.items()), _modules(model, template, template_state, input_shape)
    new = {}
    for i, (where, _, entries) in enumerate(modules):
        want = {name: values[path].shape[::-1] if transposed else values[path].shape
                for name, path, transposed in entries}
        if i >= len(torch_modules):
            raise ShapeError(f"from_state_dict: {where} takes {_fmt(want)}; the state dict has no module left "
                             f"(it has {len(torch_modules)} with weights)")
        module, got = torch_modules[i]
        got = dict(got)
        if "bias" not in got and "bias" in want:  # (Conv2d(..., bias=False))
            got["bias"] = np.zeros(want["bias"], dtype)
        if {k: a.shape for k, a in got.items()} != want:
            raise ShapeError(f"from_state_dict: {where} takes {_fmt(want)}, the state dict's module {module!r} has "
                             f"{_fmt({k: a.shape for k, a in got.items()})}")
        for name, path, transposed in entries:
            new[path] = (got[name].T if transposed else got[name]).astype(dtype)
    if len(torch_modules) > len(modules):
        raise ShapeError(f"from_state_dict: the state dict's module {torch_modules[len(modules)][0]!r} has no fnnet "
                         f"layer left to go to (the model has {len(modules)} with weights)")
    return _filled(template, new), _filled(template_state, new)


def _filled(tree: PyTree, new: dict) -> PyTree:
    """``tree`` with the leaves at the paths in ``new`` replaced."""
    leaves = [np.ascontiguousarray(new.get(path, leaf)) for path, leaf in tree_leaves_with_path(tree)]
    return freeze(tree_unflatten(tree_structure(tree), leaves))


def _fmt(shapes: dict) -> str:
    return ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
