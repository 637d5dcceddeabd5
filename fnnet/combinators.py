"""Deprecated: the combinators live in :mod:`fnnet.layers` (``fnnet.layers.combinators``)."""

import warnings

from .layers.combinators import residual, serial, summary

__all__ = ["residual", "serial", "summary"]

warnings.warn("fnnet.combinators is fnnet.layers (serial, residual, summary; also at the top: fnnet.serial)",
              DeprecationWarning, stacklevel=2)
