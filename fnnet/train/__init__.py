"""Training: the state, the pure step, the body every runner runs, the shard cut, jit and predict.

* ``_state.py``: :class:`TrainState`;
* ``_step.py``: :class:`Step` and :func:`train_step` (the records, the checks of a call);
* ``_body.py``: the one body of a step and the plan it runs on;
* ``_sizing.py``: what a row of a batch costs the model (the cut's least rows, memory checks);
* ``_jit.py``: :func:`jit`, the step with its plans kept, its shards on threads;
* ``_predict.py``: :func:`predict`, with its own chunking;
* ``_diverge.py``: what a step says when its numbers stop being finite.
"""

import warnings
from typing import Any

from .. import threads
from ..shards import MAX_SHARDS, MIN_SHARD_ROWS, SHARD_BYTES, cut, rank_shards
from ._jit import JitStep, jit
from ._predict import CHUNK_BYTES, CHUNK_ROWS, predict
from ._sizing import least_shard_rows, row_bytes
from ._state import TrainState
from ._step import Step, train_step

__all__ = ["CHUNK_BYTES", "CHUNK_ROWS", "MAX_SHARDS", "MIN_SHARD_ROWS", "SHARD_BYTES", "JitStep", "Step",
           "TrainState", "cut", "jit", "least_shard_rows", "predict", "rank_shards", "row_bytes", "train_step"]


def __getattr__(name: str) -> Any:
    if name == "cores":  # (moved to fnnet.threads with the thread budget)
        warnings.warn("fnnet.train.cores is fnnet.threads.cores", DeprecationWarning, stacklevel=2)
        return threads.cores
    if name == "shard_rows":  # (0.2.0's name, too near rows_per_shard)
        warnings.warn("fnnet.train.shard_rows is fnnet.train.least_shard_rows", DeprecationWarning, stacklevel=2)
        return least_shard_rows
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
