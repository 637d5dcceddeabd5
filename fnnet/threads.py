"""The thread budget: the cores this process may use, and BLAS's share of them.

A machine's cores are one budget. :func:`fnnet.jit` runs the shards of a step, and
:func:`fnnet.predict` its chunks, on threads of their own; numpy's matrix products
inside them go to a BLAS that runs threads of its own too (numpy's OpenBLAS starts one
per core unless told otherwise). Both at once put threads x cores threads on the cores,
and each waits for the others: on 2 cores, LeNet at batch 128 trained at 0.48x the
speed of the same shards with BLAS at one thread.

So while fnnet runs ``t`` threads, each BLAS library numpy uses gets at most
``cores() // t`` threads (never more than it had), through threadpoolctl, and gets its
own setting back when the last such call returns: the user's other numpy code finds BLAS
as it left it. Where fnnet runs one thread (a batch too small to cut, ``threads=1``, a
light inference chunk), BLAS keeps its own threads only for work whose largest product
has at least :data:`BLAS_MIN_PRODUCT` multiply-adds, and runs on one thread otherwise:
a second BLAS thread slows a small product down, and when another process holds a
core, OpenBLAS's threads spin waiting for it (the tutorial's step took 2x as long).

The bits do not depend on fnnet's threads: the shards are cut by the batch signature
alone (:func:`fnnet.train.cut`), and BLAS runs one thread for every product below
:data:`BLAS_MIN_PRODUCT`. Larger products get BLAS threads, and there the bits are BLAS's
to keep: numpy's OpenBLAS splits a product's output, not its sums, among its threads with
its own kernels for the CPU (tested), but with ``OPENBLAS_CORETYPE=Haswell`` forced on an
AVX-512 CPU, 0.3.31 gave other bits at 2 threads than at 1 (docs/scaling.md).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

from ._errors import check_int
from .tree import tree_leaves

__all__ = ["BLAS_MIN_PRODUCT", "BLAS_ONE_THREAD_PRODUCT", "blas_share", "cgroup_cores", "cores", "largest_product",
           "product_bound",
           "thread_count"]

BLAS_MIN_PRODUCT = 1 << 24
"""The multiply-adds of a product below which BLAS gets one thread where fnnet runs one
(:func:`blas_share`). Measured on 2 cores (numpy's OpenBLAS, float32, rows x in x out):
a second thread ran a 64x169x64 product at 0.75x, 64x400x128 (3.3M) at 1.12x, 64x512x512
(2^24) at 1.55x and 2^25 or more at 1.9x; whole steps of one shard with small products
(the tutorial's, NET-SEED at 128 rows, LeNet at 32) at 0.86-0.96x on an idle machine and
0.36-0.79x with another process on a core."""


def cgroup_cores(proc_cgroup: str | Path = "/proc/self/cgroup", root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (``1.5`` for 150 ms of CPU every
    100 ms), the smallest along its path to the root, or None where none is set (or on
    a system without cgroups). Reads cgroup v2 (``cpu.max``) and v1
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:  # v2: one tree, cpu.max = "quota period" or "max period"
            base, read = Path(root), _v2_quota
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            base = Path(root) / controllers
            if not base.is_dir():
                base = Path(root) / "cpu"
            read = _v1_quota
        else:
            continue
        parts = [p for p in path.strip("/").split("/") if p]
        for depth in range(len(parts), -1, -1):  # this cgroup, then each parent: the tightest quota binds
            quota = read(base.joinpath(*parts[:depth]))
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


@functools.cache
def _quota() -> float | None:
    """This process's cgroup quota, read once (the files cost 0.2 ms a read: a step's
    BLAS share asks for :func:`cores` every time)."""
    return cgroup_cores()


def cores() -> int:
    """The cores this process may use: the CPUs of its affinity mask (``taskset``,
    ``sched_setaffinity``, a batch scheduler's binding), at most its cgroup's CPU quota
    (read once per process) rounded down (a container's ``--cpus``), at least 1. The
    default number of threads of :func:`fnnet.jit` and :func:`fnnet.predict`, and the
    budget that they share with BLAS."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # (not on every OS)
        count = os.cpu_count() or 1
    quota = _quota()
    if quota is not None:
        count = min(count, math.floor(quota))
    return max(1, count)


def thread_count(where: str, threads: int | None) -> int:
    """A ``threads`` argument: None is :func:`cores`, else an int >= 1 (an error naming ``where``)."""
    return cores() if threads is None else check_int(where, "threads", threads, 1)


class _Blas:
    """The BLAS libraries of this process (threadpoolctl's controllers, found once) and
    the setting they had before the first of the calls now inside :func:`blas_share`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.libs: list[Any] | None = None
        self.counts: list[Callable[[], int]] = []
        self.inside = 0  # calls now inside blas_share, in any thread
        self.saved: list[tuple[Any, int, Callable[[], int]]] = []  # (library, its count, its counter)

    def found(self) -> list[Any]:
        if self.libs is None:
            from threadpoolctl import ThreadpoolController

            self.libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
            self.counts = [_counter(lib) for lib in self.libs]
        return self.libs

    def most(self) -> int:
        """The most threads any BLAS library has now (0 with none)."""
        if self.libs is None:
            self.found()
        counts = self.counts
        if len(counts) == 1:  # (numpy's one OpenBLAS: the hot path of a small step)
            return counts[0]()
        return max((count() for count in counts), default=0)


def _counter(lib: Any) -> Callable[[], int]:
    """A function that reads ``lib``'s thread count: OpenBLAS's own C getter, found once
    (threadpoolctl's ``num_threads`` looks the symbol up on every read: 1 us a step of a
    small model), else threadpoolctl's property."""
    try:
        if getattr(lib, "internal_api", "") == "openblas" and getattr(lib, "threading_layer", "") != "openmp":
            prefix, suffix = lib._find_affixes()
            getter = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}")
            if getter() == lib.num_threads:
                return cast(Callable[[], int], getter)
    except Exception:  # noqa: BLE001 - another threadpoolctl: its public property, slower
        pass
    return lambda: lib.num_threads


_BLAS = _Blas()


def largest_product(params: Any, rows: int) -> int:
    """An estimate of the multiply-adds of the largest matrix product a pass of ``rows``
    rows makes through a model with ``params``: ``rows`` times its largest leaf (exact for
    a dense layer, whose product is rows x in x out; a conv layer's per-sample products
    are its weights times its output pixels, and a batch with wide convolutions is cut
    into shards, whose threads hold BLAS at their share anyway)."""
    return rows * max((leaf.size for leaf in tree_leaves(params)), default=0)


def product_bound(params: Any, rows: int, plane: int = 1) -> int:
    """An upper bound of the multiply-adds of any one matrix product a pass of ``rows``
    rows of inputs of ``plane`` pixels a channel makes: a leaf of 3 or more axes (a conv's
    weights) in a product over at most every output pixel of the shard, ``rows`` x
    ``plane`` x its size; any other, ``rows`` x its size. (:func:`largest_product` is the
    estimate that decides BLAS's threads; this bound decides where a cap can be skipped.)"""
    return rows * max((leaf.size * (plane if leaf.ndim >= 3 else 1) for leaf in tree_leaves(params)), default=0)


BLAS_ONE_THREAD_PRODUCT = 1 << 18
"""The multiply-adds up to which OpenBLAS runs a product on one thread by itself (its
default ``GEMM_MULTITHREAD_THRESHOLD``, 4 x 65,536): work whose largest product is no
larger gains nothing from a cap, which :func:`blas_share` skips where fnnet runs one thread."""


def blas_share(threads: int, cores_: int | None = None, *, product: int | None = None,
               bound: int | None = None) -> AbstractContextManager[int]:
    """Around code that runs ``threads`` threads of fnnet's: cap each BLAS library at
    ``cores_ // threads`` threads (``cores_`` defaults to :func:`cores`; at least 1, never
    raised above what it had), and restore what it had when the last call inside returns
    (calls may nest and overlap across threads). Work whose largest ``product`` (its
    multiply-adds, :func:`largest_product`) is below :data:`BLAS_MIN_PRODUCT` caps BLAS at
    one thread instead; one thread of fnnet's leaves BLAS alone for larger (or unknown:
    None) products, and where every product is at most :data:`BLAS_ONE_THREAD_PRODUCT`
    (``bound``, :func:`product_bound`; ``product`` if not given), which OpenBLAS runs on
    one thread itself. Yields the cap (0 for no change).

    Where one thread of fnnet's would change nothing (those products, or BLAS on one
    thread already) it is a plain ``nullcontext``: the hot path of a small step pays one
    read of BLAS's thread count (0.2 us), where entering the cap costs a few, and a step
    of a small model tens."""
    small = product is not None and product < BLAS_MIN_PRODUCT
    if threads <= 1 and not (small and BLAS_ONE_THREAD_PRODUCT < (bound if bound is not None else product or 0)
                             and _BLAS.most() > 1):
        return nullcontext(0)
    cap = 1 if small else max(1, (cores() if cores_ is None else cores_) // threads)
    return _capped(cap)


@contextmanager
def _capped(cap: int) -> Iterator[int]:
    """Each BLAS library held to at most ``cap`` threads inside, its count given back after (:func:`blas_share`)."""
    blas = _BLAS
    with blas.lock:
        libs = blas.found()
        counts = [count() for count in blas.counts]
        if blas.inside == 0:
            blas.saved = list(zip(libs, counts, blas.counts))
        blas.inside += 1
        for lib, count in zip(libs, counts):
            if count > cap:
                lib.set_num_threads(cap)
    try:
        yield cap
    finally:
        with blas.lock:
            blas.inside -= 1
            if blas.inside == 0:
                for lib, count, now in blas.saved:
                    if now() != count:  # (OpenBLAS may rebuild its buffers on a set, even to the same count)
                        lib.set_num_threads(count)
                blas.saved = []
