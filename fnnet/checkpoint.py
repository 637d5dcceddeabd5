"""Safe checkpoints of any pytree of arrays, ``.npz`` or ``.safetensors``, no pickle.

A ``.npz`` holds one entry per leaf (``leaf_0``, ``leaf_1``, ...) and a ``__header__``
entry: UTF-8 JSON with the tree structure, user metadata, the sha256 of the structure
and every leaf's dtype, shape and bytes (:func:`digest`), and a sha256 of the header
itself, so that the metadata (a step count, a config) is covered too. A
``.safetensors`` file (the path's suffix decides) holds the same: one tensor per leaf,
named by its path (``conv2d_0.w``), and the same header's fields as its string
metadata; it loads in ``safetensors.numpy`` and ``safetensors.torch`` too.
:func:`read_tensors` and :func:`write_tensors` read and write any safetensors file as
a flat ``name -> array`` mapping (a PyTorch state dict: :mod:`fnnet.pytorch`).
:func:`save` writes to a temporary file in the same folder, flushes it to disk and
renames it over the target, so a crash or a full disk never destroys the previous
checkpoint; temporary files that a killed save left behind are removed by the next
successful save of the same checkpoint. :func:`load` rejects truncated, malformed or
tampered files (a :class:`~fnnet.DataError` naming the file) before it allocates
anything a header claims, and, given ``like=``, trees of another structure.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import _safetensors
from ._errors import DataError, InvalidTypeError, InvalidValueError
from ._io import atomic_write, check_writable
from .tree import TreeDef, check_like, freeze, tree_leaves_with_path, tree_structure, tree_unflatten
from .typing import PyTree

__all__ = ["atomic_write", "check_writable", "digest", "load", "read_tensors", "save", "write_tensors"]

FORMAT = "fnnet-checkpoint-2"  # 1: the header's own sha256 did not exist (metadata not covered)
_KINDS = ("dict", "tuple", "list")


def _treedef_to_json(t: TreeDef) -> Any:
    if t.kind == "leaf":
        return "*"
    if t.kind == "none":
        return None
    children = [_treedef_to_json(c) for c in t.children]
    if t.kind == "dict":
        for k in t.keys:
            if not isinstance(k, str):
                raise InvalidTypeError(f"checkpoint: mapping keys must be strings, got {k!r}")
        return {"dict": [[k, c] for k, c in zip(t.keys, children)]}
    return {t.kind: children}


def _treedef_from_json(j: Any) -> TreeDef:
    """The inverse of :func:`_treedef_to_json`; ValueError for anything it never writes."""
    if j == "*":
        return TreeDef("leaf")
    if j is None:
        return TreeDef("none")
    if not (isinstance(j, dict) and len(j) == 1):
        raise InvalidValueError(f"bad structure node {j!r:.60}")
    (kind, body), = j.items()
    if kind not in _KINDS or not isinstance(body, list):
        raise InvalidValueError(f"bad structure node {j!r:.60}")
    if kind == "dict":
        if not all(isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], str) for kv in body):
            raise InvalidValueError(f"bad mapping node {j!r:.60}")
        return TreeDef("dict", tuple(k for k, _ in body), tuple(_treedef_from_json(c) for _, c in body))
    return TreeDef(kind, (), tuple(_treedef_from_json(c) for c in body))


def _leaves(tree: Any) -> list[np.ndarray]:
    out = []
    for path, leaf in tree_leaves_with_path(tree):
        if isinstance(leaf, np.generic):
            leaf = np.asarray(leaf)
        if not isinstance(leaf, np.ndarray) or leaf.dtype.hasobject:
            where = "/".join(map(str, path)) or "<root>"
            raise InvalidTypeError(f"checkpoint: leaf at {where} is a {type(leaf).__name__}, not a numeric numpy array")
        out.append(leaf)
    return out


def digest(tree: PyTree) -> str:
    """sha256 of a tree's structure and of every leaf's dtype, shape and bytes."""
    return _digest(json.dumps(_treedef_to_json(tree_structure(tree))), _leaves(tree))


def _digest(structure: str, leaves: list[np.ndarray]) -> str:
    h = hashlib.sha256(structure.encode())
    for a in leaves:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _header_sha256(header: dict) -> str:
    """sha256 of everything in the header but itself (canonical JSON)."""
    body = {k: header[k] for k in ("format", "structure", "sha256", "metadata")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save(path: str | os.PathLike, tree: PyTree, metadata: dict | None = None) -> str:
    """Write ``tree`` (and JSON-able ``metadata``, string keys) to ``path`` atomically;
    returns the sha256 of the tree (:func:`digest`). A path ending in ``.safetensors`` is
    written as safetensors (tensors named by their paths, ``conv2d_0.w``; the structure,
    metadata and digests in its header's metadata), any other as ``.npz``.

    Only what :func:`load` reads back replaces ``path``: the new file is read back and
    checked before the rename, and a tree the format cannot hold is refused before
    anything is written (an :class:`~fnnet.InvalidTypeError` or
    :class:`~fnnet.InvalidValueError` naming the leaf). safetensors stores little-endian
    data: a big-endian leaf is stored (and loaded) little-endian, the same values, and the
    sha256 returned is the stored tree's."""
    path = check_writable(path, "save: path")
    safetensors = _is_safetensors(path)
    leaves = _leaves(tree)
    if safetensors:
        leaves = [_little_endian(a) for a in leaves]
    _check_metadata(metadata)
    structure = json.dumps(_treedef_to_json(tree_structure(tree)))
    sha = _digest(structure, leaves)
    header = {"format": FORMAT, "structure": structure, "sha256": sha, "metadata": metadata or {}}
    try:
        header["header_sha256"] = _header_sha256(header)
    except (TypeError, ValueError) as exc:
        raise InvalidTypeError(f"checkpoint: metadata must be JSON-able ({exc})") from None

    def reads_back(tmp: pathlib.Path) -> None:
        try:
            _read(tmp, safetensors)
        except (DataError, InvalidValueError) as exc:  # (a bug of save's, never the caller's file)
            raise InvalidValueError(f"{path}: the file written would not load ({exc}); the old file is kept") from None

    if safetensors:
        names = _names(tree_structure(tree), path)
        strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in header.items()}
        write_tensors(path, dict(zip(names, leaves, strict=True)), strings, check=reads_back)
        return sha
    arrays = {f"leaf_{i}": a for i, a in enumerate(leaves)}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays), check=reads_back)  # type: ignore[arg-type]
    return sha


