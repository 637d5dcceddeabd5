"""A run's exit statuses, the same on every rank: 0 done, 2 bad flags or files, 3 diverged,
130 interrupted."""

from __future__ import annotations

import pathlib
import sys
import time
import traceback
from collections.abc import Callable

from .._errors import DivergenceError, FnnetError
from ._ranks import Ranks


def exit_status(run: Callable[[], int], ranks: Callable[[], Ranks], checkpoint_path: pathlib.Path) -> int:
    """``run()``'s exit status, with errors as statuses on every rank: 2 for an
    FnnetError (bad flags or files), 3 for a DivergenceError (a non-finite update was
    refused: the run's last checkpoint at ``checkpoint_path``, if it wrote one, is
    intact), 130 for Ctrl-C (``SystemExit(130)``), and under MPI any other error ends
    every rank (one rank must not leave the others waiting). ``ranks()``: the run's
    ranks as they are when the error comes."""
    try:
        return run()
    except DivergenceError as exc:
        kept = (f"the last checkpoint, {checkpoint_path}, is intact" if checkpoint_path.is_file() else
                f"no checkpoint was written yet ({checkpoint_path} does not exist: the run diverged before its "
                "first evaluation)")
        return _fail(ranks(), 3, f"training diverged: {exc}\n{kept}; lower --lr")
    except FnnetError as exc:
        return _fail(ranks(), 2, str(exc))
    except SystemExit as exc:  # (Ctrl-C: 130)
        if ranks().size > 1 and exc.code:
            _fail(ranks(), int(exc.code), None)
        raise
    except BaseException:
        if ranks().size == 1:
            raise
        traceback.print_exc()
        return _fail(ranks(), 1, None)


def _fail(ranks: Ranks, status: int, message: str | None) -> int:
    """Print ``message`` (rank 0's, or any rank's own), and end every rank with ``status``."""
    if message is not None:
        prefix = f"rank {ranks.comm.Get_rank()} of {ranks.size}: " if ranks.size > 1 else ""
        print(f"{prefix}error: {message}", file=sys.stderr, flush=True)
    if ranks.size > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)  # (mpiexec forwards output on its own time; an abort can beat the message to it)
        ranks.comm.Abort(status)  # MPI_Abort ends every rank (python -m mpi4py does it too; srun may not)
    return status
