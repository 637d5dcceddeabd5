"""The runner's public door: what ``train``, ``export``, ``pytorch`` and ``losses`` take
from ``layers`` to prepare and run models, without reaching into its private modules.

* :func:`prepare`, :func:`prepare_checked`, :func:`run`, :func:`run_backward`,
  :class:`Site`, :class:`Chain`, :func:`run_chain`, :func:`run_chain_backward`,
  :func:`check_batch`, :func:`one_output`: the runner (``fnnet/layers/_runner.py``);
* :func:`as_batch`, :func:`check_init_dtype`, :data:`FLOAT_DTYPES`: the input checks every
  path shares.
"""

from .layers._checks import FLOAT_DTYPES, as_batch, check_init_dtype
from .layers._runner import (
    Chain,
    Site,
    check_batch,
    one_output,
    prepare,
    prepare_checked,
    run,
    run_backward,
    run_chain,
    run_chain_backward,
)

__all__ = ["FLOAT_DTYPES", "Chain", "Site", "as_batch", "check_batch", "check_init_dtype", "one_output",
           "prepare", "prepare_checked", "run", "run_backward", "run_chain", "run_chain_backward"]
