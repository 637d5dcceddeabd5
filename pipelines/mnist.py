#!/usr/bin/env python3
"""Train a CNN on MNIST (or Fashion-MNIST) with fnnet: seeded, resumable, reproducible.

Presets:
  tutorial  the numpy tutorial this project grew from, faithfully: float64; conv 1 filter
            3x3 => relu => maxpool 2 => flatten => dense 64 => relu => dense 10; weights
            N(0, 0.01^2), biases 0; batches of 2 drawn with replacement; 2000 steps;
            Keras-style SGD (lr 0.01, momentum 0.9, decay 1e-6); every 100 steps the loss
            and accuracy on 200 random validation images.
  default   a small float32 CNN (conv 16 => pool => conv 32 => pool => dense 128) trained
            with Adam and a cosine schedule for 4 epochs: >= 99 % MNIST test accuracy.
  best      conv 32 => pool => conv 64 => pool => dense 128, 15 epochs, label smoothing 0.1;
            on MNIST batches augmented by shifts, rotations, scaling and shear (>= 99.5 %
            test accuracy), on Fashion-MNIST same padding and horizontal flips (>= 93 %);
            under 300 s (the table of what differs: recipes.BEST_BY_DATASET).

Outputs in --out: metrics.jsonl, summary.json, learning_curves.png, predictions.png,
checkpoint.npz (params, optimizer state, step and data-order key; atomic, no pickle).
The same seed and config give bit-identical params on the same machine and numpy/BLAS
build (summary.json records both: "runtime"); --resume continues from the checkpoint
and ends with the same params as an uninterrupted run.

Data-parallel over MPI: ``mpiexec -n N python -m mpi4py pipelines/mnist.py --distributed
...`` trains the same run on N processes, each on whole shards of every global batch, and
gives the bits of one process (rank 0 writes --out; docs/scaling.md). --shard-rows cuts
the batches finer, so that more ranks share them.

Every flag is checked before any work starts. --out never overwrites a run by surprise:
a folder that holds one needs --resume (to continue it) or --overwrite (to replace it).
Exit status: 0 done, 2 bad flags or files, 3 training diverged (a non-finite update was
refused, the last checkpoint, if one was written, is intact; or the loss ended far above
chance level), 130 interrupted (Ctrl-C: every rank stops after the same step and the
checkpoint is saved; a second Ctrl-C stops at once and says which checkpoint --resume
continues from).
"""

from __future__ import annotations

import functools
import pathlib
import sys
import time
from typing import Any

import attrs
import numpy as np
from recipes import (
    Config,
    batch_indices,
    build_augment,
    build_model,
    build_optimizer,
    check_memory,
    eval_params,
    make_config,
    parse_args,
)
from tqdm import tqdm

import fnnet as fn
from fnnet import data, optim, random
from fnnet.experiment import Divergence, FlagError, Ranks, RunFolder, evaluate, exit_status, save_plots

OUTPUTS = ("checkpoint.npz", "metrics.jsonl", "summary.json", "learning_curves.png", "predictions.png", "model.onnx")


@attrs.frozen
class Job:
    """What a run trains, made from its config: the model and its jitted step, the training
    images, the keys of data order, evaluation samples and augmentation, the first state."""

    model: fn.Layer
    step: fn.JitStep
    train: data.Split
    augment: Any
    dtype: np.dtype
    keys: dict  # "data", "eval", "aug"
    state: fn.TrainState
    shards: int


def setup(cfg: Config, ds: data.Dataset, ranks: Ranks) -> Job:
    """The model, the optimizer and the step: one key each for init, data order, evaluation
    samples, augmentation and dropout (split's children do not depend on their count)."""
    dtype = np.dtype(cfg.dtype)
    train = ds.train if cfg.train_size is None else data.Split(ds.train.x[: cfg.train_size],
                                                                 ds.train.y[: cfg.train_size])
    model, opt = build_model(cfg), build_optimizer(cfg)
    k_init, k_data, k_eval, k_aug, k_drop = random.split(random.key(cfg.seed), 5)
    params, _ = model.init(k_init, (1, 28, 28), dtype=dtype)
    loss_fn = functools.partial(fn.softmax_cross_entropy, label_smoothing=cfg.regularization.label_smoothing)
    step = fn.train_step(model, loss_fn, opt, rows_per_shard=cfg.shard_rows or "auto", comm=ranks.step_comm,
                         key=k_drop if model.stochastic else None)
    last = len(train) % cfg.batch_size if cfg.sampling == "epoch" else 0  # (an epoch's last batch, if short)
    shards = ranks.check_shards(step, params, [cfg.batch_size, *([last] if last else [])], (1, 28, 28), dtype)
    return Job(model, fn.jit(step, threads=ranks.step_threads), train, build_augment(cfg), dtype,
               {"data": k_data, "eval": k_eval, "aug": k_aug}, fn.TrainState.create(params, opt, model), shards)


