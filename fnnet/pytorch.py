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
through every combinator); which torch module goes to which is never a guess between
modules of the same shapes (:func:`from_state_dict` says how it is known).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import random
from ._errors import DTypeError, InvalidTypeError, InvalidValueError, ShapeError
from .checkpoint import read_tensors
from .export import Graph, checked_model, params_dtype, sample_shape
from .layers import Layer
from .runner import check_init_dtype
from .tree import EMPTY, freeze, tree_leaves_with_path, tree_structure, tree_unflatten
from .typing import DTypeLike, Params, PyTree, Shape

__all__ = ["MODULES", "from_state_dict", "layer_paths", "to_state_dict"]

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
    input_shape, _, _ = checked_model("to_state_dict", model, params, input_shape, model_state)
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


def from_state_dict(model: Layer, state_dict: Mapping[str, Any] | str | os.PathLike | Any,
                    input_shape: Sequence[int], *, dtype: DTypeLike | None = None,
                    modules: Mapping[str, str] | None = None) -> tuple[Params, PyTree]:
    """``(params, model_state)`` of ``model`` from PyTorch weights: a state dict (a mapping of
    names to arrays or CPU tensors), the path of a safetensors file, or the ``torch.nn.Module``
    itself. ``input_shape``: one sample's shape. ``dtype``: the params' (default: the state
    dict's floating dtype). ``modules``: ``{fnnet layer path: torch module name}`` for every
    fnnet layer with weights (the paths :func:`layer_paths` gives), when nothing else says
    which module is which.

    Which torch module goes to which fnnet layer (never a guess between modules of the same
    shapes; the module docstring has the table of names):

    * ``modules`` given: that mapping;
    * a ``torch.nn.Module``: its forward order, observed with forward hooks over one batch
      of zeros (in eval mode, without gradients; its mode is restored);
    * the state dict's module names are the ones :func:`to_state_dict` gives this model:
      by name;
    * its modules are told apart by numeric indices alone (``nn.Sequential``,
      ``nn.ModuleList``): in the order of those numbers, whatever order the keys come in
      (a safetensors file sorts them as strings: ``"10"`` before ``"2"``);
    * otherwise by shapes, where each module's shapes are its own; modules that share
      their shapes (``fc1`` and ``fc2``, both ``Linear(16, 16)``) are an
      :class:`~fnnet.InvalidValueError` naming them and the two ways out.

    A module without ``bias`` (``bias=False``) gives zeros. A mismatch is a
    :class:`~fnnet.ShapeError` naming the fnnet layer and torch module that differ."""
    input_shape = sample_shape("from_state_dict", input_shape)
    order = None
    if _is_torch_module(state_dict):
        module: Any = state_dict
        order, state_dict = _forward_order(module, input_shape), module.state_dict()
    elif isinstance(state_dict, (str, os.PathLike)):
        state_dict = read_tensors(state_dict)[0]
    if not isinstance(state_dict, Mapping):
        raise InvalidTypeError(f"from_state_dict: state_dict must be a mapping, a path or a torch.nn.Module, got "
                               f"{type(state_dict).__name__}")
    groups = _groups(state_dict)
    floats = [a.dtype for g in groups.values() for a in g.values() if a.dtype.kind == "f"]
    dtype = check_init_dtype("from_state_dict", dtype if dtype is not None else (floats[0] if floats else np.float32))
    template, _ = model.init(random.key(0), input_shape, dtype=dtype)
    template_state = model.init_state(template)
    values = dict(tree_leaves_with_path(template)) | dict(tree_leaves_with_path(template_state))
    layers = _modules(model, template, template_state, input_shape)
    wants = [{name: values[path].shape[::-1] if transposed else values[path].shape
              for name, path, transposed in entries} for _, _, entries in layers]
    pairs = _match(layers, wants, groups, order, modules)
    new = {}
    for (where, _, entries), want, module in zip(layers, wants, pairs, strict=True):
        got = dict(groups[module])
        if "bias" not in got and "bias" in want:  # (Conv2d(..., bias=False))
            got["bias"] = np.zeros(want["bias"], dtype)
        if {k: a.shape for k, a in got.items()} != want:
            raise ShapeError(f"from_state_dict: {where} takes {_fmt(want)}, the state dict's module {module!r} has "
                             f"{_fmt({k: a.shape for k, a in got.items()})}")
        for name, path, transposed in entries:
            a = _as_number(got[name], module, name)
            new[path] = (a.T if transposed else a).astype(dtype)
    return _filled(template, new), _filled(template_state, new)


