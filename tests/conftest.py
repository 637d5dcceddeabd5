"""Shared helpers: finite-difference gradient checks and the backend guard."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fnnet


def pytest_report_header(config):
    return f"fnnet kernels backend: {fnnet.kernels.backend()}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def numeric_grad(f, x: np.ndarray, idx: list[tuple], h: float = 1e-6) -> np.ndarray:
    """Central differences of scalar ``f()`` w.r.t. entries ``idx`` of ``x`` (edited in place)."""
    out = []
    for i in idx:
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        out.append((fp - fm) / (2 * h))
    return np.array(out)


def sample_indices(shape: tuple, rng, k: int = 40) -> list[tuple]:
    """Up to ``k`` distinct index tuples of an array of ``shape`` (all of them if fewer)."""
    size = int(np.prod(shape))
    flat = rng.choice(size, min(k, size), replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def max_rel_err(a: np.ndarray, b: np.ndarray, floor: float = 1e-2) -> float:
    """max |a - b| / max(max |a|, max |b|, floor): relative to the gradient's scale.

    The floor keeps exactly-zero gradients (a conv bias before batch norm) from turning
    finite-difference noise of 1e-9 into a relative error of 1."""
    scale = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0), floor)
    return float(np.abs(a - b).max(initial=0) / scale)


def expected_backend() -> str | None:
    return os.environ.get("FNNET_EXPECT_BACKEND")