def train_on(job: Job, state: fn.TrainState, idx: np.ndarray) -> tuple[fn.TrainState, dict]:
    """One step on the training images ``idx``, augmented by the step's own key."""
    x = job.train.x[idx]
    if job.augment is not None:
        x = job.augment(random.fold_in(job.keys["aug"], state.step), x)
    return job.step(state, (x.astype(job.dtype, copy=False), job.train.y[idx]))


def run(cfg: Config, out: pathlib.Path, ds: data.Dataset, resume: bool = False, stop_after: int | None = None,
        overwrite: bool = False, ranks: Ranks | None = None, export: str | None = None) -> dict:
    """Train ``cfg`` on ``ds`` into ``out``; the run's summary. Raises DivergenceError
    if a step would make the params non-finite (the last checkpoint stays as it was).
    ``export="onnx"`` also writes the trained model as ``model.onnx``.
    ``ranks``: the MPI processes that train together (``--distributed``): each runs whole
    shards of every global batch, with the bits of one process; rank 0 alone writes."""
    t_start = time.perf_counter()
    ranks = ranks or Ranks()
    folder = RunFolder(out, OUTPUTS, attrs.asdict(cfg))
    ranks.on_root(lambda: folder.check(resume, overwrite))
    job = setup(cfg, ds, ranks)
    book = Logbook(cfg, ds, job, folder, ranks, t_start)
    state = book.begin(resume)
    batches = batch_indices(cfg, job.keys["data"], len(job.train), state.step)
    end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    stop = ranks.interrupts()  # (Ctrl-C under MPI: every rank stops after the same step)
    try:
        while state.step < end:  # the training loop: every rank passes the global batch
            state, metrics = train_on(job, state, next(batches))
            if stop():
                raise KeyboardInterrupt
            book.step(metrics)
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                book.evaluation(state)
    except KeyboardInterrupt:
        book.interrupted(state, stop.agreed)
        raise SystemExit(130) from None
    finally:
        book.close()
        stop.close()
    if ranks.root:
        book.save(state)
    if state.step < cfg.steps:
        book.say(f"stopped at step {state.step} of {cfg.steps} (--stop-after); continue with --resume")
        return {"step": state.step, "params_sha256": fn.checkpoint.digest(state.params)}
    return outputs(cfg, ds, folder, job.model, state, ranks, book.rows, job.dtype, job.shards, book.seconds(), export)


