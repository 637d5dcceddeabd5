"""The MNIST pipeline's recipes: its presets, its flags and the config they make, and the
model, optimizer and augmentation each config names.

``pipelines/mnist.py`` trains a config; ``pipelines/sweep.py`` checks every trial's flags
here before Ray starts. A config is everything that decides a run's result (not where
it is written): the checkpoint records it, and ``--resume`` refuses another.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np
from models import MODELS, model_of

import fnnet as fn
from fnnet import data, optim, random
from fnnet.experiment import TTA, FlagError, number
from fnnet.typing import Params


@attrs.frozen
class Regularization:
    """The augmentation of training batches (0 turns one off), the loss's label smoothing
    and the decay of the params' moving average that evaluations use (0: none): what a
    preset sets and the flags of the same names override."""

    shift: int = 0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    cutout: int = 0
    flip: float = 0.0
    label_smoothing: float = 0.0
    ema: float = 0.0


@attrs.frozen
class Preset:
    """A preset's defaults; flags override them. ``steps`` or ``epochs`` sets the length;
    ``eval_every`` None means once per epoch."""

    model: str
    dtype: str
    batch_size: int
    sampling: str
    steps: int | None
    epochs: float | None
    optimizer: str
    lr: float
    eval_every: int | None
    eval_samples: int
    regularization: Regularization = Regularization()
    tta: str | None = None  # evaluations' test-time augmentation (fnnet.experiment.TTA), None: none


PRESETS = {
    "tutorial": Preset(
        model="tutorial", dtype="float64", batch_size=2, sampling="replacement", steps=2000, epochs=None,
        optimizer="keras_sgd", lr=0.01, eval_every=100, eval_samples=200,
    ),
    # >= 99 % test accuracy in the least time: 4 epochs, chosen on validation among 3-6 epochs
    # and batches of 128 (docs/pipeline.md: 3 epochs fall below 99 %, 6 cost 1.5x for +0.07)
    "default": Preset(
        model="cnn", dtype="float32", batch_size=64, sampling="epoch", steps=None, epochs=4,
        optimizer="adam_cosine", lr=2e-3, eval_every=None, eval_samples=0,
    ),
    # chosen on validation accuracy (docs/pipeline.md has the ablation): >= 99.5 % test
    # accuracy within 300 s on a 2-core machine. Each epoch's evaluation takes 2,000 random
    # validation images (the whole split took 5 % of a run); the run ends on all of it.
    "best": Preset(
        model="cnn_wide", dtype="float32", batch_size=64, sampling="epoch", steps=None, epochs=15,
        optimizer="adam_cosine", lr=2e-3, eval_every=None, eval_samples=2000,
        # (a moving average of the params measured +0.00: not used)
        regularization=Regularization(shift=2, rotate=12.0, scale=0.12, shear=8.0, label_smoothing=0.1),
    ),
}


# What `best` changes by dataset, each for a reason of the data's (chosen on the validation
# split; docs/pipeline.md has the ablations): Preset fields, and Regularization fields.
BEST_BY_DATASET: dict[str, dict[str, Any]] = {
    "mnist": {},  # digits: a mirrored 2 is no digit; handwriting varies in place, slant, size and angle
    "fashion-mnist": {
        "flip": 0.5,  # clothing: a mirrored shirt is a shirt
        "shift": 0, "rotate": 0.0, "scale": 0.0, "shear": 0.0,  # catalogue photos: upright, centred, one size
        "model": "cnn_wide_same",  # the garment reaches the frame's edges (a digit leaves 4 empty pixels)
        "tta": "flip",  # and so the mean of an image's and its mirror's logits (a mirrored shirt is a shirt)
        "epochs": 12,  # same padding costs 1.6x a step of MNIST's network: 15 epochs took over 300 s in slow hours
    },
}


def preset_for(name: str, dataset: str) -> Preset:
    """The preset ``name`` on ``dataset``: ``best`` with its row of :data:`BEST_BY_DATASET`."""
    preset = PRESETS[name]
    if name != "best":
        return preset
    change = BEST_BY_DATASET[dataset]
    regularization = {k: v for k, v in change.items() if k in attrs.fields_dict(Regularization)}
    return attrs.evolve(preset, regularization=attrs.evolve(preset.regularization, **regularization),
                        **{k: v for k, v in change.items() if k not in regularization})


def _positive(inst: Any, attr: Any, value: Any) -> None:
    if value is not None and value < 1:
        raise FlagError(f"--{attr.name.replace('_', '-')} must be >= 1, got {value}")


@attrs.frozen
class Config:
    """Everything that determines the result of a run (not where it is written)."""

    preset: str = attrs.field(validator=attrs.validators.in_(PRESETS))
    dataset: str = attrs.field(validator=attrs.validators.in_(data.DATASETS))
    seed: int = attrs.field(validator=attrs.validators.ge(0))
    model: str = attrs.field(validator=attrs.validators.in_(MODELS))
    dtype: str = attrs.field(validator=attrs.validators.in_(("float32", "float64")))
    batch_size: int = attrs.field(validator=_positive)
    sampling: str = attrs.field(validator=attrs.validators.in_(("replacement", "epoch")))
    steps: int = attrs.field(validator=_positive)
    optimizer: str = attrs.field(validator=attrs.validators.in_(("keras_sgd", "adam_cosine")))
    lr: float = attrs.field(validator=attrs.validators.gt(0))
    eval_every: int = attrs.field(validator=_positive)
    eval_samples: int = attrs.field(validator=attrs.validators.ge(0))
    train_size: int | None = attrs.field(default=None, validator=_positive)
    regularization: Regularization = Regularization()
    shard_rows: int | None = attrs.field(default=None, validator=_positive)  # (None: "auto", by the model)
    tta: str | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.in_(TTA)))


def build_model(cfg: Config) -> fn.Layer:
    return model_of(cfg.model)


def build_augment(cfg: Config) -> data.augment.Augment | None:
    """The training batches' augmentation, or None."""
    parts, r = [], cfg.regularization
    if r.rotate or r.scale or r.shear:
        parts.append(data.augment.affine(r.rotate, r.scale, r.shear))
    if r.shift:
        parts.append(data.augment.translate(r.shift))
    if r.cutout:
        parts.append(data.augment.cutout(r.cutout))
    if r.flip:
        parts.append(data.augment.hflip(r.flip))
    return data.augment.chain(*parts) if parts else None


