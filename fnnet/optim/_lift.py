"""Lifting a per-array rule to trees: :func:`elementwise`, the one place that packs.

A rule written for one array (``u -> u * -lr``, Adam's moments...) is lifted to params
trees, as jax's old ``optimizers`` decorator lifted its functions. The lifted transform
runs the rule once over all params when they are views of one flat vector (the
gradients a training step hands it, and the params and state trees this helper and
:func:`~fnnet.optim.apply_updates` return: :func:`fnnet.flat.flat_of`), packs trees of
one dtype that are not (once: what it returns is), and otherwise runs the rule leaf by
leaf. An elementwise rule gives the same bits either way, so no caller needs to know.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._errors import InvalidValueError, TreeMismatchError
from ..flat import Layout, flat_of
from ..tree import EMPTY, FrozenDict, tree_map, tree_structure, tree_unflatten
from ..typing import Array, OptState, PyTree
from ._base import GradientTransformation

__all__ = ["elementwise"]

Rule = Callable[..., tuple[Array, tuple[Array, ...]]]


def elementwise(
    rule: Rule, slots: Mapping[str, Callable[[Array], Array]] | None = None, *,
    scalars: Callable[[], Mapping[str, Any]] | None = None,
    advance: Callable[[Mapping[str, Any]], tuple[Any, Mapping[str, Any]]] | None = None,
    needs_params: str | None = None,
) -> GradientTransformation:
    """A transformation from a per-array rule: ``rule(ctx, u, *slots[, p]) -> (u', slots')``.

    * ``u``: the updates (an array: a leaf, or all leaves as one vector); ``slots``: the
      state's params-shaped arrays, named and made by ``slots`` (``{"mu": np.zeros_like}``:
      ``name -> make(params_leaf)``), in that order; ``p``: the params, when
      ``needs_params`` is the transform's name (for the error when they are missing).
      The rule returns the new updates and the new slot arrays, as a tuple, in order.
    * ``scalars()``: the state's other entries at step 0 (a counter, a learning rate);
      ``advance(state) -> (ctx, entries)``: once a step, what the rule gets as ``ctx``
      (a rate, bias corrections) and the scalar entries of the new state.

    The state is a FrozenDict of the scalar entries, then one params-shaped tree per
    slot. The rule must act on each element alone (its output at ``i`` depends on the
    inputs at ``i`` only): then it gives the same bits on one vector as leaf by leaf.
    A slot array that is (a view of) ``u`` is copied before it is kept: the updates a
    training step passes in are its gradient buffer, which the next step overwrites.
    """
    slots = dict(slots or {})
    names = tuple(slots)

    def init(params: PyTree) -> OptState:
        entries = dict(scalars()) if scalars is not None else {}
        for name, make in slots.items():
            entries[name] = tree_map(make, params)
        return FrozenDict(entries) if entries else EMPTY

    def update(updates: PyTree, state: OptState, params: PyTree = None) -> tuple[PyTree, OptState]:
        if needs_params is not None and params is None:
            raise InvalidValueError(f"{needs_params} needs params: call update(grads, state, params)")
        ctx, entries = advance(state) if advance is not None else (None, None)
        trees = [state[n] for n in names] if names else []
        if needs_params is not None:
            trees.append(params)
        flat = _on_vectors(rule, ctx, updates, trees, len(names))
        if flat is not None:
            out, new_slots = flat
        else:  # leaf by leaf (trees of several dtypes; structures that differ get an error naming the path)
            out, new_slots = _leaf_by_leaf(rule, ctx, updates, trees, len(names))
        if not names:
            return out, state if entries is None else FrozenDict(entries)
        return out, FrozenDict({**(entries or {}), **dict(zip(names, new_slots))})

    return GradientTransformation(init, update)


def _layout(updates: PyTree) -> Layout | None:
    """The flat layout of a tree of ``updates``, or None when they cannot be one vector
    (several dtypes, leaves that are not arrays, no leaves)."""
    try:
        layout = Layout.of(updates)
    except (TreeMismatchError, AttributeError):  # (several dtypes; leaves that are not arrays)
        return None
    return layout if layout.size else None


def _on_vectors(rule: Rule, ctx: Any, updates: PyTree, trees: list, n_slots: int) -> tuple | None:
    """The rule once over ``updates`` and ``trees`` as flat vectors of one layout, or None
    when one of them is not of that layout."""
    found = flat_of(updates)  # (a step's gradients, or what a transform of this kind returned)
    if found is None:
        packed = _layout(updates)
        if packed is None:
            return None
        found = (packed.pack(updates), packed)
    u, layout = found
    vectors = [u]
    for tree in trees:
        v = layout.flat(tree)
        if v is None:
            return None
        vectors.append(v)
    out, new = rule(ctx, *vectors)
    return (updates if out is u else layout.views(out)), [layout.unpack(_own(a, u)) for a in new[:n_slots]]


def _leaf_by_leaf(rule: Rule, ctx: Any, updates: PyTree, trees: list, n_slots: int) -> tuple[PyTree, list]:
    outs: list = []
    news: list = []

    def one(u: Array, *rest: Array) -> None:
        out, new = rule(ctx, u, *rest)
        outs.append(out)
        news.append([_own(np.asarray(a), u) for a in new[:n_slots]])

    tree_map(one, updates, *trees)
    treedef = tree_structure(updates)
    return tree_unflatten(treedef, outs), [tree_unflatten(treedef, [n[i] for n in news]) for i in range(n_slots)]


def _own(a: Array, u: Array) -> Array:
    """A read-only slot array, copied first when it may share memory with the updates
    ``u`` (the caller may reuse theirs: a training step's gradient buffer)."""
    if np.may_share_memory(a, u):
        a = a.copy()
    a.setflags(write=False)
    return a