class Logbook:
    """What the loop keeps beside the state: the bar and the lines it prints, the metrics
    rows and their running means, the checkpoints it saves (rank 0 writes), and the time
    its training and its evaluations took."""

    def __init__(self, cfg: Config, ds: data.Dataset, job: Job, folder: RunFolder, ranks: Ranks, t_start: float):
        self.cfg, self.ds, self.job, self.folder, self.ranks, self.t_start = cfg, ds, job, folder, ranks, t_start
        self.data_key = {"data_key": [job.keys["data"].entropy, list(job.keys["data"].path)]}
        self.rows: list[dict] = []
        self.before = 0.0  # (the elapsed seconds of the run before a resume)
        self.saved: int | None = None  # (the step of the last checkpoint written)
        self.divergence = Divergence(len(ds.classes))
        self.sums = [0.0, 0.0, 0]  # training loss, accuracy, steps since the last evaluation
        self.progress: Any = None
        self.t_loop, self.t_eval = 0.0, 0.0  # this process's training loop, and its evaluations and checkpoints

    def begin(self, resume: bool) -> fn.TrainState:
        """A fresh run, or the checkpoint's state (rank 0 reads; every rank gets it); the bar started."""
        cfg, job, ranks, state = self.cfg, self.job, self.ranks, self.job.state
        if resume:
            resumed, meta, self.rows = ranks.on_root(lambda: _resume(self.folder, state, self.data_key, ranks.size))
            state = fn.TrainState(fn.freeze(resumed.params), fn.freeze(resumed.opt_state), resumed.step,
                                  fn.freeze(resumed.model_state))
            self.before, self.saved = float(meta.get("elapsed", 0.0)), state.step
        else:
            ranks.on_root(self.folder.start)
        if ranks.mpi:  # one key gives every rank the same params (a heterogeneous cluster might not)
            fn.distributed.check_replicated(state.params, ranks.comm)
        if ranks.root:
            self.folder.write_metrics(self.rows)
        # a bar on a terminal (tqdm, on stderr), nothing otherwise; evaluations print lines
        self.progress = tqdm(total=cfg.steps, initial=state.step, unit="step", disable=None if ranks.root else True,
                             dynamic_ncols=True)
        mpi = f", {ranks.size} ranks (MPI: each runs whole shards)" if ranks.mpi else ""
        self.say(f"{cfg.preset} preset on {cfg.dataset} ({self.ds.source}), seed {cfg.seed}, {cfg.steps} steps of "
                 f"{cfg.batch_size} ({job.shards} shard{'s' if job.shards > 1 else ''}), {cfg.dtype}, kernels "
                 f"{fn.kernels.backend()}{mpi}")
        self.t_loop = time.perf_counter()
        return state

    def say(self, line: str) -> None:
        """A line on stdout, under the bar, now (a pipe buffers)."""
        if self.ranks.root:
            self.progress.write(line)
            sys.stdout.flush()

    def save(self, state: fn.TrainState) -> None:  # (rank 0)
        self.folder.save(state, {**self.data_key, "elapsed": self.before + time.perf_counter() - self.t_start,
                                 "ranks": self.ranks.size})
        self.saved = state.step

    def step(self, metrics: dict) -> None:
        self.sums = [self.sums[0] + metrics["loss"], self.sums[1] + metrics["accuracy"], self.sums[2] + 1]
        self.progress.set_postfix_str(f"loss {metrics['loss']:.4f}", refresh=False)
        self.progress.update()

    def evaluation(self, state: fn.TrainState) -> None:
        """The evaluation after ``state.step``: a metrics row, a checkpoint, a line."""
        cfg, ranks = self.cfg, self.ranks
        self.t_eval -= time.perf_counter()
        images = _validation(cfg, self.ds, self.job.keys["eval"], state.step)
        val = evaluate(self.job.model, eval_params(cfg, state), images, self.job.dtype, state.step, ranks,
                       state.model_state, cfg.tta)
        if ranks.mpi:  # (a check that the ranks agree)
            fn.distributed.check_replicated(state.params, ranks.comm)
        loss, accuracy, n = self.sums
        per_epoch = data.steps_per_epoch(len(self.job.train), cfg.batch_size)
        row = {
            "step": state.step, "epoch": round(state.step / per_epoch, 4), "loss": loss / n,
            "train_accuracy": accuracy / n, "val_loss": val["loss"], "val_accuracy": val["accuracy"],
            "learning_rate": optim.learning_rate(state.opt_state),
            "elapsed": round(self.before + time.perf_counter() - self.t_start, 3),
        }
        self.rows.append(row)
        if self.divergence.warnings(self.rows, cfg.batch_size):  # (over enough examples to mean something)
            row["warnings"] = self.divergence.warnings(self.rows, cfg.batch_size)
        if ranks.root:
            self.folder.append_metrics(row)
            self.save(state)
        self.sums = [0.0, 0.0, 0]
        self.say(f"step {row['step']:>6}  epoch {row['epoch']:.2f}  train loss {row['loss']:.4f} "
                 f"acc {row['train_accuracy']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}  "
                 f"lr {row['learning_rate']:.2e}  {row['elapsed']:.1f}s")
        for w in row.get("warnings", []):
            self.say(f"warning: {w}")
        self.t_eval += time.perf_counter()

    def interrupted(self, state: fn.TrainState, agreed: bool) -> None:
        """Ctrl-C: the state every rank holds saved, or (a second Ctrl-C) which checkpoint is left."""
        if agreed:
            if self.ranks.root:
                self.save(state)
            self.say(f"interrupted at step {state.step}; checkpoint saved to {self.folder.checkpoint}, continue with "
                     "--resume")
        else:  # (a second Ctrl-C, at once: the ranks may be at different steps)
            self.say("interrupted again: nothing more is saved; --resume continues from the last checkpoint, "
                     + (f"{self.folder.checkpoint} at step {self.saved}" if self.saved is not None
                        else "none: none was written"))
        if agreed and self.ranks.mpi:  # (no rank ends the others before the save)
            self.ranks.comm.Barrier()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def seconds(self) -> dict:
        """The run's start, the seconds before a resume, this process's training and evaluations."""
        return {"start": self.t_start, "before": self.before,
                "train": time.perf_counter() - self.t_loop - self.t_eval, "eval": self.t_eval}


