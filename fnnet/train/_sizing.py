"""What a row of a batch costs the model: the sizing behind a step's cut and every memory check.

A training step cuts a batch into shards of at least :func:`least_shard_rows` rows (the
rows whose buffers: activations, im2col columns, gradients of activations, fill
:data:`fnnet.shards.SHARD_BYTES`; :func:`fnnet.shards.cut` makes the cut); the step,
predict and the pipeline compare :func:`row_bytes` times their rows with the memory the
process may take (:func:`fnnet.memory.require`).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..layers import Layer
from ..runner import prepare_checked
from ..shards import MIN_SHARD_ROWS, SHARD_BYTES
from ..typing import Params

__all__ = ["least_shard_rows", "row_bytes"]

_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # {model: {(shape, dtype, train): bytes}}


def row_bytes(model: Layer, params: Params, input_shape: tuple, dtype: Any = np.float32, *, train: bool = True) -> int:
    """The bytes one row of a batch costs in the buffers ``model``'s layers make (a
    training pass without the input's gradient, or with ``train=False`` an inference
    pass), as their hooks report them (the ledger of :class:`fnnet.layers.Carry`: every
    array made by ``Sig.empty``, whose size grows with the rows), with the model prepared
    for one row, layers unfused (fusion saves memory, but must not move the shard cut, and
    so the bits). A pure function of the model, the params' shapes, ``input_shape``
    (without the batch axis) and ``dtype``, found once per process."""
    dtype = np.dtype(dtype)
    known = _BYTES.setdefault(model, {})
    # (params that fit the model and the input shape have one set of shapes: no need to walk them,
    # which would cost a plain step more than the rest of the lookup)
    key = (tuple(input_shape), dtype, train)
    found = known.get(key)
    if found is None:
        ledger: list[int] = []
        prepare_checked(model, params, (1, *input_shape), dtype, train=train, need_dx=False, backward=train,
                        fuse=False, ledger=ledger)
        found = known[key] = max(sum(ledger), 1)
    return found


def least_shard_rows(model: Layer, params: Params, input_shape: tuple, dtype: Any = np.float32,
               budget: int = SHARD_BYTES) -> int:
    """The least rows a shard of a training batch gets under ``rows_per_shard="auto"``:
    the power of two of rows whose training buffers (:func:`row_bytes`) fill at most
    ``budget`` (:data:`SHARD_BYTES`), at least :data:`MIN_SHARD_ROWS`."""
    per_row = row_bytes(model, params, input_shape, dtype)
    return max(MIN_SHARD_ROWS, 1 << max(0, (budget // per_row).bit_length() - 1))
