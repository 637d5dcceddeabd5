"""Safe checkpoints of any pytree of arrays: ``.npz`` plus JSON structure, no pickle.

The file is a numpy ``.npz`` holding one entry per leaf (``leaf_0``, ``leaf_1``, ...) and
a ``__header__`` entry: UTF-8 JSON with the tree structure, user metadata and the sha256
of the structure and every leaf's dtype, shape and bytes. :func:`save` writes to a
temporary file in the same folder, flushes it to disk and renames it over the target,
so a crash or a full disk never destroys the previous checkpoint. :func:`load` rejects
truncated or tampered files and, given ``like=``, trees of another structure.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
import zipfile
from typing import Any

import numpy as np

from ._errors import DataError, TreeMismatchError
from .tree import TreeDef, freeze, tree_leaves_with_path, tree_structure, tree_unflatten

__all__ = ["save", "load", "digest"]

FORMAT = "fnnet-checkpoint-1"


def _treedef_to_json(t: TreeDef) -> Any:
    if t.kind == "leaf":
        return "*"
    if t.kind == "none":
        return None
    children = [_treedef_to_json(c) for c in t.children]
    if t.kind == "dict":
        for k in t.keys:
            if not isinstance(k, str):
                raise TypeError(f"checkpoint: mapping keys must be strings, got {k!r}")
        return {"dict": [[k, c] for k, c in zip(t.keys, children)]}
    return {t.kind: children}


def _treedef_from_json(j: Any) -> TreeDef:
    if j == "*":
        return TreeDef("leaf")
    if j is None:
        return TreeDef("none")
    (kind, body), = j.items()
    if kind == "dict":
        return TreeDef("dict", tuple(k for k, _ in body), tuple(_treedef_from_json(c) for _, c in body))
    return TreeDef(kind, (), tuple(_treedef_from_json(c) for c in body))


def _leaves(tree: Any) -> list[np.ndarray]:
    out = []
    for path, leaf in tree_leaves_with_path(tree):
        if isinstance(leaf, np.generic):
            leaf = np.asarray(leaf)
        if not isinstance(leaf, np.ndarray) or leaf.dtype.hasobject:
            where = "/".join(map(str, path)) or "<root>"
            raise TypeError(f"checkpoint: leaf at {where} is a {type(leaf).__name__}, not a numeric numpy array")
        out.append(leaf)
    return out


def digest(tree: Any) -> str:
    """sha256 of a tree's structure and of every leaf's dtype, shape and bytes."""
    return _digest(json.dumps(_treedef_to_json(tree_structure(tree))), _leaves(tree))


def _digest(structure: str, leaves: list[np.ndarray]) -> str:
    h = hashlib.sha256(structure.encode())
    for a in leaves:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save(path: str | os.PathLike, tree: Any, metadata: dict | None = None) -> str:
    """Write ``tree`` (and JSON-able ``metadata``) to ``path`` atomically; returns the sha256."""
    path = pathlib.Path(path)
    leaves = _leaves(tree)
    structure = json.dumps(_treedef_to_json(tree_structure(tree)))
    sha = _digest(structure, leaves)
    header = json.dumps({"format": FORMAT, "structure": structure, "sha256": sha, "metadata": metadata or {}})
    arrays = {f"leaf_{i}": a for i, a in enumerate(leaves)}
    arrays["__header__"] = np.frombuffer(header.encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sha


def load(path: str | os.PathLike, like: Any = None) -> tuple[Any, dict]:
    """``(tree, metadata)`` from a checkpoint written by :func:`save`.

    The tree is frozen (FrozenDict/tuple containers, read-only leaves). Raises
    :class:`DataError` for a missing, truncated or tampered file, and
    :class:`TreeMismatchError` if ``like`` is given and the structure, a shape or a dtype
    differs (the message names the path).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["__header__"]).decode())
            if header.get("format") != FORMAT:
                raise DataError(f"{path}: not an fnnet checkpoint (format {header.get('format')!r})")
            treedef = _treedef_from_json(json.loads(header["structure"]))
            leaves = [z[f"leaf_{i}"] for i in range(treedef.num_leaves)]
    except DataError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: truncated or corrupt checkpoint ({type(exc).__name__}: {exc})") from None
    if _digest(header["structure"], leaves) != header["sha256"]:
        raise DataError(f"{path}: sha256 mismatch, the checkpoint was modified or damaged")
    tree = tree_unflatten(treedef, leaves)
    if like is not None:
        _check_like(tree, like, path)
    return freeze(tree), header["metadata"]


def _check_like(tree: Any, like: Any, path: pathlib.Path) -> None:
    if tree_structure(like) != tree_structure(tree):
        from .tree import tree_map

        try:
            tree_map(lambda a, b: None, like, tree)
        except TreeMismatchError as exc:
            raise TreeMismatchError(f"{path}: checkpoint does not match the expected tree: {exc}") from None
        raise TreeMismatchError(f"{path}: checkpoint structure {tree_structure(tree)} != {tree_structure(like)}")
    for (p, a), b in zip(tree_leaves_with_path(tree), _leaves(like)):
        if a.shape != b.shape or a.dtype != b.dtype:
            where = "/".join(map(str, p)) or "<root>"
            raise TreeMismatchError(
                f"{path}: at {where} the checkpoint has {a.dtype}{list(a.shape)}, expected {b.dtype}{list(b.shape)}"
            )
