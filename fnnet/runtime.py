"""What decides the bits of a run besides its seed and config: versions, BLAS, CPU.

fnnet's own kernels are deterministic, but numpy's matrix products go to a BLAS (the
OpenBLAS numpy ships, by default) that picks its kernels for the CPU at start-up. The
same seed and config give identical bits on the same machine with the same numpy/BLAS
build; another CPU (or ``OPENBLAS_CORETYPE``) can select another kernel, which sums in
another order and changes the last bits. :func:`info` records all of that, so a
summary says which bits to expect where.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Any

import numpy as np

from ._version import __version__
from .kernels import backend, isa

__all__ = ["info"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _openblas_corename() -> str | None:
    """The kernel architecture OpenBLAS chose at start-up (e.g. "Haswell", "SkylakeX"),
    asked of the OpenBLAS library loaded in this process (Linux), else None."""
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                       "openblas_get_corename"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def info() -> dict[str, Any]:
    """A JSON-able record of what, besides seed and config, decides a run's bits:
    fnnet, numpy and Python versions, the kernels backend and the instruction set its
    compiled kernels were built for (which does not change the bits), the BLAS numpy uses (name,
    version, the kernel architecture it chose) and the CPU."""
    blas: dict[str, Any] = {}
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = {"name": deps.get("name"), "version": deps.get("version")}
    except (KeyError, TypeError, ValueError):
        pass
    blas["core"] = _openblas_corename()
    if os.environ.get("OPENBLAS_CORETYPE"):
        blas["OPENBLAS_CORETYPE"] = os.environ["OPENBLAS_CORETYPE"]
    return {
        "fnnet": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "kernels_backend": backend(),
        "kernels_isa": isa(),
        "blas": blas,
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "platform": sys.platform,
    }
