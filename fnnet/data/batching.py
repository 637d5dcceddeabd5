"""Seeded batch orders, each a pure function of (key, step), so a run can resume anywhere.

* :func:`epoch_batches`: a fresh permutation each epoch (without replacement).
* :func:`sample_batches`: indices drawn with replacement at every step (the tutorial's).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import random
from .._errors import InvalidValueError


def _check(n: int, batch_size: int, start_step: int) -> None:
    if n < 1:
        raise InvalidValueError(f"need at least one example, got n={n}")
    if batch_size < 1:
        raise InvalidValueError(f"batch_size must be >= 1, got {batch_size}")
    if start_step < 0:
        raise InvalidValueError(f"start_step must be >= 0, got {start_step}")


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches in one pass over ``n`` examples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_batches(
    key: random.Key, n: int, batch_size: int, *, start_step: int = 0, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Endless index batches: epoch ``e`` is ``permutation(fold_in(key, e), n)`` cut in order.

    With ``drop_last=False`` the last batch of an epoch may be shorter.
    """
    _check(n, batch_size, start_step)
    per = steps_per_epoch(n, batch_size, drop_last)
    if per < 1:
        raise InvalidValueError(f"batch_size {batch_size} > n {n} with drop_last=True gives no batch")
    step, epoch, perm = start_step, -1, np.empty(0, np.int64)
    while True:
        e, i = divmod(step, per)
        if e != epoch:
            epoch, perm = e, random.permutation(random.fold_in(key, e), n)
        yield perm[i * batch_size : (i + 1) * batch_size]
        step += 1


def sample_batches(key: random.Key, n: int, batch_size: int, *, start_step: int = 0) -> Iterator[np.ndarray]:
    """Endless index batches drawn uniformly with replacement; step ``s`` uses ``fold_in(key, s)``."""
    _check(n, batch_size, start_step)
    step = start_step
    while True:
        yield random.generator(random.fold_in(key, step)).integers(0, n, batch_size)
        step += 1
