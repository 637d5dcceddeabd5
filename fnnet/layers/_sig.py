"""What a layer's hook sees of one input signature (:class:`Sig`), and what the runner
carries beside it for training (:class:`Carry`)."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

__all__ = ["Carry", "Sig"]


@attrs.frozen
class Carry:
    """What the runner carries for training beside a :class:`Sig` (no layer of yours reads it).

    * ``group``, ``shard``: the :class:`fnnet.shards.ShardGroup` of a training step whose
      batch is cut into shards, and this shard's index in it (None and 0 otherwise). Only a
      layer whose math needs the whole batch uses them (batch norm, which sets
      ``shard_sums``); other layers never see shards.
    * ``fuse``: whether ``serial`` may fuse runs of its layers (``fnnet/layers/_fuse.py``);
      False only to count the layers' own buffers (:func:`fnnet.train.least_shard_rows`).
    * ``ledger``: a list that :meth:`Sig.empty` appends the bytes of each array it makes
      to, or None: so a hook that makes its arrays whose size grows with the batch with
      ``empty`` (the built-in layers do; a fixed-size scratch array is ``np.empty``) tells
      :func:`fnnet.train.row_bytes` what a row of a batch costs.
    * ``watch``: a list that the runner's ``prepare`` appends ``(path, grads)`` to for each
      layer whose backward is not fnnet's own, or None: a training step marks those
      gradients before every backward pass and checks them after it (a layer of yours
      whose backward skips a leaf on some step gets an error on that step, not the stale
      value of an earlier one).
    """

    group: Any = None
    shard: int = 0
    fuse: bool = True
    ledger: list | None = attrs.field(default=None, eq=False, repr=False)
    watch: list | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Sig:
    """What the runner tells a layer about one input signature (its hook's argument).

    * ``x_shape``: the input shape with the batch axis; ``dtype``: the input dtype.
    * ``train``: train mode (False: eval mode, as in :func:`fnnet.predict`).
    * ``need_dx``: whether backward must return ``dx`` (a training step needs no
      gradient of its input images); when False, backward may return None.
    * ``grads``: writeable, C-contiguous arrays with the params' structure (views of
      the step's flat gradient). A backward that writes its ``dparams`` into them and
      returns ``grads`` itself costs no copy. None where no backward will run (as in
      :func:`fnnet.predict`): a hook then need not make backward's buffers.
    * ``path``: where the layer sits in the model (``"conv2d_0"``), for errors.
    * ``carry``: what the runner carries for training (a :class:`Carry`: shards, fusion,
      the buffer ledger, the gradient watch); a layer of yours needs none of it.
    """

    x_shape: tuple
    dtype: np.dtype
    train: bool = True
    need_dx: bool = True
    grads: Any = None
    path: str = ""
    carry: Carry = attrs.field(factory=lambda: Carry(), repr=False)

    def empty(self, shape: tuple | None = None, dtype: Any = None) -> np.ndarray:
        """A new array of ``shape`` (default ``x_shape``) and ``dtype`` (default the input's)."""
        a = np.empty(self.x_shape if shape is None else shape, self.dtype if dtype is None else dtype)
        if self.carry.ledger is not None:
            self.carry.ledger.append(a.nbytes)
        return a

    def dx_buffer(self) -> np.ndarray | None:
        """A new array for ``dx`` when backward must return one, else None."""
        return self.empty() if self.need_dx else None

    def child(self, key: str, x_shape: tuple, need_dx: bool | None = None) -> Sig:
        """The signature of a sub-layer ``key`` of a combinator, with input ``x_shape``."""
        return Sig(
            tuple(x_shape), self.dtype, self.train, self.need_dx if need_dx is None else need_dx,
            None if self.grads is None else self.grads[key], f"{self.path}/{key}" if self.path else key, self.carry,
        )
