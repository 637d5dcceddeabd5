"""Checks and small argument helpers shared by the layers.

Shapes passed to ``init`` and ``check`` are per-sample shapes: they exclude the batch
axis (``(C, H, W)`` for images, ``(features,)`` for vectors). Arrays passed to
``forward`` carry the batch axis first.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from .._errors import DTypeError, InvalidTypeError, InvalidValueError, ShapeError, TreeMismatchError
from ..random import Key
from ..tree import EMPTY, FrozenDict
from ..typing import Params, Shape

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_batch(x: Any, name: str) -> np.ndarray:
    """``x`` as an ndarray with a batch axis, or a ShapeError naming the layer."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim < 1:
        raise ShapeError(f"{name}: input must have a batch axis, got a scalar")
    return x


def fmt_shape(shape: tuple) -> str:
    """``(N, 1, 28, 28)``-style text for a per-sample shape (``((N, 3), (N, 4))`` for a tuple of them)."""
    if is_multi(shape):
        return "(" + ", ".join(map(fmt_shape, shape)) + ("," if len(shape) == 1 else "") + ")"
    return "(" + ", ".join(["N", *map(str, shape)]) + ")"


# Between fan_out and fan_in, a layer's input or output is a tuple of arrays, and its shape a
# tuple of shapes: ``((C, H, W), (C, H, W))`` per sample, ``((N, C, H, W), (N, C, H, W))`` batched.


def is_multi(shape: tuple) -> bool:
    """Whether ``shape`` is a tuple of shapes (of a tuple of arrays), not one shape."""
    return len(shape) > 0 and isinstance(shape[0], tuple)


def with_batch(n: int, shape: tuple) -> tuple:
    """The batched shape(s) of per-sample ``shape``, ``n`` rows."""
    return tuple(with_batch(n, s) for s in shape) if is_multi(shape) else (n, *shape)


def without_batch(shape: tuple) -> tuple:
    """The per-sample shape(s) of batched ``shape``."""
    return tuple(without_batch(s) for s in shape) if is_multi(shape) else tuple(shape[1:])


def batch_of(shape: tuple) -> int:
    """The rows of batched ``shape``."""
    return batch_of(shape[0]) if is_multi(shape) else shape[0]


def check_init_dtype(name: str, dtype: Any) -> np.dtype:
    """``dtype`` as a float32/float64 np.dtype, or a DTypeError naming the layer."""
    try:
        dtype = np.dtype(dtype)
    except (TypeError, ValueError):
        raise DTypeError(f"{name}: dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: params dtype must be float32 or float64, got {dtype}")
    return dtype


def check_ndim(name: str, shape: tuple, ndim: int, what: str) -> None:
    if len(shape) != ndim:
        raise ShapeError(f"{name}: expected {what} input {ndim}-D per sample, got shape {fmt_shape(shape)}")


def check_params(name: str, params: Any, dtype: np.dtype, **shapes: tuple) -> None:
    """Params and input dtype of a layer: ``dtype`` (the input's) must be float32 or
    float64, and ``params`` a mapping with exactly the keys of ``shapes``, each an array
    of that shape (``None`` matches any size) and of ``dtype`` (no silent upcast). Raises
    a DTypeError, TreeMismatchError or ShapeError naming the layer.
    ``check_params(name, params, dtype)`` asks for no params."""
    if dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: input dtype must be float32 or float64, got {dtype}")
    check_keys(name, params, shapes.keys())
    for key, want in shapes.items():
        leaf = params[key]
        if not isinstance(leaf, np.ndarray):
            raise TreeMismatchError(f"{name}: params {key!r} must be an array, got {type(leaf).__name__}")
        if leaf.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, leaf.shape)):
            expected = "(" + ", ".join("?" if w is None else str(w) for w in want) + ("," if len(want) == 1 else "")
            raise ShapeError(f"{name}: params {key!r} has shape {leaf.shape}, expected {expected})")
        if leaf.dtype != dtype:
            raise DTypeError(f"{name}: input dtype {dtype} does not match the params' dtype {leaf.dtype}")


def check_keys(name: str, params: Any, keys: Collection) -> None:
    """``params`` must be a mapping with exactly ``keys`` (a dict's keys, listed sorted, or
    a sequence, listed in order), or a TreeMismatchError naming the layer."""
    view = type(keys) is _DICT_KEYS
    mapping = type(params) is FrozenDict or isinstance(params, Mapping)
    if not mapping or params.keys() != (keys if view else set(keys)):
        got = sorted(map(str, params)) if isinstance(params, Mapping) else type(params).__name__
        raise TreeMismatchError(f"{name}: params must hold exactly the keys {sorted(keys) if view else list(keys)}, "
                                f"got {got}")


_DICT_KEYS: type = type({}.keys())


def without_params(name: str, out_shape: Callable[[tuple], tuple] = tuple) -> tuple:
    """``init`` and ``check`` of a layer without params whose per-sample output shape is
    ``out_shape(input_shape)`` (which raises for an input it cannot take)."""

    def init(key: Key, input_shape: Shape, dtype: np.dtype) -> tuple[Params, Shape]:
        return EMPTY, out_shape(input_shape)

    def check(params: Params, input_shape: Shape, dtype: np.dtype) -> Shape:
        check_params(name, params, dtype)
        return out_shape(tuple(input_shape))

    return init, check


def seal(**arrays: np.ndarray) -> FrozenDict:
    """Params from freshly made arrays: a FrozenDict of read-only leaves (no copy)."""
    for a in arrays.values():
        a.flags.writeable = False
    return FrozenDict(arrays)


def positive_int(v: Any, what: str, name: str) -> int:
    """``v`` as an int >= 1, or a ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InvalidValueError(f"{name}: {what} must be a positive int, got {v!r}")
    return int(v)


def initializers_of(name: str, w_init: Any, b_init: Any, default_w: Callable, default_b: Callable) -> tuple:
    """``(w_init, b_init)``: each a callable, or None for the default; else an error naming it."""
    out = []
    for what, given, default in (("w_init", w_init, default_w), ("b_init", b_init, default_b)):
        if given is not None and not callable(given):
            raise InvalidTypeError(f"{name}: {what} must be an initializer (a callable: fnnet.init...) or None, "
                                   f"got {given!r}")
        out.append(default if given is None else given)
    return tuple(out)


def pair(v: Any, what: str, name: str, minimum: int = 1) -> tuple[int, int]:
    """``v`` or ``(v, v)`` as a pair of ints >= minimum, or a ValueError naming it."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        t: tuple = (v, v)
    else:
        t = tuple(v) if isinstance(v, (tuple, list)) else ()
    if len(t) != 2 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= minimum for i in t):
        raise InvalidValueError(f"{name}: {what} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])
