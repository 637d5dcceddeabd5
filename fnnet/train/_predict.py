"""``predict``: a model's outputs in eval mode, in chunks, on one thread or several."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .. import memory
from .._errors import InvalidTypeError, InvalidValueError, check_int
from ..layers import Layer
from ..runner import as_batch, prepare_checked, run
from ..threads import blas_share, largest_product, product_bound, thread_count
from ..tree import EMPTY
from ..typing import Params, PyTree
from ._sizing import row_bytes

__all__ = ["CHUNK_BYTES", "CHUNK_ROWS", "chunk_threads", "predict"]

CHUNK_ROWS = 64
"""The rows of :func:`predict`'s chunks by default. A row's outputs are a function of the
chunk it runs in (a product over more rows may add in another order): outputs of the same
chunks are the same bits (``fnnet.experiment.evaluate`` gives ranks whole chunks)."""
CHUNK_BYTES = 4 << 20
"""The working set of an inference chunk (the buffers of an eval-mode pass,
:func:`fnnet.train.row_bytes` with ``train=False``) above which :func:`predict` shares
chunks between threads by default (LeNet: a chunk of more than 18 rows; the tutorial's
network, whose 64-row chunks are lighter, ran 0.7-0.97x on two threads)."""


def predict(
    model: Layer, params: Params, x: ArrayLike, batch_size: int = CHUNK_ROWS, model_state: PyTree = EMPTY,
    threads: int | None = None,
) -> np.ndarray:
    """Model outputs for ``x`` (N, *input_shape) in eval mode, in chunks of ``batch_size``.

    Eval mode: dropout is off and batch norm uses the running statistics in
    ``model_state``. Checks the model once, then reuses the buffers of one chunk for the
    next. The default chunk keeps the im2col buffers in cache: on a LeNet-size model,
    chunks of 64 run about twice as fast as chunks of 1000. ``threads`` share the
    chunks, each with its own buffers; a chunk's outputs do not depend on which thread
    ran it. The default, None, is every core when a chunk is heavy enough to pay for a
    thread (its eval-mode buffers pass :data:`CHUNK_BYTES`), else one
    thread (the tutorial's network ran 0.7-0.97x on two). Returns a new array
    (N, *output_shape).
    """
    if not isinstance(model, Layer):
        raise InvalidTypeError(f"predict: model must be a fnnet Layer, got {type(model).__name__}")
    x = as_batch(x, "predict")
    check_int("predict", "batch_size", batch_size, 1)
    auto, threads = threads is None, thread_count("predict", threads)
    if model.stateful and not model_state:
        raise InvalidValueError(
            f"predict: the {model.name} model has state (batch norm): pass model_state=state.model_state"
        )
    out_shape = (x.shape[0], *model.output_shape(params, x.shape[1:], x.dtype))
    starts = range(0, x.shape[0], batch_size)
    if auto and len(starts) > 1:
        threads = chunk_threads(model, params, x.shape[1:], x.dtype, batch_size, threads)
    parts = [starts[i::threads] for i in range(min(threads, len(starts)))]
    rows = min(batch_size, x.shape[0])
    memory.require(row_bytes(model, params, x.shape[1:], x.dtype, train=False) * rows * len(parts)
                   + math.prod(out_shape) * x.dtype.itemsize, f"predict on inputs of shape {tuple(x.shape)}",
                   "predict in smaller chunks (batch_size) or on fewer rows at once")
    out = np.empty(out_shape, x.dtype)
    product, bound = largest_product(params, rows), product_bound(params, rows, math.prod(x.shape[2:]))
    if len(parts) <= 1:
        with blas_share(1, product=product, bound=bound):
            _predict_chunks(model, params, x, out, starts, batch_size, model_state)
    else:
        with blas_share(len(parts), product=product, bound=bound), \
                ThreadPoolExecutor(len(parts), thread_name_prefix="fnnet-predict") as pool:
            list(pool.map(lambda part: _predict_chunks(model, params, x, out, part, batch_size, model_state), parts))
    return out


def chunk_threads(model: Layer, params: Params, input_shape: tuple, dtype: Any, batch_size: int, cores: int) -> int:
    """How many threads :func:`predict` runs by default on chunks of ``batch_size`` rows:
    ``cores`` when a chunk's eval-mode buffers (``batch_size`` rows of
    :func:`fnnet.train.row_bytes` with ``train=False``) pass :data:`CHUNK_BYTES`, else 1."""
    if cores > 1 and batch_size * row_bytes(model, params, input_shape, dtype, train=False) > CHUNK_BYTES:
        return cores
    return 1


def _predict_chunks(
    model: Layer, params: Params, x: np.ndarray, out: np.ndarray, starts: range, batch_size: int, model_state: PyTree
) -> None:
    """The outputs of the chunks of ``x`` that begin at ``starts``, into ``out``."""
    site = None
    for i in starts:
        chunk = x[i : i + batch_size]
        if site is None or site.sig.x_shape != chunk.shape:  # the first chunk, or a shorter last one
            site = None  # one set of buffers at a time: release the previous one first
            site, _, _ = prepare_checked(
                model, params, chunk.shape, x.dtype, train=False, need_dx=False, backward=False
            )
        y, _, _ = run(site, params, chunk, None, model_state)
        out[i : i + batch_size] = y
