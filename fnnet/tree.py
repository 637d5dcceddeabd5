"""Immutable pytrees of numpy arrays, in the spirit of ``jax.tree_util``.

A pytree is a nested structure of containers -- mappings, tuples and lists -- whose
leaves are anything else (usually numpy arrays). ``None`` is an empty subtree.
:func:`freeze` turns a pytree into an immutable one: mappings become
:class:`FrozenDict`, lists become tuples, and every array leaf is read-only.

Flattening order is insertion order for mappings and position order for sequences;
two mappings have the same structure only if they have the same keys in the same order.
"""

from __future__ import annotations

import collections
import operator
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ._errors import TreeMismatchError
from .typing import PyTree

__all__ = ["EMPTY", "FrozenDict", "TreeDef", "check_like", "freeze", "param_count", "tree_flatten", "tree_leaves",
           "tree_leaves_with_path", "tree_map", "tree_structure", "tree_unflatten", "tree_zip"]


def _immutable(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise TypeError("FrozenDict is immutable")


class FrozenDict(dict):
    """An immutable, insertion-ordered mapping (the container of params trees).

    A ``dict`` subclass whose mutating methods raise TypeError: reads run at dict
    speed, which matters on the training step's hot path.
    """

    # its structure, when a TreeDef's builder made it; and (vector, Layout) when its leaves are
    # views of one flat vector (fnnet.flat.Layout.views), which optimizers then run on whole
    __slots__ = ("_treedef", "_flat")
    # every mutating method of dict raises (their signatures differ from dict's on purpose)
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _immutable
    __ior__ = _immutable

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenDict is immutable")

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"

    def __hash__(self) -> int:  # type: ignore[override]  # dict has none; a frozen one can
        return hash(tuple(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def copy(self) -> FrozenDict:
        return self


EMPTY = FrozenDict()
"""The empty tree: params of a layer without parameters, state of a layer without state.

Trees built here use this one object for every empty mapping, so that the runner can
recognise "nothing to do" by identity."""


class TreeDef:
    """The structure of a pytree without its leaves.

    ``kind`` is ``"leaf"``, ``"none"``, ``"dict"``, ``"tuple"`` or ``"list"``; ``keys``
    holds a mapping's keys in order; ``children`` the sub-structures; ``num_leaves`` and
    ``depth`` are derived. TreeDefs are interned: equal structures are the same object,
    so comparing two is an identity test, and each structure compiles its
    :meth:`builder` once per process.
    """

    __slots__ = ("kind", "keys", "children", "num_leaves", "depth", "_builder", "__weakref__")
    kind: str
    keys: tuple
    children: tuple[TreeDef, ...]
    num_leaves: int
    depth: int
    _builder: Callable[[Sequence[Any]], Any] | None
    _interned: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # identity while alive
    _recent: collections.deque = collections.deque(maxlen=1024)  # keeps new structures (and builders) alive a while

    def __new__(cls, kind: str, keys: tuple = (), children: tuple = ()) -> TreeDef:
        ident = (kind, keys, children)  # children are interned: their hash and == are by identity
        self = cls._interned.get(ident)
        if self is None:
            self = object.__new__(cls)
            for name, value in (("kind", kind), ("keys", keys), ("children", children), ("_builder", None),
                                ("num_leaves", 1 if kind == "leaf" else sum(c.num_leaves for c in children)),
                                ("depth", 1 + max((c.depth for c in children), default=0))):
                object.__setattr__(self, name, value)
            cls._interned[ident] = self
            cls._recent.append(self)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("TreeDef is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (TreeDef, (self.kind, self.keys, self.children))

    def builder(self) -> Callable[[Sequence[Any]], Any]:
        """``leaves -> tree``, compiled once per structure (see :func:`_compile_builder`)."""
        build = self._builder
        if build is None:
            build = _compile_builder(self)
            object.__setattr__(self, "_builder", build)
        return build

    def __repr__(self) -> str:
        if self.kind in ("leaf", "none"):
            return "*" if self.kind == "leaf" else "None"
        if self.kind == "dict":
            inner = ", ".join(f"{k!r}: {c!r}" for k, c in zip(self.keys, self.children))
            return "{" + inner + "}"
        inner = ", ".join(repr(c) for c in self.children)
        return f"({inner},)" if self.kind == "tuple" else f"[{inner}]"


_KINDS = {FrozenDict: "dict", dict: "dict", tuple: "tuple", list: "list", type(None): "none", np.ndarray: "leaf"}


def _kind(node: Any) -> str:
    kind = _KINDS.get(type(node))  # fast path: ABC isinstance checks are slow on hot paths
    if kind is not None:
        return kind
    if isinstance(node, Mapping):
        return "dict"
    if isinstance(node, tuple):
        return "tuple"
    if isinstance(node, list):
        return "list"
    return "leaf"


def _children(node: Any, kind: str) -> tuple[tuple, tuple]:
    """(keys, children) of a container node."""
    if kind == "dict":
        return tuple(node.keys()), tuple(node.values())
    if kind in ("tuple", "list"):
        return tuple(range(len(node))), tuple(node)
    return (), ()


def _path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path) if path else "<root>"


def tree_structure(tree: PyTree) -> TreeDef:
    """The :class:`TreeDef` of ``tree``."""
    if type(tree) is FrozenDict:  # a tree a builder made knows its structure (a step's params: O(1))
        known = getattr(tree, "_treedef", None)
        if known is not None:
            return known
    kind = _kind(tree)
    if kind in ("leaf", "none"):
        return TreeDef(kind)
    keys, children = _children(tree, kind)
    return TreeDef(kind, keys if kind == "dict" else (), tuple(tree_structure(c) for c in children))


def tree_leaves_with_path(tree: PyTree, _path: tuple = ()) -> list[tuple[tuple, Any]]:
    """``[(path, leaf), ...]`` in flattening order; a path is a tuple of keys/indices."""
    kind = _kind(tree)
    if kind == "leaf":
        return [(_path, tree)]
    out: list[tuple[tuple, Any]] = []
    for k, c in zip(*_children(tree, kind)):
        out.extend(tree_leaves_with_path(c, _path + (k,)))
    return out


def _collect(tree: Any, out: list) -> None:
    kind = _kind(tree)
    if kind == "leaf":
        out.append(tree)
    elif kind == "dict":
        for c in tree.values():
            _collect(c, out)
    elif kind != "none":
        for c in tree:
            _collect(c, out)


def tree_leaves(tree: PyTree) -> list:
    """The leaves of ``tree`` in flattening order."""
    out: list = []
    _collect(tree, out)
    return out


def tree_flatten(tree: PyTree) -> tuple[list, TreeDef]:
    """``(leaves, treedef)``; :func:`tree_unflatten` is its inverse."""
    return tree_leaves(tree), tree_structure(tree)


def _build(treedef: TreeDef, leaves: Iterator) -> Any:
    kind = treedef.kind
    if kind == "leaf":
        return next(leaves)
    if kind == "none":
        return None
    children = [_build(c, leaves) for c in treedef.children]
    if kind == "dict":
        return FrozenDict(zip(treedef.keys, children)) if children else EMPTY
    return tuple(children) if kind == "tuple" else list(children)


_MAX_COMPILED_DEPTH = 40  # deeper trees take the recursive path (the parser nests too)


def _compile_builder(treedef: TreeDef) -> Callable[[Sequence[Any]], Any]:
    """One Python expression that builds the whole tree from a list of leaves.

    A training step rebuilds its params tree every call; the recursive walk costs about
    1 µs per node, the compiled expression a few µs in all (as attrs and dataclasses,
    the source is generated and ``exec``-ed once per structure).
    """
    if treedef.depth > _MAX_COMPILED_DEPTH:
        return lambda leaves: _build(treedef, iter(leaves))
    keys: list = []
    counter = iter(range(treedef.num_leaves))

    def expr(t: TreeDef) -> str:
        if t.kind == "leaf":
            return f"L[{next(counter)}]"
        if t.kind == "none":
            return "None"
        if t.kind == "dict":
            if not t.children:
                return "E"
            items = []
            for k, c in zip(t.keys, t.children):
                keys.append(k)
                items.append(f"K[{len(keys) - 1}]: {expr(c)}")
            return "F({" + ", ".join(items) + "})"
        inner = "".join(f"{expr(c)}, " for c in t.children)
        return f"({inner})" if t.kind == "tuple" else f"[{inner}]"

    namespace: dict[str, Any] = {"F": FrozenDict, "E": EMPTY, "T": treedef, "setattr": object.__setattr__}
    body = expr(treedef)
    if body.startswith("F("):  # a mapping at the root records the structure it was built with
        body = f"t = {body}\n    setattr(t, '_treedef', T)\n    return t"
    else:
        body = f"return {body}"
    exec(f"def build(L):\n    {body}", namespace)  # noqa: S102 - source made above
    namespace["K"] = tuple(keys)
    build: Callable[[Sequence[Any]], Any] = namespace["build"]
    return build


def tree_unflatten(treedef: TreeDef, leaves: Sequence[Any]) -> PyTree:
    """Rebuild a tree of structure ``treedef`` from ``leaves`` (mappings become FrozenDict)."""
    if not isinstance(leaves, (list, tuple)):
        leaves = list(leaves)
    if len(leaves) != treedef.num_leaves:
        raise TreeMismatchError(
            f"tree_unflatten: structure {treedef!r} has {treedef.num_leaves} leaves, got {len(leaves)}"
        )
    return treedef.builder()(leaves)


def _describe(node: Any, kind: str) -> str:
    """A node as an error message shows it: its kind and keys, length or array type."""
    if kind == "dict":
        return f"a mapping with keys {list(node.keys())}"
    if kind in ("tuple", "list"):
        return f"a {kind} of {len(node)}"
    if kind == "none":
        return "None"
    if isinstance(node, np.ndarray):
        return f"an array {node.dtype}{list(node.shape)}"
    return f"a leaf of type {type(node).__name__}"


def _check_same(trees: tuple, path: tuple, what: str = "") -> str:
    """Raise TreeMismatchError naming ``path`` unless all nodes have one kind and keys.
    With ``what``, the two trees are (expected, given) and the message starts with it."""
    kinds = [_kind(t) for t in trees]
    keys = [_children(t, k)[0] for t, k in zip(trees, kinds)]
    for i in range(1, len(trees)):
        if kinds[i] != kinds[0] or keys[i] != keys[0]:
            detail = ""
            if kinds[i] == kinds[0] == "dict":
                missing = [k for k in keys[0] if k not in keys[i]]
                extra = [k for k in keys[i] if k not in keys[0]]
                parts = ([f"lacks {missing}"] if missing else []) + ([f"has extra {extra}"] if extra else [])
                detail = f" ({', '.join(parts)})" if parts else " (the same keys in another order)"
            if what:
                raise TreeMismatchError(
                    f"{what}: at {_path_str(path)} expected {_describe(trees[0], kinds[0])}, got "
                    f"{_describe(trees[i], kinds[i])}{detail}"
                )
            raise TreeMismatchError(
                f"tree structures differ at {_path_str(path)}: {_describe(trees[0], kinds[0])} in tree 0, "
                f"{_describe(trees[i], kinds[i])} in tree {i}{detail}"
            )
    return kinds[0]


def _map(f: Callable, trees: tuple, path: tuple, what: str = "") -> Any:
    kind = _check_same(trees, path, what)
    if kind == "leaf":
        return f(*trees)
    if kind == "none":
        return None
    keys = _children(trees[0], kind)[0]
    cols = [_children(t, kind)[1] for t in trees]
    out = [_map(f, tuple(c[i] for c in cols), path + (k,), what) for i, k in enumerate(keys)]
    if kind == "dict":
        return FrozenDict(zip(keys, out)) if out else EMPTY
    return tuple(out) if kind == "tuple" else list(out)


def tree_map(f: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """Apply ``f`` leafwise: ``f(leaf, *corresponding_leaves_of_rest)``.

    All trees must share one structure; otherwise :class:`TreeMismatchError` names the
    first path where they differ. Mappings in the result are FrozenDicts.
    """
    if type(tree) is np.ndarray and (not rest or all(type(r) is np.ndarray for r in rest)):
        return f(tree, *rest)  # fast path: jit runs optimizers on one flat array
    return _map(f, (tree, *rest), ())


def tree_zip(*trees: PyTree) -> list[tuple]:
    """Corresponding leaves of trees of one structure: ``[(leaf_a, leaf_b, ...), ...]``."""
    if not trees:
        return []
    _map(lambda *leaves: None, trees, ())  # structure check with a path in the error
    return list(zip(*(tree_leaves(t) for t in trees)))


def check_like(tree: PyTree, like: PyTree, what: str) -> None:
    """TreeMismatchError unless ``tree`` has the structure of ``like`` and, where both
    hold arrays, arrays of its shapes and dtypes; the message starts with ``what`` and names the first path that
    differs, with what was expected there and what was found."""
    if tree_structure(tree) is not tree_structure(like):  # (interned: an identity test)
        _map(lambda a, b: None, (like, tree), (), what)  # raises, naming the path
    for (path, a), b in zip(tree_leaves_with_path(tree), tree_leaves(like)):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            continue  # other leaves (a Python count in a custom state) have no shape to compare
        if a.shape != b.shape or a.dtype != b.dtype:
            raise TreeMismatchError(
                f"{what}: at {_path_str(path)} expected {b.dtype}{list(b.shape)}, got {a.dtype}{list(a.shape)}"
            )


def _seal(a: np.ndarray) -> np.ndarray:
    """Mark an array fnnet owns read-only (no copy) and return it."""
    a.flags.writeable = False
    return a


def _freeze_leaf(leaf: Any) -> Any:
    if isinstance(leaf, np.ndarray):
        # Never flip a flag on the caller's array: copy a writeable one, then seal the copy.
        return _seal(leaf.copy()) if leaf.flags.writeable else leaf
    if isinstance(leaf, np.generic):
        return _seal(np.array(leaf))
    return leaf


def freeze(tree: PyTree) -> PyTree:
    """An immutable copy of ``tree``: FrozenDict/tuple containers, read-only array leaves.

    Writeable arrays are copied (the caller's arrays are left untouched); numpy scalars
    become read-only 0-d arrays; other leaves (ints, strings...) are kept as they are. A
    part that is immutable already (a FrozenDict or tuple of read-only leaves) is kept
    itself, as ``tuple(t)`` keeps a tuple.
    """
    if type(tree) is FrozenDict and tree:  # (the common kind first: a step freezes its optimizer state every call)
        values = tree.values()
        frozen = [freeze(c) for c in values]
        return tree if all(map(operator.is_, frozen, values)) else FrozenDict(zip(tree.keys(), frozen))
    kind = _kind(tree)
    if kind == "leaf":
        return _freeze_leaf(tree)
    if kind == "none":
        return None
    keys, children = _children(tree, kind)
    frozen = [freeze(c) for c in children]
    if not frozen:
        return EMPTY if kind == "dict" else ()
    same = all(a is b for a, b in zip(frozen, children))
    if kind == "dict":
        return tree if same and type(tree) is FrozenDict else FrozenDict(zip(keys, frozen))
    return tree if same and type(tree) is tuple else tuple(frozen)


def param_count(tree: PyTree) -> int:
    """Total number of array elements in ``tree``."""
    return int(sum(np.size(leaf) for leaf in tree_leaves(tree)))
