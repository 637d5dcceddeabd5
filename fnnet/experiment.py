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

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from . import checkpoint
from ._errors import DataError, DivergenceError, FnnetError, InvalidTypeError, InvalidValueError, ShapeError
from .data import Split
from .layers import Layer
from .losses import softmax_cross_entropy
from .threads import blas_share
from .train import CHUNK_ROWS, TrainState, predict, rank_shards
from .tree import EMPTY, check_like, tree_leaves
from .typing import Params

__all__ = ["TTA", "Divergence", "FlagError", "Interrupts", "Ranks", "Run", "RunFolder", "evaluate", "exit_status",
           "follow_metrics", "load_run", "number", "read_metrics", "save_plots", "write_atomic"]


class FlagError(InvalidValueError):
    """A command-line flag has a bad value, or values that do not fit together or the data."""


def number(kind: type[int] | type[float], low: float, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite ``kind`` (int or float) >= ``low`` (> if ``low_open``);
    argparse names the flag in the error."""

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or (value <= low if low_open else value < low):
            what = "an integer" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {what} {'>' if low_open else '>='} {low:g}, got {text!r}")
        return value

    convert.__name__ = kind.__name__
    return convert


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (:func:`fnnet.checkpoint.atomic_write`):
    a kill leaves the old or the new file."""
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def _config_diff(old: object, new: dict) -> str:
    """The fields that differ, then both configs whole."""
    both = f"  the checkpoint's config: {old!r}\n  this run's config:       {new}"
    if not isinstance(old, dict):
        return both
    keys = [k for k in new if old.get(k) != new[k]] + [k for k in old if k not in new]
    return "\n".join(f"  {k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys) + "\n" + both


_NAMES = {"data_key": "data-order key"}  # what a checkpoint's metadata entries are, for errors


def _check_makeable(out: pathlib.Path) -> None:
    """A FlagError unless the folder ``out`` exists or can be made (made and removed again
    here: a refused run leaves nothing behind)."""
    blocker = next((p for p in [*reversed(out.parents), out] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise FlagError(f"--out {out}: {blocker} is a file, not a folder")
    made = [p for p in [*reversed(out.parents), out] if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fnnet-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise FlagError(f"--out {out}: cannot be written ({exc.strerror or exc})") from None
    finally:
        for p in reversed(made):
            with contextlib.suppress(OSError):
                p.rmdir()


@attrs.frozen
class RunFolder:
    """A run's output folder ``path``, whose files are ``outputs`` (the checkpoint first,
    then ``metrics.jsonl``...); ``config``: the run's config as a dict, which its
    checkpoint records and a resumed run must match."""

    path: pathlib.Path = attrs.field(converter=pathlib.Path)
    outputs: tuple[str, ...]
    config: dict

    @property
    def checkpoint(self) -> pathlib.Path:
        return self.path / self.outputs[0]

    @property
    def metrics(self) -> pathlib.Path:
        return self.path / "metrics.jsonl"

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse an --out that would lose or mix files, before any work starts."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise FlagError(f"--out {out}: is a file, not a folder")
        _check_makeable(out)
        existing = [name for name in self.outputs if (out / name).exists()]
        if resume:
            if not self.checkpoint.is_file():
                raise FlagError(f"--resume: no checkpoint to resume in --out {out} ({self.checkpoint} is missing)")
        elif existing and not overwrite:
            raise FlagError(
                f"--out {out}: holds a run ({', '.join(existing)}); pass --resume to continue it, --overwrite to "
                "replace it, or another --out"
            )

    def start(self) -> None:
        """A fresh run: the folder made, no file of an old run left beside the new one."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name in self.outputs:
            (self.path / name).unlink(missing_ok=True)

    def resume(self, like: TrainState, meta: dict) -> tuple[TrainState, dict, list[dict]]:
        """The checkpoint's state (its params and optimizer state checked against
        ``like``), its metadata and the metrics rows up to its step; a FlagError when it
        belongs to another config or ``meta`` (the data-order key...) differs."""
        ckpt = self.checkpoint
        tree, found = checkpoint.load(ckpt)
        old = _with_new_fields(found.get("config"), self.config)
        if old != self.config:  # before the tree: another preset has other params
            raise FlagError(f"--resume: {ckpt} was written with another config:\n"
                            f"{_config_diff(found.get('config'), self.config)}\n"
                            "pass the flags of that run, or another --out")
        for key, value in meta.items():
            if found.get(key) != value:
                raise FlagError(f"--resume: {ckpt} has another {_NAMES.get(key, key)}")
        check_like(tree, _saved(like), f"--resume: {ckpt} does not hold this config's model and optimizer state")
        state = TrainState(tree["params"], tree["opt_state"], int(found["step"]), tree.get("model_state", EMPTY))
        return state, found, [r for r in self.read_metrics() if r["step"] <= state.step]

    def save(self, state: TrainState, meta: dict) -> None:
        """The checkpoint: params, optimizer state, model state (batch norm's running
        statistics, if the model has any), step, the config and ``meta``."""
        checkpoint.save(self.checkpoint, _saved(state), {"step": state.step, "config": self.config, **meta})

    def read_metrics(self) -> list[dict]:
        """The rows of ``metrics.jsonl``. A torn last line (a kill during a write) is
        dropped with a note; a bad line before it is a DataError naming the file and line."""
        return read_metrics(self.metrics)

    def write_metrics(self, rows: list[dict]) -> None:
        """``metrics.jsonl`` as ``rows`` (at the start of a run: a resumed run's rows up to its step)."""
        write_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")

    def write_json(self, name: str, value: Any) -> None:
        write_atomic(self.path / name, json.dumps(value, indent=2) + "\n")


def _with_new_fields(old: Any, new: dict) -> Any:
    """``old`` (a checkpoint's config) with the fields it lacks and ``new`` has turned off
    (None, 0, False: a field added since, whose off keeps the old behaviour), nested."""
    if not isinstance(old, dict):
        return old
    filled = {k: v for k, v in new.items() if k not in old and not isinstance(v, dict) and not v}
    return {**filled, **{k: _with_new_fields(v, new[k]) if isinstance(new.get(k), dict) else v
                         for k, v in old.items()}}


@attrs.frozen
class Run:
    """A run folder opened by :func:`load_run`: the ``model``, the state of its last
    checkpoint (``state``: params, optimizer state, step, model state), ``params``, the
    ones to predict with (``state.params``, or what the run evaluated, such as their
    moving average), the ``config`` it was run with, its ``summary`` (``summary.json``;
    None for a run stopped before its end) and its ``metrics`` (the rows of
    ``metrics.jsonl`` up to the checkpoint's step)."""

    model: Layer
    state: TrainState
    params: Any
    config: dict
    summary: dict | None
    metrics: list

    @property
    def model_state(self) -> Any:
        return self.state.model_state


def load_run(folder: str | os.PathLike, model: Layer | Callable[[dict], Layer], input_shape: Sequence[int]
             ) -> Run:
    """The run in ``folder`` (a :class:`RunFolder`'s: ``checkpoint.npz``, and
    ``summary.json`` and ``metrics.jsonl`` if written), finished or stopped. ``model``: its
    model, or a function of the run's config that builds it; ``input_shape``: one sample's.
    The params are checked against the model (an error names the layer). A folder that is
    missing, holds no checkpoint or one without a config is a
    :class:`~fnnet.DataError` naming the folder and what is missing.
    (``pipelines/recipes.py``'s ``load_run(folder)`` passes the pipeline's models.)"""
    path = pathlib.Path(folder)
    if not path.is_dir():
        raise DataError(f"{path}: no such run folder")
    ckpt = path / "checkpoint.npz"
    if not ckpt.is_file():
        raise DataError(f"{path}: holds no checkpoint.npz (not a run folder, or a run stopped before its first save)")
    tree, meta = checkpoint.load(ckpt)
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(tree, Mapping) or "params" not in tree:
        raise DataError(f"{ckpt}: holds no run config and params (a checkpoint, but not a run's)")
    layer = model if isinstance(model, Layer) else model(config)
    if not isinstance(layer, Layer):
        raise InvalidTypeError(f"load_run: model must be a fnnet Layer or a function of the config giving one, "
                               f"got {type(layer).__name__}")
    params = tree["params"]
    leaves = tree_leaves(params)
    layer.output_shape(params, tuple(input_shape), leaves[0].dtype if leaves else np.float32)  # (names the layer)
    state = TrainState(params, tree["opt_state"], int(meta.get("step", 0)), tree.get("model_state", EMPTY))
    summary_path = path / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except ValueError as exc:
        raise DataError(f"{summary_path}: not JSON ({exc})") from None
    metrics = [r for r in read_metrics(path / "metrics.jsonl") if r.get("step", 0) <= state.step]
    return Run(layer, state, state.params, config, summary, metrics)


def _saved(state: TrainState) -> dict:
    """What a checkpoint holds of ``state`` (a model without state: no model state)."""
    tree = {"params": state.params, "opt_state": state.opt_state}
    return {**tree, "model_state": state.model_state} if state.model_state else tree


def read_metrics(path: pathlib.Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (see :meth:`RunFolder.read_metrics`); none if it is missing."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    if lines[-1] == "":
        lines.pop()
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a row with a step")
            rows.append(row)
        except ValueError as exc:
            if i == len(lines):
                print(f"note: {path}: dropped a torn last line ({len(line)} bytes)", file=sys.stderr)
                break
            raise DataError(f"{path}: line {i} is not a metrics row ({exc})") from None
    return rows


def follow_metrics(path: pathlib.Path, running: Callable[[], bool], poll: float = 0.2) -> Iterator[dict]:
    """The rows of a ``metrics.jsonl`` that another process writes, each as soon as its
    line is whole, until ``running()`` turns False (then the rest). For a sweep that
    reports a trial's evaluations while the trial runs as a command of its own."""
    done, seen = False, 0
    while not done:
        done = not running()  # (read once more after the writer ended: its last rows)
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        lines = text.split("\n")[:-1]  # whole lines only: the last may be mid-write
        if len(lines) < seen:  # (the writer started the file again: --overwrite)
            seen = 0
        for line in lines[seen:]:
            yield json.loads(line)
        seen = len(lines)
        if not done:
            time.sleep(poll)


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
        whole shards these ranks share (:func:`fnnet.train.rank_shards`): before any work."""
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


def save_plots(
    out: pathlib.Path, rows: list[dict], test_x: np.ndarray, test_y: np.ndarray, pred: np.ndarray,
    classes: tuple[str, ...],
) -> list[str]:
    """``learning_curves.png`` (training and validation loss and accuracy of ``rows``) and
    ``predictions.png`` (the first test images, then mistakes); the names written, none
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping learning_curves.png and predictions.png "
              "(pip install matplotlib)", file=sys.stderr)
        return []
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [r["loss"] for r in rows], label="train (mean since last eval)")
    ax1.plot(steps, [r["val_loss"] for r in rows], label="validation")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(steps, [r["train_accuracy"] for r in rows], label="train (mean since last eval)")
    ax2.plot(steps, [r["val_accuracy"] for r in rows], label="validation")
    ax2.set_xlabel("step")
    ax2.set_ylabel("accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=100)
    plt.close(fig)

    # first 40 test images, with every mistake among the first 1000 shown after them
    wrong = np.flatnonzero(pred[:1000] != test_y[:1000])
    idx = np.concatenate([np.arange(40 - min(len(wrong), 20)), wrong[:20]])
    fig, axes = plt.subplots(5, 8, figsize=(12, 8))
    for ax, i in zip(axes.ravel(), idx):
        ok = pred[i] == test_y[i]
        ax.imshow(test_x[i, 0], cmap="gray_r")
        ax.set_title(f"{classes[test_y[i]]} / {classes[pred[i]]}" + ("" if ok else " ✗"),
                     color="black" if ok else "red", fontsize=9)
        ax.axis("off")
    fig.suptitle("test images: true / predicted (mistakes in red)")
    fig.tight_layout()
    fig.savefig(out / "predictions.png", dpi=80)
    plt.close(fig)
    return ["learning_curves.png", "predictions.png"]


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
