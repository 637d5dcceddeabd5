"""Params trees as views of one flat vector (as ``jax.flatten_util.ravel_pytree``).

A training step's gradients are views of one flat vector, and so are the params and the
params-shaped parts of the optimizer state that an elementwise optimizer returns
(:func:`fnnet.optim.elementwise`): a tree that :meth:`Layout.views` made remembers its
vector (:func:`flat_of`), so each rule runs once over all parameters, with no packing
from the second step on. The trees a user sees are read-only views into those vectors.
"""

from __future__ import annotations

import weakref
from typing import Any

import attrs
import numpy as np

from ._errors import TreeMismatchError
from .tree import FrozenDict, TreeDef, _path_str, tree_leaves, tree_leaves_with_path, tree_structure

__all__ = ["Layout", "check_written", "flat_of", "marker_views", "unwritten"]

# Fresh gradient buffers hold this quiet-NaN bit pattern until backward writes them:
# arithmetic never produces it, so a leaf that still holds it was never written.
_UNWRITTEN: dict[np.dtype, np.unsignedinteger] = {
    np.dtype(np.float32): np.uint32(0x7FC45EED), np.dtype(np.float64): np.uint64(0x7FF8BAD05EED5EED)
}


@attrs.frozen
class Layout:
    """Where each leaf of a params tree lives in one flat vector of one dtype."""

    treedef: TreeDef
    shapes: tuple
    dtype: np.dtype
    size: int
    slices: tuple  # ((slice, shape), ...) per leaf, in flattening order
    # (slice, shape or None for a 1-d leaf) per leaf: what views cuts, found once
    _cuts: tuple = attrs.field(init=False, repr=False, eq=False)
    _build: Any = attrs.field(init=False, repr=False, eq=False)  # the treedef's compiled builder

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_cuts", tuple((sl, None if len(s) == 1 else s) for sl, s in self.slices))
        object.__setattr__(self, "_build", self.treedef.builder())

    @classmethod
    def of(cls, params: Any) -> Layout:
        """The layout of ``params`` (one per structure, shapes and dtype: made once)."""
        leaves = tree_leaves(params)
        dtypes = {leaf.dtype for leaf in leaves}
        if len(dtypes) > 1:
            raise TreeMismatchError(f"params must share one dtype, got {sorted(map(str, dtypes))}")
        treedef, shapes = tree_structure(params), tuple(leaf.shape for leaf in leaves)
        dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        known = _LAYOUTS.setdefault(treedef, {})
        layout = known.get((shapes, dtype))
        if layout is None:
            offsets = np.cumsum([0, *(leaf.size for leaf in leaves)]).tolist()
            slices = tuple((slice(o, e), s) for o, e, s in zip(offsets, offsets[1:], shapes))
            layout = known[shapes, dtype] = cls(treedef, shapes, dtype, offsets[-1], slices)
        return layout

    def matches(self, tree: Any) -> bool:
        """Whether ``tree`` has this structure, these shapes and this dtype."""
        if tree_structure(tree) is not self.treedef:
            return False
        return all(leaf.shape == s and leaf.dtype == self.dtype for leaf, s in zip(tree_leaves(tree), self.shapes))

    def pack(self, tree: Any) -> np.ndarray:
        """The leaves of ``tree`` (this layout) in one new flat vector."""
        leaves = tree_leaves(tree)
        if not leaves:
            return np.empty(0, self.dtype)
        return np.concatenate([np.ravel(leaf) for leaf in leaves])

    def views(self, flat: np.ndarray) -> Any:
        """A tree of views into ``flat``, one per leaf (C-contiguous); a mapping at its
        root remembers ``flat`` and this layout (:func:`flat_of`)."""
        tree = self._build([flat[sl] if s is None else flat[sl].reshape(s) for sl, s in self._cuts])
        if type(tree) is FrozenDict and self.size:  # (never EMPTY, the one empty mapping)
            object.__setattr__(tree, "_flat", (flat, self))
        return tree

    def flat(self, tree: Any) -> np.ndarray | None:
        """``tree``'s leaves as one vector of this layout: the vector it views (no copy)
        when :meth:`views` made it, a packed copy when it has this structure, shapes and
        dtype, else None."""
        known = getattr(tree, "_flat", None)
        if known is not None and known[1] is self:
            return known[0]
        return self.pack(tree) if self.matches(tree) else None

    def unpack(self, flat: np.ndarray) -> Any:
        """A tree of read-only views into ``flat``, which is sealed here."""
        flat.setflags(write=False)
        return self.views(flat)

    def fresh_grads(self) -> tuple[np.ndarray, Any]:
        """A flat gradient marked unwritten, and the tree of views a backward pass fills."""
        flat = np.empty(self.size, self.dtype)
        flat.view(_UNWRITTEN[self.dtype].dtype).fill(_UNWRITTEN[self.dtype])
        return flat, self.views(flat)

    def check_written(self, flat: np.ndarray, where: str) -> None:
        """TreeMismatchError naming the first leaf of ``flat`` that backward left unwritten."""
        marker = _UNWRITTEN[self.dtype]
        if (flat.view(marker.dtype) == marker).any():  # (one test over the vector; the leaf's name only then)
            check_written(self.views(flat), where)


def marker_views(tree: Any) -> tuple:
    """``((bits, marker), ...)`` per leaf of a gradient tree: each leaf seen as unsigned
    ints, and the marker that :meth:`Layout.check_written` looks for. Made once (with a
    plan); a step fills ``bits`` with ``marker`` before a backward pass, and what the pass
    does not write stays marked (:func:`unwritten`)."""
    return tuple((leaf.view(_UNWRITTEN[leaf.dtype].dtype), _UNWRITTEN[leaf.dtype]) for leaf in tree_leaves(tree))


def unwritten(views: tuple) -> bool:
    """Whether a leaf of ``views`` (:func:`marker_views`) still holds its marker."""
    return any((bits == marker).any() for bits, marker in views)


def check_written(tree: Any, where: str, prefix: str = "") -> None:
    """TreeMismatchError naming the first leaf of ``tree`` that still holds the marker
    (``where``: the model's name; ``prefix``: the layer's path in it)."""
    for path, leaf in tree_leaves_with_path(tree):
        marker = _UNWRITTEN[leaf.dtype]
        if (leaf.view(marker.dtype) == marker).any():
            name = "/".join(p for p in (prefix, _path_str(path) if path else "") if p) or _path_str(path)
            raise TreeMismatchError(
                f"{where}: backward left the gradient of {name} (or part of it) unwritten: "
                "a backward must fill every leaf of sig.grads it returns, or return new arrays"
            )


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # TreeDef -> {(shapes, dtype): Layout}


def flat_of(tree: Any) -> tuple[np.ndarray, Layout] | None:
    """``(vector, layout)`` when ``tree`` is a tree of views of one flat vector that
    :meth:`Layout.views` made, else None (a lookup, never a walk)."""
    return getattr(tree, "_flat", None)
