"""The processes of a run (MPI ranks, or this process alone), their threads, and the
signals that stop them after the same step."""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import numpy as np

from .._errors import FnnetError, InvalidValueError
from ..shards import rank_shards
from ..threads import blas_share
from ..typing import Params
from ._flags import FlagError


class _Alone:
    """The communicator of a run in one process: a broadcast returns what it is given."""

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's names
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj


@attrs.frozen
class Ranks:
    """How a run uses the machine: the processes of a data-parallel run (an mpi4py
    communicator; each runs whole shards of every global batch:
    :func:`fnnet.train_step` with ``comm``) and each one's ``threads`` (None: every core
    alone, one thread a rank under MPI). Not part of a config: a run may resume on another
    number of ranks or threads, and gets the same bits."""

    comm: Any = attrs.field(factory=_Alone)
    threads: int | None = None

    @classmethod
    def mpi_world(cls, threads: int | None) -> Ranks:
        """MPI_COMM_WORLD's ranks (--distributed), or a FlagError saying what to install."""
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise FlagError(f"--distributed needs mpi4py and an MPI ({exc}): pip install mpi4py mpich, "
                            "or mpi4py built against the site's MPI") from None
        return cls(MPI.COMM_WORLD, threads)

    @property
    def mpi(self) -> bool:
        return not isinstance(self.comm, _Alone)

    @property
    def step_comm(self) -> Any:
        """The communicator of the training step (None: one process)."""
        return self.comm if self.mpi else None

    @property
    def step_threads(self) -> int | None:
        """The threads of this process's training step and evaluations (None: every core)."""
        return self.threads or (1 if self.mpi else None)

    @property
    def cores(self) -> int | None:
        """Deprecated name of :attr:`step_threads` (a count of threads, not of cores)."""
        warnings.warn("Ranks.cores is Ranks.step_threads", DeprecationWarning, stacklevel=2)
        return self.step_threads

    @property
    def size(self) -> int:
        return int(self.comm.Get_size())

    @property
    def root(self) -> bool:
        return self.comm.Get_rank() == 0

    def on_root(self, f: Callable[[], Any]) -> Any:
        """``f()`` on rank 0, its result (or its FnnetError) on every rank: rank 0 alone
        reads and writes --out, and every rank stops on its errors."""
        result: Any = None
        if self.root:
            try:
                result = f()
            except FnnetError as exc:
                result = exc
        result = self.comm.bcast(result, root=0)
        if isinstance(result, FnnetError):
            raise result
        return result

    def check_shards(self, step: Any, params: Params, batch_sizes: Iterable[int], input_shape: tuple,
                     dtype: np.dtype) -> int:
        """The shards a batch of ``batch_sizes[0]`` rows is cut into, or a FlagError unless
        every batch size the run will see (the full batch, the last of an epoch) is cut into
        whole shards these ranks share (:func:`fnnet.shards.rank_shards`): before any work."""
        counts = []
        for n in batch_sizes:
            sizes = step.cut(params, (n, *input_shape), dtype)
            try:
                rank_shards(sizes, self.size, 0)
            except InvalidValueError as exc:
                raise FlagError(f"--distributed on {self.size} ranks: {exc}".replace("rows_per_shard=", "--shard-rows ")
                                ) from None
            counts.append(len(sizes))
        return counts[0]

    def interrupts(self) -> Interrupts:
        """Ctrl-C that every rank agrees on (see :class:`Interrupts`); close it after the loop."""
        return Interrupts(self)

    @contextlib.contextmanager
    def blas_budget(self) -> Iterator[None]:
        """The whole run's share of BLAS threads: under MPI, the ranks on this machine share
        its cores (each rank's jit runs one thread, so nothing else caps BLAS); one process
        leaves BLAS to jit and predict, which cap it while their threads run."""
        if not self.mpi:
            yield
            return
        from mpi4py import MPI

        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # (the ranks on this machine)
        try:
            share = blas_share(node.Get_size())
        finally:
            node.Free()
        with share:
            yield


class Interrupts:
    """Ctrl-C under MPI, stopping every rank after the same step.

    ``stop()``, called by every rank after every step (one ``allreduce``), is True on
    every rank once any rank was interrupted: every rank then stops after that step, and
    rank 0 saves a state that every rank holds. A second Ctrl-C interrupts at once
    (KeyboardInterrupt, ``agreed`` False: the run should say which checkpoint is the last
    whole one). In one process Ctrl-C is KeyboardInterrupt as always (a step never leaves
    the state half made: ``agreed`` is True) and ``stop()`` is False."""

    def __init__(self, ranks: Ranks) -> None:
        self._comm, self._hit, self._stopped = ranks.comm, 0, False
        self._before: Any = None
        self.mpi = ranks.mpi and threading.current_thread() is threading.main_thread()
        if self.mpi:
            self._before = signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if self._hit:
            raise KeyboardInterrupt
        self._hit = 1

    def __call__(self) -> bool:
        self._stopped = self.mpi and bool(self._comm.allreduce(self._hit))
        return self._stopped

    @property
    def agreed(self) -> bool:
        """Whether the interrupt was agreed on by every rank (always, in one process)."""
        return self._stopped or not self.mpi

    def close(self) -> None:
        """Ctrl-C as it was before."""
        if self.mpi:
            signal.signal(signal.SIGINT, self._before)
            self.mpi = False