def layer_paths(model: Layer, input_shape: Sequence[int], *, dtype: DTypeLike = np.float32) -> list[str]:
    """The paths of ``model``'s layers with weights, in the order of the forward pass: the
    keys of :func:`from_state_dict`'s ``modules`` (``"dense_0"``, ``"residual_2/block/conv2d_0"``)."""
    input_shape = sample_shape("layer_paths", input_shape)
    params, _ = model.init(random.key(0), input_shape, dtype=check_init_dtype("layer_paths", dtype))
    return [where for where, _, _ in _modules(model, params, model.init_state(params), input_shape)]


def _groups(state_dict: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """``{module name: {its tensor's name: array}}``, the step counters left out."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, v in state_dict.items():
        if not isinstance(key, str):
            raise InvalidTypeError(f"from_state_dict: the state dict's keys must be strings, got {key!r}")
        module, _, name = key.rpartition(".")
        if name not in UNUSED:
            groups.setdefault(module, {})[name] = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
    return groups


def _as_number(a: np.ndarray, module: str, name: str) -> np.ndarray:
    if a.dtype.kind not in "fiu":
        raise DTypeError(f"from_state_dict: the state dict's {module + '.' if module else ''}{name} is {a.dtype}, "
                         f"not a number type")
    return a


def _match(layers: list, wants: list[dict], groups: dict[str, dict], order: list[str] | None,
           modules: Mapping[str, str] | None) -> list[str]:
    """The torch module of each fnnet layer with weights (docstring of :func:`from_state_dict`)."""
    wheres = [where for where, _, _ in layers]
    if modules is not None:
        return _given(wheres, groups, modules)
    if order is None and {module for _, module, _ in layers} == set(groups):
        return [module for _, module, _ in layers]
    if order is None and _numbered(list(groups)):
        order = sorted(groups, key=_numbers)
    if order is not None:
        if len(order) < len(wheres):
            first = len(order)  # (the first fnnet layer without a module)
            raise ShapeError(f"from_state_dict: {wheres[first]} takes {_fmt(wants[first])}; the state dict has no "
                             f"module left (it has {len(order)} with weights)")
        if len(order) > len(wheres):
            raise ShapeError(f"from_state_dict: the state dict's module {order[len(wheres)]!r} has no fnnet "
                             f"layer left to go to (the model has {len(wheres)} with weights)")
        return list(order)
    return _by_shapes(wheres, wants, groups)


def _given(wheres: list[str], groups: dict[str, dict], modules: Mapping[str, str]) -> list[str]:
    if not isinstance(modules, Mapping):
        raise InvalidTypeError(f"from_state_dict: modules must be a mapping of fnnet layer paths to torch module "
                               f"names, got {type(modules).__name__}")
    unknown = [k for k in modules if k not in wheres]
    missing = [w for w in wheres if w not in modules]
    if unknown or missing:
        raise InvalidValueError(f"from_state_dict: modules must map every fnnet layer with weights and no other "
                                f"({', '.join(wheres)}); " + "; ".join(
                                    ([f"not layers of the model: {', '.join(map(repr, unknown))}"] if unknown else [])
                                    + ([f"not mapped: {', '.join(missing)}"] if missing else [])))
    absent = sorted({str(m) for m in modules.values()} - set(groups))
    if absent:
        raise InvalidValueError(f"from_state_dict: modules names {', '.join(map(repr, absent))}, not modules of the "
                                f"state dict (its modules: {', '.join(map(repr, groups))})")
    chosen = [modules[w] for w in wheres]
    twice = sorted({m for m in chosen if chosen.count(m) > 1})
    unused = [m for m in groups if m not in chosen]
    if twice or unused:
        raise InvalidValueError("from_state_dict: modules must use each module of the state dict once; "
                                + "; ".join(([f"used twice: {', '.join(map(repr, twice))}"] if twice else [])
                                            + ([f"unused: {', '.join(map(repr, unused))}"] if unused else [])))
    return chosen


def _numbers(module: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in module.split("."))


def _numbered(names: list[str]) -> bool:
    """Whether the names alone say the modules' order: any two differ first at a numeric
    index (``features.0`` and ``features.10``), and none is another's prefix."""
    split = [n.split(".") if n else [] for n in names]
    for a, b in ((a, b) for i, a in enumerate(split) for b in split[i + 1:]):
        k = next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), None)
        if k is None or not (a[k].isdigit() and b[k].isdigit()):
            return False
    return True


