"""What memory the process may still take, read before a pass maps its buffers.

A training step maps every shard's buffers when it is planned, and numpy's arrays take
their pages only when first written: a batch too large for the machine would be refused
by nothing and killed by the kernel mid-pass. :func:`require` compares the bytes a plan
needs with :func:`available` first and refuses with an :class:`~fnnet.OutOfMemoryError`
that says what to do.
"""

from __future__ import annotations

import pathlib
import resource
import time

from ._errors import OutOfMemoryError

__all__ = ["available", "require"]


def _read_int(path: str, key: str | None = None) -> int | None:
    """An integer from a file (``key``: the ``key: value kB`` line of /proc files), or None."""
    try:
        text = pathlib.Path(path).read_text()
    except OSError:
        return None
    if key is None:
        text = text.strip()
        return int(text) if text.isdigit() else None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            parts = value.split()
            return int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1) if parts and parts[0].isdigit() else None
    return None


FRESH = 0.25
"""Seconds a reading of :func:`available` is reused: reading it costs about 90 us of file
reads, a plain step of a small model (which plans, and so checks, on every call) 400."""
_last: list = [-FRESH, None]  # (time.monotonic() of the last reading, the reading)


def available() -> int | None:
    """The bytes this process may still take, the least of: the memory the system has
    available (``MemAvailable``), what the address-space limit (``RLIMIT_AS``) leaves
    beside the process's mapped memory, and what its cgroup's limit leaves (v2
    ``memory.max``, v1 ``memory.limit_in_bytes``). None where none of them can be read.
    A reading is reused for :data:`FRESH` seconds."""
    now = time.monotonic()
    if now - _last[0] < FRESH:
        return _last[1]
    _last[:] = [now, _read_available()]
    return _last[1]


def _read_available() -> int | None:
    found = []
    mem = _read_int("/proc/meminfo", "MemAvailable")
    if mem is not None:
        found.append(mem)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _read_int("/proc/self/status", "VmSize")
    if soft != resource.RLIM_INFINITY and mapped is not None:
        found.append(max(soft - mapped, 0))
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:  # (v1 writes "no limit" as a huge number)
            found.append(max(cap - used, 0))
            break
    return min(found) if found else None


def require(nbytes: int, what: str, advice: str) -> None:
    """An :class:`~fnnet.OutOfMemoryError` if ``nbytes`` exceed :func:`available`:
    ``what`` needs them (``"a training step on a batch of (N, 1, 28, 28)"``), ``advice``
    says what to do instead."""
    free = available()
    if free is not None and nbytes > free:
        raise OutOfMemoryError(f"{what} needs {_gib(nbytes)} of buffers, and this process may take {_gib(free)} more: "
                               f"{advice}")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"
