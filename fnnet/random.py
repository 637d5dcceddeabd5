"""Explicit, pure randomness: keys are values, splitting never changes a key.

A key is a numpy ``SeedSequence`` spec (entropy plus a spawn path). ``split`` derives
children from the path alone, so calling it twice on one key gives the same children,
unlike ``SeedSequence.spawn``, which counts its calls. There is no global RNG.
"""

from __future__ import annotations

import attrs
import numpy as np
import numpy.typing as npt

from ._errors import InvalidTypeError, InvalidValueError, instance_of

__all__ = ["Key", "key", "split", "fold_in", "generator", "normal", "uniform", "permutation"]


@attrs.frozen
class Key:
    """A PRNG key: ``entropy`` (the seed) and ``path`` (the spawn key of each split)."""

    entropy: int = attrs.field(validator=instance_of(int))
    path: tuple[int, ...] = ()

    def seed_sequence(self) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.entropy, spawn_key=self.path)


def key(seed: int) -> Key:
    """A root key from a non-negative integer seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidValueError(f"key(seed): seed must be a non-negative int, got {seed!r}")
    return Key(int(seed))


def split(k: Key, n: int = 2) -> tuple[Key, ...]:
    """``n`` independent child keys of ``k`` (the same ones every time)."""
    if not isinstance(k, Key):
        raise InvalidTypeError(f"split: expected a fnnet.random.Key, got {type(k).__name__}")
    if n < 1:
        raise InvalidValueError(f"split: n must be >= 1, got {n}")
    return tuple(Key(k.entropy, k.path + (i,)) for i in range(n))


def fold_in(k: Key, data: int) -> Key:
    """A child key of ``k`` determined by the integer ``data`` (e.g. a step number)."""
    return Key(k.entropy, k.path + (int(data),))


def generator(k: Key) -> np.random.Generator:
    """A fresh numpy Generator (PCG64) seeded by ``k``; use it once and drop it."""
    if not isinstance(k, Key):
        raise InvalidTypeError(f"generator: expected a fnnet.random.Key, got {type(k).__name__}")
    return np.random.Generator(np.random.PCG64(k.seed_sequence()))


def normal(k: Key, shape: tuple[int, ...], dtype: npt.DTypeLike = np.float32, std: float = 1.0) -> np.ndarray:
    """Samples of N(0, std^2), drawn in float64 then cast (same bits for either dtype)."""
    return (generator(k).standard_normal(shape) * std).astype(dtype)


def uniform(
    k: Key, shape: tuple[int, ...], dtype: npt.DTypeLike = np.float32, low: float = 0.0, high: float = 1.0
) -> np.ndarray:
    """Samples of U[low, high), drawn in float64 then cast."""
    return generator(k).uniform(low, high, shape).astype(dtype)


def permutation(k: Key, n: int) -> np.ndarray:
    """A random permutation of ``range(n)`` (int64)."""
    return generator(k).permutation(n)
