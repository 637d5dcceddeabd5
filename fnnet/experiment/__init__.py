"""What a training script needs around its loop: run folders, metrics files, ranks, plots, exit statuses.

``pipelines/mnist.py`` reads top to bottom (flags, data, model, step, loop, outputs)
because this module holds the rest, and ``pipelines/sweep.py`` uses the same parts:

* :class:`RunFolder`: ``--out`` refused before any work when it would lose or mix files
  (``--resume``, ``--overwrite``), atomic writes, ``metrics.jsonl`` (a torn last line
  dropped; :func:`follow_metrics` reads it while another process writes it), the
  checkpoint with the config it belongs to;
* :class:`Ranks`: the processes of a data-parallel run (mpi4py's ``MPI_COMM_WORLD``, or
  this process alone) and each one's threads; :func:`evaluate` on all of them;
* :class:`Divergence`: a mean training loss far above chance level, said once per row;
* :func:`save_plots`: learning curves and predictions (matplotlib, if installed);
* :func:`number`: argparse types that name the flag in their errors;
* :func:`exit_status`: the exit statuses of a run (0 done, 2 bad flags or files,
  3 diverged, 130 interrupted), the same on every rank.
"""

from .._io import write_atomic
from ._evaluate import TTA, Divergence, evaluate
from ._flags import FlagError, number
from ._folder import Run, RunFolder, follow_metrics, load_run, read_metrics
from ._plots import save_plots
from ._ranks import Interrupts, Ranks
from ._status import exit_status

__all__ = ["TTA", "Divergence", "FlagError", "Interrupts", "Ranks", "Run", "RunFolder", "evaluate", "exit_status",
           "follow_metrics", "load_run", "number", "read_metrics", "save_plots", "write_atomic"]
