"""Params trees as views of one flat vector (as ``jax.flatten_util.ravel_pytree``).

A training step keeps the params, their gradients and the params-shaped parts of the
optimizer state as flat vectors, so that an elementwise optimizer runs once over all
parameters; the trees a user sees are read-only views into those vectors.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from ._errors import TreeMismatchError
from .tree import FrozenDict, TreeDef, _path_str, tree_leaves, tree_leaves_with_path, tree_structure, tree_unflatten

__all__ = ["Layout", "pack_state", "unpack_state"]

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
        """A tree of views into ``flat``, one per leaf (C-contiguous)."""
        leaves = [flat[sl] if len(s) == 1 else flat[sl].reshape(s) for sl, s in self.slices]
        return tree_unflatten(self.treedef, leaves)

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
        bits = flat.view(marker.dtype)
        if not (bits == marker).any():
            return
        for (path, _), (sl, _) in zip(tree_leaves_with_path(self.views(flat)), self.slices):
            if (bits[sl] == marker).any():
                raise TreeMismatchError(
                    f"{where}: backward left the gradient of {_path_str(path)} (or part of it) unwritten: "
                    "a backward must fill every leaf of sig.grads it returns, or return new arrays"
                )


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # TreeDef -> {(shapes, dtype): Layout}


def pack_state(state: Any, layout: Layout, path: tuple = ()) -> tuple[Any, frozenset]:
    """Replace each params-shaped subtree of an optimizer state by one flat vector.

    Returns the packed state and the set of paths that were packed.
    """
    if isinstance(state, (Mapping, tuple, list)) and layout.shapes and layout.matches(state):
        return layout.pack(state), frozenset([path])
    if isinstance(state, (Mapping, tuple, list)):
        items = state.items() if isinstance(state, Mapping) else enumerate(state)
        packed: dict = {}
        paths: frozenset = frozenset()
        for k, v in items:
            packed[k], sub = pack_state(v, layout, path + (k,))
            paths |= sub
        if isinstance(state, Mapping):
            return FrozenDict(packed), paths
        return tuple(packed.values()), paths
    return state, frozenset()


def unpack_state(state: Any, paths: frozenset, layout: Layout, scratch: np.ndarray) -> tuple[Any, bool]:
    """Inverse of :func:`pack_state`: flat vectors become trees of read-only views.

    An array that is ``scratch`` (a buffer the caller reuses) or a view of it is copied
    before it is sealed, so that the tree never aliases it. Returns the tree and whether
    such a copy was made (``state`` itself then still aliases ``scratch``).
    """
    copied: list = []
    return _unpack(state, paths, layout, scratch, (), copied), bool(copied)


def _unpack(node: Any, paths: frozenset, layout: Layout, scratch: np.ndarray, path: tuple, copied: list) -> Any:
    kind = type(node)
    if kind is np.ndarray:  # the common cases first: ABC checks are slow per step
        if node is scratch or node.base is scratch:
            node = node.copy()
            copied.append(path)
        if paths and path in paths:
            return layout.unpack(node)
        node.setflags(write=False)
        return node
    if kind is FrozenDict or isinstance(node, Mapping):
        return FrozenDict({k: _unpack(v, paths, layout, scratch, path + (k,), copied) for k, v in node.items()})
    if kind is tuple or isinstance(node, (tuple, list)):
        return tuple(_unpack(v, paths, layout, scratch, path + (i,), copied) for i, v in enumerate(node))
    if isinstance(node, np.ndarray) and node.flags.writeable:  # an ndarray subclass
        node.flags.writeable = False
    return node
