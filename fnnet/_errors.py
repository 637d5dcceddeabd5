"""The one exception family of fnnet: catch ``FnnetError`` to catch them all."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np


class FnnetError(Exception):
    """Base class of every error fnnet raises on bad input."""


class ShapeError(FnnetError, ValueError):
    """An array or a tree has a shape that does not fit where it is used."""


class DTypeError(FnnetError, TypeError):
    """An array has a dtype that does not fit where it is used."""


class TreeMismatchError(FnnetError, ValueError):
    """Two pytrees that should share a structure do not; the message names the path."""


class InvalidValueError(FnnetError, ValueError):
    """A value is out of its domain (NaN or inf in a loss input, a label out of range...)."""


class InvalidTypeError(FnnetError, TypeError):
    """An argument is of the wrong kind (a number where a schedule is expected...)."""


class OutOfMemoryError(FnnetError, MemoryError):
    """A pass would need more memory than the process may use; refused before it is taken."""


class DivergenceError(InvalidValueError):
    """A training step would have returned non-finite params or loss. Nothing was
    returned: the state passed in is the last good one."""


class DataError(FnnetError, ValueError):
    """A data or checkpoint file is corrupt, truncated, tampered with or of the wrong kind."""


class DataNotFoundError(FnnetError, FileNotFoundError):
    """No copy of a dataset was found and none could be downloaded."""


# attrs validators that raise from this family, naming the record, the field and the value


Validator = Callable[[Any, Any, Any], None]  # attrs: (instance, attribute, value) -> None


def instance_of(cls: type) -> Validator:
    """An attrs validator: ``value`` must be a ``cls`` (InvalidTypeError otherwise)."""

    def check(inst: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, cls):
            article = "an" if cls.__name__[0] in "AEIOUaeiou" else "a"
            raise InvalidTypeError(
                f"{type(inst).__name__}.{attribute.name} must be {article} {cls.__name__}, got "
                f"{type(value).__name__} {value!r:.60}"
            )

    return check


def is_callable(inst: Any, attribute: Any, value: Any) -> None:
    """An attrs validator: ``value`` must be callable (InvalidTypeError otherwise)."""
    if not callable(value):
        raise InvalidTypeError(
            f"{type(inst).__name__}.{attribute.name.lstrip('_')} must be callable, got {type(value).__name__} "
            f"{value!r:.60}"
        )


# argument checks that raise from this family, naming the function, the argument and the value


def as_float(value: Any) -> float:
    """``float(value)``, or NaN for what is not a number (so that one finiteness test
    refuses both)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def check_real(
    where: str, what: str, value: Any, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval given, or an InvalidValueError naming
    ``where`` (the function) and ``what`` (the argument), with the value received."""
    interval = ""
    if low is not None and high is not None:
        interval = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        interval = f" {'>' if low_open else '>='} {low:g}"
    v = as_float(value)
    if isinstance(value, bool) or not (
        math.isfinite(v)
        and (low is None or (v > low if low_open else v >= low))
        and (high is None or (v < high if high_open else v <= high))
    ):
        raise InvalidValueError(f"{where}: {what} must be a finite number{interval}, got {value!r}")
    return v


def check_int(where: str, what: str, value: Any, low: int) -> int:
    """``value`` as an int >= ``low``, or an InvalidValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidValueError(f"{where}: {what} must be an int >= {low}, got {value!r}")
    return int(value)