def _little_endian(a: np.ndarray) -> np.ndarray:
    """``a`` with little-endian bytes (the same values): the only order safetensors holds."""
    little = a.dtype.newbyteorder("<")
    return a if a.dtype == little else a.astype(little)


def _check_metadata(metadata: Any, where: str = "metadata") -> None:
    """JSON would turn a key 1 into "1" (and two keys into one): refused, not changed."""
    if isinstance(metadata, dict):
        for k, v in metadata.items():
            if not isinstance(k, str):
                raise InvalidTypeError(f"checkpoint: {where} has the key {k!r}; its keys must be strings (JSON "
                                       f"would turn it into {json.dumps(str(k))})")
            _check_metadata(v, f"{where}[{k!r}]")
    elif isinstance(metadata, (list, tuple)):
        for i, v in enumerate(metadata):
            _check_metadata(v, f"{where}[{i}]")
    elif metadata is not None and where == "metadata":
        raise InvalidTypeError(f"checkpoint: metadata must be a dict, got {type(metadata).__name__}")


def _is_safetensors(path: pathlib.Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def _names(treedef: TreeDef, path: pathlib.Path) -> list[str]:
    """The leaves' tensor names in a safetensors file: their paths joined by dots."""
    names = [".".join(map(str, p)) or "<root>"
             for p, _ in tree_leaves_with_path(tree_unflatten(treedef, [0] * treedef.num_leaves))]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise InvalidValueError(f"{path}: two leaves would both be named {twice!r} in safetensors (keys with dots?): "
                                "save this tree as .npz")
    return names


def write_tensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None,
                  *, check: Callable[[pathlib.Path], Any] | None = None) -> None:
    """Write named arrays (a flat ``name -> array`` mapping, such as a PyTorch state dict
    from :func:`fnnet.pytorch.to_state_dict`) and string ``metadata`` as the safetensors
    file ``path``, atomically. A name the format reserves (``__metadata__``), a dtype it
    has no code for and a Python object that is not an array are refused, naming the
    tensor, before ``path`` is touched; big-endian arrays are written little-endian.
    ``check(tmp)``: run on the new file before it replaces ``path`` (:func:`atomic_write`)."""
    path = check_writable(path, "write_tensors: path")
    if not isinstance(tensors, Mapping):
        raise InvalidTypeError(f"{path}: tensors must be a mapping of names to arrays, got {type(tensors).__name__}")
    arrays = {}
    for name, a in tensors.items():
        if not isinstance(name, str):
            raise InvalidTypeError(f"{path}: tensor names must be strings, got {name!r}")
        a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
        _safetensors.check(name, a, f"{path}: ")
        arrays[name] = a
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidTypeError(f"{path}: safetensors metadata maps strings to strings, got {type(metadata).__name__}")
    meta = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise InvalidTypeError(f"{path}: safetensors metadata maps strings to strings")

    atomic_write(path, lambda f: _safetensors.encode(f, arrays, meta), check=check)


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of any safetensors file (fnnet's, PyTorch's, ...): its named
    arrays (read-only) and its header's string metadata. bfloat16 tensors (``BF16``) are
    read as float32, exactly; a type numpy has no dtype for (``F8_E4M3``...) is a
    :class:`~fnnet.DataError` naming the tensor and the type, as is a missing, truncated or
    malformed file."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidTypeError(f"read_tensors: path must be a str or a path, got {type(path).__name__}")
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return _safetensors.decode(path.read_bytes())
    except _safetensors.UnknownDtypeError as exc:
        raise DataError(f"{path}: {exc}") from None
    except (OSError, ValueError, TypeError, RecursionError, MemoryError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: truncated, malformed or corrupt safetensors file ({exc})") from None


def _read_leaf(z: zipfile.ZipFile, name: str, path: pathlib.Path, budget: int) -> np.ndarray:
    """One ``.npy`` member, after checking that its header's shape and dtype fit the bytes
    the member holds (a crafted size is an error, never a huge allocation)."""
    try:
        info = z.getinfo(name + ".npy")
    except KeyError:
        raise DataError(f"{path}: truncated, malformed or corrupt checkpoint (no {name})") from None
    if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size or info.file_size > budget:
        raise DataError(f"{path}: {name} is not stored as fnnet writes it (compressed or larger than the file)")
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            raise DataError(f"{path}: {name} holds Python objects, which a checkpoint never does")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if info.file_size - f.tell() != nbytes:
            raise DataError(
                f"{path}: {name} declares {dtype}{list(shape)} ({nbytes} bytes) but holds {info.file_size - f.tell()}"
            )
        raw = f.read(nbytes)
    a = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")  # read-only, on ``raw``
    return a if a.flags.c_contiguous else a.copy()


def load(path: str | os.PathLike, like: PyTree = None) -> tuple[PyTree, dict]:
    """``(tree, metadata)`` from a checkpoint written by :func:`save` (``.npz`` or
    ``.safetensors``, by the suffix).

    The tree is frozen (FrozenDict/tuple containers, read-only leaves). Raises
    :class:`DataError` naming the file for a missing, truncated, malformed or tampered
    file (leaves or metadata), and :class:`~fnnet.TreeMismatchError` if ``like`` is given and
    the structure, a shape or a dtype differs (the message names the path). Nothing is
    returned unless all of it checks.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint" + (" (it is a folder)" if path.is_dir() else ""))
    tree, header = _read(path, _is_safetensors(path))
    if like is not None:
        check_like(tree, like, f"{path}: the checkpoint does not match the expected tree")
    return freeze(tree), header["metadata"]


def _read(path: pathlib.Path, safetensors: bool) -> tuple[PyTree, dict]:
    """``(tree, header)`` of a checkpoint file, every digest checked; raises DataError."""
    try:
        treedef, header, leaves = (_load_safetensors if safetensors else _load_npz)(path)
    except DataError:
        raise
    except _MALFORMED as exc:
        raise DataError(f"{path}: truncated, malformed or corrupt checkpoint ({type(exc).__name__}: {exc})") from None
    if _digest(header["structure"], leaves) != header["sha256"]:
        raise DataError(f"{path}: sha256 mismatch, the checkpoint was modified or damaged")
    return tree_unflatten(treedef, leaves), header


_MALFORMED = (OSError, ValueError, TypeError, KeyError, EOFError, RecursionError, MemoryError, UnicodeDecodeError,
              zipfile.BadZipFile)


def _checked_header(header: Any, path: pathlib.Path) -> TreeDef:
    """The tree structure of a checkpoint's header, after checking its format and digest."""
    if not isinstance(header, dict):
        raise InvalidValueError("the header is not a JSON object")
    if header.get("format") == "fnnet-checkpoint-1":
        raise DataError(
            f"{path}: written by an earlier fnnet (format fnnet-checkpoint-1, whose digest does not cover its "
            "metadata): it cannot be loaded; start that run again"
        )
    if header.get("format") != FORMAT:
        raise DataError(f"{path}: not an fnnet checkpoint of format {FORMAT} (format {header.get('format')!r})")
    if not (isinstance(header.get("structure"), str) and isinstance(header.get("metadata"), dict)
            and isinstance(header.get("sha256"), str) and isinstance(header.get("header_sha256"), str)):
        raise InvalidValueError("the header lacks structure, metadata or digests")
    if _header_sha256(header) != header["header_sha256"]:
        raise DataError(f"{path}: sha256 mismatch in the header, its metadata was modified or damaged")
    return _treedef_from_json(json.loads(header["structure"]))


def _load_npz(path: pathlib.Path) -> tuple[TreeDef, dict, list[np.ndarray]]:
    """``(structure, header, leaves)`` of a ``.npz`` checkpoint (what :func:`load` checks
    next); raises DataError or one of ``_MALFORMED``."""
    with zipfile.ZipFile(path) as z:
        budget = path.stat().st_size
        header = json.loads(bytes(_read_leaf(z, "__header__", path, budget)).decode())
        treedef = _checked_header(header, path)
        leaves = [_read_leaf(z, f"leaf_{i}", path, budget) for i in range(treedef.num_leaves)]
        if len(z.namelist()) != treedef.num_leaves + 1:
            raise InvalidValueError(f"{len(z.namelist())} entries for {treedef.num_leaves} leaves")
    return treedef, header, leaves


def _load_safetensors(path: pathlib.Path) -> tuple[TreeDef, dict, list[np.ndarray]]:
    """As :func:`_load_npz`, of a ``.safetensors`` checkpoint."""
    tensors, strings = read_tensors(path)
    if "format" not in strings:
        raise DataError(f"{path}: a safetensors file without fnnet's structure (not written by fnnet.checkpoint."
                        "save): read its tensors with fnnet.checkpoint.read_tensors")
    header: dict[str, Any] = dict(strings)
    header["metadata"] = json.loads(strings.get("metadata", "null"))
    treedef = _checked_header(header, path)
    names = _names(treedef, path)
    if set(names) != set(tensors):
        extra, missing = sorted(set(tensors) - set(names)), sorted(set(names) - set(tensors))
        raise InvalidValueError(f"its tensors {extra} are not in its structure, {missing} are missing")
    return treedef, header, [tensors[n] for n in names]