def _by_shapes(wheres: list[str], wants: list[dict], groups: dict[str, dict]) -> list[str]:
    def shapes(got: dict) -> tuple:
        return tuple(sorted((k, tuple(a.shape)) for k, a in got.items()))

    def want_shapes(want: dict, module_has_bias: bool) -> tuple:
        return tuple(sorted((k, tuple(v)) for k, v in want.items() if k != "bias" or module_has_bias))

    seen: dict[tuple, list[str]] = {}
    for module, got in groups.items():
        seen.setdefault(shapes(got), []).append(module)
    shared = next((ms for ms in seen.values() if len(ms) > 1), None)
    if shared is not None:
        raise InvalidValueError(
            f"from_state_dict: the state dict does not say its modules' order, and "
            f"{', '.join(map(repr, shared))} have the same shapes ({_fmt(dict(groups[shared[0]]), arrays=True)}): "
            f"which fnnet layer each goes to cannot be told. Pass the torch module itself (its forward order is "
            f"observed), or modules={{fnnet layer: torch module}} for the layers "
            f"{', '.join(wheres)}")
    chosen: list[str] = []
    for where, want in zip(wheres, wants, strict=True):
        found = [m for m, got in groups.items() if shapes(got) == want_shapes(want, "bias" in got)]
        if not found:
            raise ShapeError(f"from_state_dict: {where} takes {_fmt(want)}; no module of the state dict has those "
                             f"shapes, and its names do not say their order (its modules: "
                             f"{', '.join(map(repr, groups))})")
        if found[0] in chosen:
            raise InvalidValueError(f"from_state_dict: {where} and {wheres[chosen.index(found[0])]} both take "
                                    f"{_fmt(want)} and the state dict has one such module, {found[0]!r}")
        chosen.append(found[0])
    unused = [m for m in groups if m not in chosen]
    if unused:
        raise ShapeError(f"from_state_dict: the state dict's module {unused[0]!r} has no fnnet layer left to go to "
                         f"(the model has {len(wheres)} with weights)")
    return chosen


def _is_torch_module(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("state_dict", "register_forward_hook", "named_modules"))


def _forward_order(module: Any, input_shape: Shape) -> list[str]:
    """The names of ``module``'s submodules with weights, in the order its forward pass
    calls them over one batch of zeros."""
    import torch

    owners = {name: m for name, m in module.named_modules()
              if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))}
    calls: list[str] = []
    handles = [m.register_forward_hook(lambda m, i, o, name=name: calls.append(name)) for name, m in owners.items()]
    first = next(iter(module.parameters()), None)
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros((1, *input_shape), dtype=first.dtype if first is not None else torch.float32))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    twice = sorted({n for n in calls if calls.count(n) > 1})
    if twice:
        raise InvalidValueError(f"from_state_dict: the torch module runs {', '.join(map(repr, twice))} more than once "
                                f"in its forward pass (shared weights): fnnet's layers each hold their own; pass "
                                f"modules={{fnnet layer: torch module}}")
    never = [n for n in owners if n not in calls]
    if never:
        raise InvalidValueError(f"from_state_dict: the torch module's forward pass never ran "
                                f"{', '.join(map(repr, never))}, which hold weights")
    return calls


def _filled(tree: PyTree, new: dict) -> PyTree:
    """``tree`` with the leaves at the paths in ``new`` replaced."""
    leaves = [np.ascontiguousarray(new.get(path, leaf)) for path, leaf in tree_leaves_with_path(tree)]
    return freeze(tree_unflatten(tree_structure(tree), leaves))


def _fmt(shapes: dict, arrays: bool = False) -> str:
    return ", ".join(f"{k} {tuple(v.shape if arrays else v)}" for k, v in shapes.items())