def outputs(cfg: Config, ds: data.Dataset, folder: RunFolder, model: fn.Layer, state: fn.TrainState, ranks: Ranks,
            rows: list[dict], dtype: np.dtype, shards: int, seconds: dict, export: str | None = None) -> dict:
    """The run's outputs: the test split read once, the summary (rank 0 writes it, the plots and,
    with ``export="onnx"``, the model as ``model.onnx``)."""
    t_end = time.perf_counter()
    test, val = (evaluate(model, eval_params(cfg, state), split, dtype, state.step, ranks, state.model_state, cfg.tta)
                 for split in (ds.test, ds.val))
    final = Divergence(len(ds.classes)).final(val["loss"], state.step)  # (the run is judged on its final state)
    warnings = [w for r in rows for w in r.get("warnings", [])] + final
    summary = {
        "config": attrs.asdict(cfg), "seed": cfg.seed, "dataset": cfg.dataset, "data_source": ds.source,
        "runtime": fn.runtime.info(), "kernels_backend": fn.kernels.backend(),
        "distributed": None if not ranks.mpi else {"ranks": ranks.size}, "shards_per_batch": shards,
        "steps": state.step, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "val_accuracy": val["accuracy"], "val_loss": val["loss"],
        "confusion_matrix_test": fn.metrics.confusion_matrix(ds.test.y, test["pred"], len(ds.classes)).tolist(),
        "params_sha256": fn.checkpoint.digest(state.params),
        "wall_seconds": round(seconds["before"] + time.perf_counter() - seconds["start"], 2),
        "train_seconds": round(seconds["train"], 2),  # (this process's: a resumed run counts from its resumption)
        "eval_seconds": round(seconds["eval"] + time.perf_counter() - t_end, 2), "warnings": warnings,
        "diverged": bool(final),
    }
    if not ranks.root:
        return summary
    summary["plots"] = save_plots(folder.path, rows, ds.test.x, ds.test.y, test["pred"], ds.classes)
    if export == "onnx":  # what evaluations use, in float32 (onnxruntime has no float64 Conv)
        fn.export.to_onnx(model, eval_params(cfg, state), (1, 28, 28), folder.path / "model.onnx",
                          model_state=state.model_state, dtype=np.float32)
        summary["onnx"] = "model.onnx"
    folder.write_json("summary.json", summary)
    print(f"test accuracy {test['accuracy']:.4f}  validation accuracy {val['accuracy']:.4f}  "
          f"params sha256 {summary['params_sha256'][:16]}...  {summary['wall_seconds']:.1f}s  -> {folder.path}")
    if summary["diverged"]:
        print(f"warning: {final[0]}")
        print(f"warning: the run ended diverged (exit status 3): {final[0]}", file=sys.stderr)
    return summary


def _validation(cfg: Config, ds: data.Dataset, k_eval: random.Key, step: int) -> data.Split:
    """The images of the evaluation after ``step``: a sample of the validation split, or all of it."""
    if not cfg.eval_samples:
        return ds.val
    pick = random.generator(random.fold_in(k_eval, step)).choice(len(ds.val), cfg.eval_samples, replace=False)
    return data.Split(ds.val.x[pick], ds.val.y[pick])


def _resume(folder: RunFolder, like: fn.TrainState, data_key: dict, size: int) -> tuple:
    """The checkpoint's state, its metadata and metrics rows (rank 0), said as it goes."""
    state, meta, rows = folder.resume(like, data_key)
    print(f"resumed from {folder.checkpoint} at step {state.step}"
          + (f" (written by {meta['ranks']} ranks)" if meta.get("ranks", 1) != size else ""))
    return state, meta, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__)  # the flags: errors name the flag (exit 2)
    out, ranks = pathlib.Path(args.out), [Ranks(threads=args.threads)]

    def go() -> int:
        if args.distributed:
            ranks[0] = Ranks.mpi_world(args.threads)
        if args.data_dir is not None and not pathlib.Path(args.data_dir).expanduser().is_dir():
            raise FlagError(f"--data-dir {args.data_dir}: no such folder")
        check_memory(args)  # (before the data is read)
        ds = data.load(args.dataset, args.data_dir, verify=not args.no_verify)
        cfg = make_config(args, ds)
        with ranks[0].blas_budget():
            summary = run(cfg, out, ds, args.resume, args.stop_after, overwrite=args.overwrite, ranks=ranks[0],
                          export=args.export)
        return 3 if summary.get("diverged") else 0

    return exit_status(go, lambda: ranks[0], out / OUTPUTS[0])


if __name__ == "__main__":
    sys.exit(main())
