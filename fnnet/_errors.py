"""The one exception family of fnnet: catch ``FnnetError`` to catch them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