def build_optimizer(cfg: Config) -> optim.GradientTransformation:
    if cfg.optimizer == "keras_sgd":
        base = optim.keras_sgd(cfg.lr, momentum=0.9, decay=1e-6)
    else:
        base = optim.adam(optim.cosine_decay(cfg.lr, cfg.steps, alpha=0.01, warmup_steps=min(200, cfg.steps // 10)))
    ema = cfg.regularization.ema
    return optim.chain(base, optim.track_ema(ema)) if ema else base


def eval_params(cfg: Config, state: fn.TrainState) -> Params:
    """The params evaluations use: their moving average with ``--ema``, else the params."""
    ema = optim.params_ema(state.opt_state) if cfg.regularization.ema else None
    return state.params if ema is None else ema


def load_run(folder: str | pathlib.Path) -> fn.experiment.Run:
    """The pipeline's run in ``folder``, finished or stopped (:func:`fnnet.experiment.load_run`
    with the model its config names), its params the ones its evaluations use (their
    moving average with ``--ema``): ``run.model``, ``run.params``, ``run.model_state``,
    ``run.config``, ``run.summary``, ``run.metrics``."""
    run = fn.experiment.load_run(folder, lambda config: model_of(config["model"]), (1, 28, 28))
    ema = optim.params_ema(run.state.opt_state) if run.config.get("regularization", {}).get("ema") else None
    return run if ema is None else attrs.evolve(run, params=ema)


def batch_indices(cfg: Config, key: random.Key, n: int, start: int) -> Iterator[np.ndarray]:
    if cfg.sampling == "replacement":
        return data.sample_batches(key, n, cfg.batch_size, start_step=start)
    return data.epoch_batches(key, n, cfg.batch_size, start_step=start)


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """The flags of ``pipelines/mnist.py`` (whose docstring is ``description``), each
    checked for its type and range (errors name the flag, exit 2)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="the recipe (default: default)")
    ap.add_argument("--seed", type=number(int, 0), help="(default: 0)")
    ap.add_argument("--dataset", choices=sorted(data.DATASETS), help="(default: mnist)")
    ap.add_argument("--data-dir", help="folder with the dataset files (or with a <dataset>/ subfolder)")
    ap.add_argument("--no-verify", action="store_true",
                    help="accept IDX files that are not the published ones (your own subsets); "
                    "their structure is still checked")
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--steps", type=number(int, 1), help="number of training steps")
    length.add_argument("--epochs", type=number(float, 0, low_open=True),
                        help="number of passes over the training set")
    ap.add_argument("--batch-size", type=number(int, 1))
    ap.add_argument("--lr", type=number(float, 0, low_open=True), help="(peak) learning rate")
    ap.add_argument("--eval-every", type=number(int, 1),
                    help="steps between evaluations (default: tutorial 100, else 1 epoch)")
    ap.add_argument("--eval-samples", type=number(int, 0),
                    help="random validation images per evaluation, 0 for all (default: tutorial 200, else all)")
    ap.add_argument("--train-size", type=number(int, 1), help="use only the first N training images")
    ap.add_argument("--model", choices=MODELS, metavar="MODEL",
                    help="the network (default: the preset's): " + "; ".join(f"{k}: {v}" for k, v in MODELS.items()))
    aug = ap.add_argument_group("augmentation of training batches (default: the preset's; 0 turns one off)")
    aug.add_argument("--shift", type=number(int, 0), help="random translation by up to N pixels")
    aug.add_argument("--rotate", type=number(float, 0), help="random rotation by up to D degrees")
    aug.add_argument("--scale", type=number(float, 0), help="random scaling by a factor in [1-S, 1+S]")
    aug.add_argument("--shear", type=number(float, 0), help="random shear by up to D degrees")
    aug.add_argument("--cutout", type=number(int, 0), help="zero a random N x N square")
    aug.add_argument("--flip", type=number(float, 0),
                     help="mirror images left to right with probability P (clothing; not digits)")
    ap.add_argument("--label-smoothing", type=number(float, 0), help="softmax cross-entropy's label smoothing")
    ap.add_argument("--ema", type=number(float, 0),
                    help="evaluate a moving average of the params with this decay (0: the params themselves)")
    ap.add_argument("--tta", choices=("none", *TTA),
                    help="test-time augmentation of every evaluation: flip averages the logits of each image and "
                    "its mirror image (clothing; not digits); default: the preset's")
    ap.add_argument("--out", default=None, help="output folder (default runs/<preset>-<dataset>-seed<seed>)")
    again = ap.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.npz")
    again.add_argument("--overwrite", action="store_true", help="replace the run in --out (its files are deleted)")
    ap.add_argument("--stop-after", type=number(int, 1),
                    help="stop after this step, leaving a checkpoint (to resume later)")
    ap.add_argument("--export", choices=("onnx",),
                    help="also write the trained model as model.onnx in --out, in float32 "
                    "(pip install onnx onnxruntime)")
    mpi = ap.add_argument_group("data-parallel training over MPI (pip install mpi4py mpich)")
    mpi.add_argument("--distributed", action="store_true",
                     help="train on every rank of MPI_COMM_WORLD: each runs whole shards of every global batch, and "
                     "the shards' gradients are summed in shard order on every rank (the bits of one process); rank 0 "
                     "writes --out. Launch with mpiexec -n N python -m mpi4py pipelines/mnist.py --distributed ...")
    ap.add_argument("--threads", type=number(int, 1),
                    help="threads that train on the shards of each batch (default: every core; 1 a process with "
                    "--distributed); the result is the same for any number")
    ap.add_argument("--shard-rows", type=number(int, 1),
                    help="cut each batch into shards of at most N rows (default: by the model's buffers, 2 or more "
                    "shards of 16 MiB); the cut is part of the result, and N ranks need a shard count N divides")
    mpi.add_argument("--deterministic-reduction", action="store_true", help=argparse.SUPPRESS)  # (0.2.0's; now a no-op)
    args = ap.parse_args(argv)
    if args.deterministic_reduction:
        print("note: --deterministic-reduction does nothing now: the gradients are always summed in shard order, "
              "the same on any number of ranks (the flag will go)", file=sys.stderr)
    if args.export == "onnx" and importlib.util.find_spec("onnx") is None:  # (before any training)
        ap.error("--export onnx: needs onnx, which is not installed (pip install onnx onnxruntime)")
    if args.out is None:
        args.out = default_out(args)
    if args.resume:
        try:
            _flags_of_the_run(args)
        except FlagError as exc:
            ap.error(str(exc))
    for flag, default in DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    return args


def default_out(args: argparse.Namespace) -> str:
    """``--out``'s default: runs/<preset>-<dataset>-seed<seed>, of the flags given or their defaults."""
    preset, dataset, seed = (DEFAULTS[f] if getattr(args, f) is None else getattr(args, f) for f in DEFAULTS)
    return f"runs/{preset}-{dataset}-seed{seed}"


DEFAULTS = {"preset": "default", "dataset": "mnist", "seed": 0}
"""The flags with a default of their own (the others default to the preset's)."""


def _flags_of_the_run(args: argparse.Namespace) -> None:
    """With ``--resume``: every flag left out takes the resumed run's value (its config in
    the checkpoint's metadata); a flag given must agree with it (RunFolder.resume names
    any that differ)."""
    out = args.out
    path = pathlib.Path(out) / "checkpoint.npz"
    if not path.is_file():
        raise FlagError(f"--resume: no checkpoint to resume in --out {out} ({path} is missing)")
    try:
        config = fn.checkpoint.load(path)[1].get("config")
    except fn.FnnetError as exc:
        raise FlagError(f"--resume: {exc}") from None
    if not isinstance(config, dict):
        raise FlagError(f"--resume: {path} holds no run config (not written by this pipeline)")
    run = {**config, **config.get("regularization", {})}
    run["tta"] = "none" if run.get("tta") is None else run["tta"]
    run["epochs"] = None  # (the run's length is its steps)
    for flag in (*DEFAULTS, "model", "batch_size", "lr", "eval_every", "eval_samples", "train_size", "shard_rows",
                 "tta", *attrs.fields_dict(Regularization)):
        if getattr(args, flag, None) is None and flag in run:
            setattr(args, flag, run[flag])
    if args.steps is None and args.epochs is None:
        args.steps = run.get("steps")


DATA_BYTES = 70_000 * 28 * 28 * 5
"""The bytes a dataset of 70,000 28x28 images takes loaded: float32 images and their bytes."""


def check_memory(args: argparse.Namespace) -> None:
    """A FlagError before the data is read if a training step on ``--batch-size`` rows of
    ``--model``, an evaluation chunk on every core and the data need more memory than the
    process may take (:func:`fnnet.memory.require`)."""
    preset = preset_for(args.preset, args.dataset)
    name, batch = args.model or preset.model, args.batch_size or preset.batch_size
    model, dtype = model_of(name), np.dtype(preset.dtype)
    params, _ = model.init(random.key(0), (1, 28, 28), dtype=dtype)
    need = (fn.train.row_bytes(model, params, (1, 28, 28), dtype) * batch
            + fn.train.row_bytes(model, params, (1, 28, 28), dtype, train=False) * fn.train.CHUNK_ROWS
            * fn.threads.cores() + DATA_BYTES)
    try:
        fn.memory.require(need, f"--batch-size {batch} with --model {name} (a step, an evaluation and the data)",
                          "pass a smaller --batch-size")
    except fn.OutOfMemoryError as exc:
        raise FlagError(str(exc)) from None


def make_config(args: argparse.Namespace, ds: data.Dataset) -> Config:
    """The run's config: the preset with the flags given, checked against the data."""
    preset = preset_for(args.preset, args.dataset)

    def pick(flag: Any, default: Any) -> Any:
        return default if flag is None else flag

    n_train = len(ds.train)
    if args.train_size is not None and args.train_size > n_train:
        raise FlagError(f"--train-size {args.train_size}: {ds.name} has only {n_train} training images")
    n_train = args.train_size or n_train
    batch_size = pick(args.batch_size, preset.batch_size)
    if batch_size > n_train:
        raise FlagError(f"--batch-size {batch_size}: larger than the {n_train} training images")
    per_epoch = data.steps_per_epoch(n_train, batch_size)
    epochs = pick(args.epochs, preset.epochs)
    if args.steps is not None:
        steps = args.steps
    elif epochs is None:
        steps = preset.steps
    else:
        steps = round(epochs * per_epoch)
        if steps < 1:
            raise FlagError(f"--epochs {epochs:g}: less than one step ({per_epoch} steps of {batch_size} per epoch)")
    eval_samples = pick(args.eval_samples, preset.eval_samples)
    if eval_samples > len(ds.val):
        raise FlagError(f"--eval-samples {eval_samples}: {ds.name} has only {len(ds.val)} validation images")
    cfg = Config(
        preset=args.preset, dataset=args.dataset, seed=args.seed, model=pick(args.model, preset.model),
        dtype=preset.dtype,
        batch_size=batch_size, sampling=preset.sampling, steps=steps, optimizer=preset.optimizer,
        lr=pick(args.lr, preset.lr), eval_every=min(pick(args.eval_every, preset.eval_every) or per_epoch, steps),
        eval_samples=eval_samples, train_size=args.train_size, shard_rows=args.shard_rows,
        tta=preset.tta if args.tta is None else (None if args.tta == "none" else args.tta),
        regularization=attrs.evolve(preset.regularization, **{
            f.name: getattr(args, f.name) for f in attrs.fields(Regularization) if getattr(args, f.name) is not None
        }),
    )
    r = cfg.regularization
    if not fn.data.DATASETS[cfg.dataset].mirror_keeps_class:  # (the preset's own flips come from the dataset)
        why = f"a mirror changes {cfg.dataset}'s classes (a mirrored 2 is not a 2)"
        if cfg.tta == "flip":
            raise FlagError(f"--tta flip: {why}; it serves datasets whose mirror images keep their class "
                            f"({', '.join(k for k, v in fn.data.DATASETS.items() if v.mirror_keeps_class)})")
        if r.flip:
            raise FlagError(f"--flip {r.flip:g}: {why}")
    if not r.label_smoothing < 1:
        raise FlagError(f"--label-smoothing {r.label_smoothing:g}: must be below 1")
    if not r.ema < 1:
        raise FlagError(f"--ema {r.ema:g}: a decay must be below 1")
    try:
        build_augment(cfg)
    except fn.InvalidValueError as exc:  # e.g. "affine: rotate must be a finite number in [0, 180], got 500.0"
        raise FlagError(f"augmentation flags: {exc}") from None
    return cfg


