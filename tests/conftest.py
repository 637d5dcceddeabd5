"""Shared helpers: finite-difference gradient checks and the backend guard."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import sys

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



INTEROP = {"onnx": "onnx", "onnxruntime": "onnxruntime", "safetensors": "safetensors", "torch": "torch"}


def pytest_runtest_setup(item):
    """A test marked ``interop`` needs onnx, onnxruntime, safetensors and torch: skipped, naming
    what is missing and its extra, where they are not installed; a failure under
    ``FNNET_REQUIRE_INTEROP=1`` (nox -s interop, where none may skip)."""
    if item.get_closest_marker("interop") is None:
        return
    missing = [m for m in INTEROP if importlib.util.find_spec(m) is None]
    if missing:
        why = (f"needs {', '.join(missing)} (pip install {' '.join(sorted({INTEROP[m] for m in missing}))}; "
               "nox -s interop runs these)")
        if os.environ.get("FNNET_REQUIRE_INTEROP") == "1":
            pytest.fail(f"FNNET_REQUIRE_INTEROP=1 but the test {why}")
        pytest.skip(why)

PIPELINES = pathlib.Path(__file__).resolve().parents[1] / "pipelines"


def pipeline_module(name: str):
    """``pipelines/<name>.py`` imported as ``python pipelines/mnist.py`` has it: with its
    folder on the path, where its ``recipes`` live (the path is restored afterwards)."""
    sys.path.insert(0, str(PIPELINES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(PIPELINES))
