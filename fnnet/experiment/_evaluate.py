"""Evaluation on every rank, test-time flips, and the divergence watch of the training loss."""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from .._errors import DivergenceError, InvalidValueError, ShapeError
from ..data import Split
from ..losses import softmax_cross_entropy
from ..train import CHUNK_ROWS, predict
from ..typing import Params
from ._ranks import Ranks

TTA = ("flip",)
"""The test-time augmentations :func:`evaluate` knows: ``"flip"`` averages the logits of
each image and of its mirror image (for classes a mirror keeps, as ``augment.hflip``)."""


def evaluate(model: Any, params: Params, split: Split, dtype: np.dtype, step: int, ranks: Ranks | None = None,
             model_state: Any = None, tta: str | None = None) -> dict:
    """Loss, accuracy and predictions of ``params`` (after ``step``) on a whole split;
    on several ranks each predicts its share of the images, in whole chunks of one
    process's (a row's outputs depend on its chunk), and every rank gathers every output
    and computes the loss over the whole split: the same bits on any number of ranks.
    ``tta="flip"``: the outputs are the mean of the logits of each image and of its
    mirror image (:data:`TTA`); None: of the image alone."""
    if tta is not None and tta not in TTA:
        raise InvalidValueError(f"evaluate: tta must be None or one of {TTA}, got {tta!r}")
    if tta == "flip" and split.x.ndim != 4:
        raise ShapeError(f"evaluate: tta='flip' mirrors images (N, C, H, W), got inputs of shape {split.x.shape}")
    ranks = ranks or Ranks()
    comm = ranks.comm
    n, size, rank = len(split), comm.Get_size(), comm.Get_rank()
    bounds = [r * n // size // CHUNK_ROWS * CHUNK_ROWS for r in range(size)] + [n]
    mine = slice(bounds[rank], bounds[rank + 1])
    kw = {} if model_state is None else {"model_state": model_state}
    x = split.x[mine].astype(dtype, copy=False)
    logits = predict(model, params, x, threads=ranks.step_threads, **kw)
    if tta == "flip":
        mirrored = predict(model, params, np.ascontiguousarray(x[..., ::-1]), threads=ranks.step_threads, **kw)
        logits = (logits + mirrored) * logits.dtype.type(0.5)
    if size > 1:  # (fewer images than ranks leave some ranks none)
        logits = np.concatenate(comm.allgather(logits))
    if not np.isfinite(logits).all():  # finite params whose outputs overflow: diverged (the loss refuses them)
        raise DivergenceError(f"step {step}: the model's outputs on evaluation images are NaN or inf")
    pred = logits.argmax(axis=1)
    loss = float(softmax_cross_entropy(logits, split.y)[0])
    return {"loss": loss, "accuracy": float(np.mean(pred == split.y)), "pred": pred}


@attrs.frozen
class Divergence:
    """A classifier that learns stays below the loss of a uniform guess, ``log(classes)``:
    a mean loss above twice that has diverged, even if it is finite.

    During training the rule judges the mean training loss of the latest evaluation
    windows that together cover at least ``min_examples`` training examples (weighted by
    their examples; nothing is judged before the run has seen that many: one batch of two
    images says nothing). A run ends diverged when its final state does: its loss on the
    whole validation split."""

    classes: int
    min_examples: int = 512

    @property
    def above(self) -> float:
        return 2 * math.log(self.classes)

    def warnings(self, rows: list[dict], batch_size: int) -> list[str]:
        """The warnings of the latest metrics row of ``rows`` (each with its ``step`` and the
        mean training ``loss`` since the row before; ``batch_size`` examples a step)."""
        examples, total, steps = 0, 0.0, [0] + [r["step"] for r in rows]
        for row, before in zip(reversed(rows), reversed(steps[:-1])):
            n = (row["step"] - before) * batch_size
            examples, total = examples + n, total + row["loss"] * n
            if examples >= self.min_examples:
                break
        if examples < self.min_examples or total / examples <= self.above:
            return []
        step = rows[-1]["step"]
        return [f"diverging: mean training loss {total / examples:.4g} over the {examples} examples up to step "
                f"{step} is above twice the chance level ({self.above:.3f}); lower --lr"]

    def final(self, val_loss: float, step: int) -> list[str]:
        """The warning of a run whose final validation loss is ``val_loss``: diverged (exit
        status 3) when it is not finite or above twice the chance level."""
        if math.isfinite(val_loss) and val_loss <= self.above:
            return []
        return [f"diverging: the final validation loss {val_loss:.4g} at step {step} is above twice the chance "
                f"level ({self.above:.3f}); lower --lr"]
