"""Command-line flags: the error they raise and argparse types that name the flag."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .._errors import InvalidValueError


class FlagError(InvalidValueError):
    """A command-line flag has a bad value, or values that do not fit together or the data."""


def number(kind: type[int] | type[float], low: float, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite ``kind`` (int or float) >= ``low`` (> if ``low_open``);
    argparse names the flag in the error."""

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or (value <= low if low_open else value < low):
            what = "an integer" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {what} {'>' if low_open else '>='} {low:g}, got {text!r}")
        return value

    convert.__name__ = kind.__name__
    return convert
