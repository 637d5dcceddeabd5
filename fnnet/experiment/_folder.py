"""A run's folder: refused before any work when it would lose or mix files, its
checkpoint with the config it belongs to, its metrics file, and a finished run opened again."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from .. import checkpoint
from .._errors import DataError, InvalidTypeError
from .._io import write_atomic
from ..export import params_dtype
from ..layers import Layer
from ..train import TrainState
from ..tree import EMPTY, check_like
from ._flags import FlagError


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
        state = _state_of(tree, found)
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
    state = _state_of(tree, meta)
    layer.output_shape(state.params, tuple(input_shape), params_dtype(state.params))  # (names the layer)
    summary_path = path / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except ValueError as exc:
        raise DataError(f"{summary_path}: not JSON ({exc})") from None
    metrics = [r for r in read_metrics(path / "metrics.jsonl") if r.get("step", 0) <= state.step]
    return Run(layer, state, state.params, config, summary, metrics)


def _state_of(tree: Any, meta: dict) -> TrainState:
    """The state a checkpoint holds (:func:`_saved`'s tree, and the step in its metadata)."""
    return TrainState(tree["params"], tree["opt_state"], int(meta.get("step", 0)), tree.get("model_state", EMPTY))


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
