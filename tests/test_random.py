"""Keys are values: splitting is pure and reproducible; no global RNG."""

from __future__ import annotations

import numpy as np
import pytest

from fnnet import random


def test_split_is_pure_and_children_differ():
    k = random.key(42)
    a, b = random.split(k), random.split(k)
    assert a == b
    draws = [random.normal(c, (4,)) for c in a]
    assert not np.array_equal(draws[0], draws[1])
    np.testing.assert_array_equal(random.normal(a[0], (4,)), draws[0])


def test_same_seed_same_bits_different_seed_different_bits():
    assert random.uniform(random.key(1), (5,)).tobytes() == random.uniform(random.key(1), (5,)).tobytes()
    assert random.uniform(random.key(1), (5,)).tobytes() != random.uniform(random.key(2), (5,)).tobytes()


def test_fold_in_and_permutation():
    k = random.key(0)
    assert random.fold_in(k, 3) == random.fold_in(k, 3) != random.fold_in(k, 4)
    p = random.permutation(k, 10)
    assert sorted(p.tolist()) == list(range(10))


def test_global_numpy_rng_is_untouched():
    state = np.random.get_state()[1].copy()
    random.normal(random.key(0), (100,))
    assert np.array_equal(np.random.get_state()[1], state)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        random.key(seed)


def test_split_needs_a_key():
    with pytest.raises(TypeError, match="expected a fnnet.random.Key"):
        random.split(0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_split_gives_n_distinct_children_each_its_fold_in(n):
    k = random.fold_in(random.key(7), 2)
    children = random.split(k, n)
    assert len(children) == n and len(set(children)) == n
    assert children == tuple(random.fold_in(k, i) for i in range(n))
    draws = {random.uniform(c, (3,)).tobytes() for c in children} | {random.uniform(k, (3,)).tobytes()}
    assert len(draws) == n + 1  # no child draws its parent's numbers or a sibling's
