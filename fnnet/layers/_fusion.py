"""The fusion tags a built-in layer carries (:class:`Fusion`), and the forward passes of
the layers that lead a fused run (:func:`with_bias`, :func:`normalized`); the rules that
use them are ``_fuse.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from .. import kernels
from .._errors import InvalidTypeError, InvalidValueError
from ..typing import Params, PyTree

__all__ = ["KINDS", "Fusion", "normalized", "with_bias"]


@attrs.frozen
class Fusion:
    """What a built-in layer tells the fusion rules (``fnnet/layers/_fuse.py``) about itself.

    A layer that leads a fused run gives its ``head``: its forward pass up to a last
    per-channel step, which the fused pass replaces with one kernel that also does what
    follows (ReLU, max pooling):

    * ``kind="affine"``: ``head(params, x, buf) -> (z, cache)`` is the output before the
      bias, in a buffer of the layer's that the fused pass may overwrite; the forward is
      :func:`with_bias` of it (``conv2d``, ``dense``).
    * ``kind="normalize"``: ``head(params, x, buf, state) -> (coef, cache, new_state)``
      with ``coef`` (4, C) of x's dtype (mean, inv_std, scale, shift per channel); the
      forward is :func:`normalized` of it, which writes ``buf.xhat`` and ``buf.y``
      (``batch_norm``).

    Either way the layer's own backward takes ``cache`` and the output's gradient. The
    layers that follow: ``kind="relu"`` (``max(x, 0)`` as
    :func:`fnnet.kernels.relu_forward`) and ``kind="max_pool"`` with ``args = (kh, kw,
    sh, sw)``, both without params.
    """

    kind: str
    args: tuple = attrs.field(default=(), converter=tuple)
    head: Callable | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidValueError(f"Fusion: kind must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}")
        if (self.kind in ("affine", "normalize")) != callable(self.head):
            raise InvalidTypeError(f"Fusion: an affine or normalize layer, and only one, gives its head as a "
                                   f"function (kind {self.kind!r}, head {self.head!r})")
        if self.kind == "max_pool" and (len(self.args) != 4 or not all(isinstance(a, int) and a > 0
                                                                        for a in self.args)):
            raise InvalidValueError(f"Fusion: max_pool takes args (kh, kw, sh, sw) of ints >= 1, got {self.args!r}")


KINDS = ("affine", "normalize", "relu", "max_pool")
"""The kinds of :class:`Fusion` tags."""


def with_bias(head: Callable) -> Callable[..., tuple[Any, ...]]:
    """The forward pass of an affine layer: ``head(params, x, buf) -> (z, cache)``, then
    ``params["b"]`` (C,) added in place along axis 1 of ``z`` (N, C, ...)."""

    def forward(params: Params, x: np.ndarray, buf: Any) -> tuple[np.ndarray, Any]:
        z, cache = head(params, x, buf)
        b = params["b"]
        z += b.reshape(b.shape + (1,) * (z.ndim - 2))
        return z, cache

    return forward


def normalized(head: Callable) -> Callable[..., tuple[Any, ...]]:
    """The forward pass of a normalising layer: ``head(params, x, buf, state) -> (coef,
    cache, new_state)``, then :func:`fnnet.kernels.bn_normalize` of ``x`` into
    ``buf.xhat`` and ``buf.y``."""

    def forward(params: Params, x: np.ndarray, buf: Any, state: PyTree) -> tuple[np.ndarray, Any, PyTree]:
        coef, cache, new_state = head(params, x, buf, state)
        return kernels.bn_normalize(x, coef, buf.xhat, buf.y), cache, new_state

    return forward
