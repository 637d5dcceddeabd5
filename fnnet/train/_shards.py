"""How a batch is spread: its cut into shards, which threads may run at once.

Shards are what several threads can run at once: a batch is cut into 2 shards of at
least :func:`least_shard_rows` rows (the rows whose buffers: activations, im2col columns,
gradients of activations, fill ``SHARD_BYTES``), into 4 of at least twice that, up to
``MAX_SHARDS``; thinner shards ran slower on every network measured. The cut is a
function of values (the batch's rows, the setting, the model's cost of a row), never of
the number of threads, so the bits are not either: :func:`fnnet.jit` runs the shards on
its threads, with BLAS held to its share of the cores (:func:`fnnet.threads.blas_share`).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Literal

import numpy as np

from .._errors import InvalidValueError
from ..layers import Layer
from ..runner import prepare_checked
from ..typing import Params

__all__ = ["MAX_SHARDS", "MIN_SHARD_ROWS", "SHARD_BYTES", "cut", "least_shard_rows", "rank_shards", "row_bytes"]

SHARD_BYTES = 16 << 20
"""The least working set of a shard of a training batch: 16 MiB of buffers (LeNet: 64
rows, the default preset's CNN: 32). Measured on this project's CNNs on two cores,
interleaved, the thickest cut that still gives each core a shard was the fastest in every
cell: the default CNN at batch 64 in 2 shards of 32 rows 1.10x 4 of 16 (1.05x on one
thread), LeNet at 128 in 2 of 64 1.13x 4 of 32, LeNet at 32 whole 1.08x 2 shards of 16,
the default CNN with batch norm at 64 in 2 shards 1.33x 4 (docs/jit.md). (At 4 MiB, the
earlier budget, the finer cuts had measured within a few % of these on the same kind of
machine.)"""
MAX_SHARDS = 64
"""Shards a batch is cut into at most. The cut doubles the shard count only while each
shard doubles in rows too (2 shards of ``rows``, 4 of ``2 rows``, 8 of ``4 rows``...),
so a cut finer than a few cores need stays cheap where few cores run it (8 shards of 32
LeNet rows ran 0.88-0.92x 4 of 64 on 2 cores); a machine with more cores than shards
gives the rest to BLAS inside them (:func:`fnnet.threads.blas_share`)."""
MIN_SHARD_ROWS = 4
"""The least rows of a shard under ``"auto"``: fewer make the products too thin to pay for a pass."""

Setting = int | Literal["auto"] | None

_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # {model: {(shape, dtype, train): bytes}}


def row_bytes(model: Layer, params: Params, input_shape: tuple, dtype: Any = np.float32, *, train: bool = True) -> int:
    """The bytes one more row of a batch costs in the buffers ``model``'s layers make (a
    training pass without the input's gradient, or with ``train=False`` an inference
    pass), as their hooks report them (the ledger of :class:`fnnet.layers.Sig`): the growth from a
    batch of 1 to a batch of 2, layers unfused (fusion saves memory, but must not move
    the shard cut, and so the bits). A pure function of the model, the params' shapes,
    ``input_shape`` (without the batch axis) and ``dtype``, found once per process."""
    dtype = np.dtype(dtype)
    known = _BYTES.setdefault(model, {})
    # (params that fit the model and the input shape have one set of shapes: no need to walk them,
    # which would cost a plain step more than the rest of the lookup)
    key = (tuple(input_shape), dtype, train)
    found = known.get(key)
    if found is None:
        sizes = []
        for n in (1, 2):
            ledger: list[int] = []
            prepare_checked(model, params, (n, *input_shape), dtype, train=train, need_dx=False, backward=train,
                            fuse=False, ledger=ledger)
            sizes.append(sum(ledger))
        found = known[key] = max(sizes[1] - sizes[0], 1)
    return found


def least_shard_rows(model: Layer, params: Params, input_shape: tuple, dtype: Any = np.float32,
               budget: int = SHARD_BYTES) -> int:
    """The least rows a shard of a training batch gets under ``rows_per_shard="auto"``:
    the power of two of rows whose training buffers (:func:`row_bytes`) fill at most
    ``budget`` (:data:`SHARD_BYTES`), at least :data:`MIN_SHARD_ROWS`."""
    per_row = row_bytes(model, params, input_shape, dtype)
    return max(MIN_SHARD_ROWS, 1 << max(0, (budget // per_row).bit_length() - 1))


def cut(n: int, rows_per_shard: Setting, least_rows: int = MIN_SHARD_ROWS, *old: Any) -> tuple[int, ...]:
    """The rows of each shard of a batch of ``n`` rows: sizes that differ by at most one,
    larger first. ``rows_per_shard``: None keeps the batch whole; an int ``r`` cuts it
    into ``ceil(n / r)`` shards; ``"auto"`` into 2 shards when each gets at least
    ``least_rows`` (see :func:`least_shard_rows`), into 4 when each gets twice that, and so on
    up to :data:`MAX_SHARDS`. (0.2.0's ``cut(step, params, x_shape, dtype)`` warns and
    is ``step.cut(params, x_shape, dtype)``.)"""
    if hasattr(n, "cut"):  # (0.2.0's signature: a Step first)
        warnings.warn("fnnet.train.cut(step, params, x_shape, dtype) is step.cut(params, x_shape, dtype)",
                      DeprecationWarning, stacklevel=2)
        return n.cut(rows_per_shard, least_rows, *old)
    if rows_per_shard is None or (rows_per_shard == "auto" and n < 2 * max(least_rows, MIN_SHARD_ROWS)):
        return (n,)
    if rows_per_shard == "auto":
        count = 1
        while 2 * count <= MAX_SHARDS and n // (2 * count) >= least_rows * count:  # 2 shards of rows, 4 of 2 rows...
            count *= 2
    else:
        count = max(1, -(-n // int(rows_per_shard)))  # (an empty batch: one empty shard)
    return tuple(n // count + (i < n % count) for i in range(count))



def rank_shards(sizes: tuple[int, ...], ranks: int, rank: int) -> range:
    """The shards of a batch cut into ``sizes`` that rank ``rank`` of ``ranks`` runs: the
    ``rank``-th of ``ranks`` equal runs of consecutive whole shards, so that each shard,
    and the order the shards' gradients are summed in, is the same on any number of ranks.
    A batch of one shard (too small to cut) runs on rank 0 alone. Any other shard count
    that ``ranks`` does not divide is an InvalidValueError naming the shard count, the rank
    counts that divide it, and a finer cut (``rows_per_shard``) that ``ranks`` would share."""
    count = len(sizes)
    if count == 1:
        return range(1) if rank == 0 else range(0)
    if count % ranks:
        n = sum(sizes)
        fits = [r for r in range(1, count + 1) if count % r == 0]
        finer = next((r for r in range(-(-n // ranks), 0, -1) if -(-n // r) % ranks == 0), None)
        raise InvalidValueError(
            f"a batch of {n} rows is cut into {count} shards, which {ranks} ranks cannot share as whole shards "
            f"(the bits would then depend on the ranks): run on {_either(fits)} ranks"
            + ("" if finer is None else f", or cut it so that they can: rows_per_shard={finer} gives "
               f"{-(-n // finer)} shards")
        )
    per = count // ranks
    return range(rank * per, (rank + 1) * per)


def _either(counts: list[int]) -> str:
    return str(counts[0]) if len(counts) == 1 else ", ".join(map(str, counts[:-1])) + f" or {counts[-1]}"
