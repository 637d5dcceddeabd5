#!/usr/bin/env python3
"""Train a CNN on MNIST (or Fashion-MNIST) with fnnet: seeded, resumable, reproducible.

Presets:
  tutorial  the numpy tutorial this project grew from, faithfully: float64; conv 1 filter
            3x3 => relu => maxpool 2 => flatten => dense 64 => relu => dense 10; weights
            N(0, 0.01^2), biases 0; batches of 2 drawn with replacement; 2000 steps;
            Keras-style SGD (lr 0.01, momentum 0.9, decay 1e-6); every 100 steps the loss
            and accuracy on 200 random validation images.
  default   a small float32 CNN (conv 16 => pool => conv 32 => pool => dense 128) trained
            with Adam and a cosine schedule for 6 epochs: >= 99 % MNIST test accuracy.

Outputs in --out: metrics.jsonl, summary.json, learning_curves.png, predictions.png,
checkpoint.npz (params, optimizer state, step and data-order key; atomic, no pickle).
The same seed and config give bit-identical params; --resume continues from the
checkpoint and ends with the same params as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

# One BLAS thread: on a 2-core machine a second thread is slower for these small matrices.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import attrs  # noqa: E402
import numpy as np  # noqa: E402

import fnnet as fn  # noqa: E402
from fnnet import checkpoint, data, optim, random  # noqa: E402

PRESETS = {
    "tutorial": dict(
        model="tutorial", dtype="float64", batch_size=2, sampling="replacement", steps=2000, epochs=None,
        optimizer="keras_sgd", lr=0.01, eval_every=100, eval_samples=200,
    ),
    "default": dict(
        model="cnn", dtype="float32", batch_size=64, sampling="epoch", steps=None, epochs=6,
        optimizer="adam_cosine", lr=2e-3, eval_every=None, eval_samples=0,
    ),
}


def _positive(inst, attr, value):
    if value is not None and value < 1:
        raise ValueError(f"--{attr.name.replace('_', '-')} must be >= 1, got {value}")


@attrs.frozen
class Config:
    """Everything that determines the result of a run (not where it is written)."""

    preset: str = attrs.field(validator=attrs.validators.in_(PRESETS))
    dataset: str = attrs.field(validator=attrs.validators.in_(data.DATASETS))
    seed: int = attrs.field(validator=attrs.validators.ge(0))
    model: str = attrs.field(validator=attrs.validators.in_(("tutorial", "cnn")))
    dtype: str = attrs.field(validator=attrs.validators.in_(("float32", "float64")))
    batch_size: int = attrs.field(validator=_positive)
    sampling: str = attrs.field(validator=attrs.validators.in_(("replacement", "epoch")))
    steps: int = attrs.field(validator=_positive)
    optimizer: str = attrs.field(validator=attrs.validators.in_(("keras_sgd", "adam_cosine")))
    lr: float = attrs.field(validator=attrs.validators.gt(0))
    eval_every: int = attrs.field(validator=_positive)
    eval_samples: int = attrs.field(validator=attrs.validators.ge(0))
    train_size: int | None = attrs.field(default=None, validator=_positive)


def build_model(cfg: Config) -> fn.Layer:
    if cfg.model == "tutorial":
        w, b = fn.init.normal(0.01), fn.init.zeros
        return fn.serial(
            fn.conv2d(1, 3, w_init=w, b_init=b), fn.relu(), fn.max_pool2d(2), fn.flatten(),
            fn.dense(64, w_init=w, b_init=b), fn.relu(), fn.dense(10, w_init=w, b_init=b),
        )
    return fn.serial(
        fn.conv2d(16, 3), fn.relu(), fn.max_pool2d(2),
        fn.conv2d(32, 3), fn.relu(), fn.max_pool2d(2),
        fn.flatten(), fn.dense(128), fn.relu(), fn.dense(10),
    )


def build_optimizer(cfg: Config) -> optim.GradientTransformation:
    if cfg.optimizer == "keras_sgd":
        return optim.keras_sgd(cfg.lr, momentum=0.9, decay=1e-6)
    return optim.adam(optim.cosine_decay(cfg.lr, cfg.steps, alpha=0.01, warmup_steps=min(200, cfg.steps // 10)))


def batch_indices(cfg: Config, key: random.Key, n: int, start: int):
    if cfg.sampling == "replacement":
        return data.sample_batches(key, n, cfg.batch_size, start_step=start)
    return data.epoch_batches(key, n, cfg.batch_size, start_step=start)


def evaluate(model, params, split: data.Split, dtype) -> dict:
    """Loss, accuracy and predictions of ``params`` on a whole split."""
    logits = fn.predict(model, params, split.x.astype(dtype, copy=False))
    loss, _ = fn.softmax_cross_entropy(logits, split.y)
    pred = logits.argmax(axis=1)
    return {"loss": float(loss), "accuracy": float(np.mean(pred == split.y)), "pred": pred}


class Progress:
    """A one-line progress bar on a terminal, nothing otherwise (evaluations print lines)."""

    def __init__(self, total: int):
        self.total, self.tty, self.t0, self.last = total, sys.stdout.isatty(), time.perf_counter(), 0.0

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if not self.tty or (now - self.last < 0.2 and step < self.total):
            return
        self.last = now
        frac = step / self.total
        rate = step / max(now - self.t0, 1e-9)
        bar = "#" * int(30 * frac)
        sys.stdout.write(f"\r[{bar:<30}] {step}/{self.total} loss {loss:.4f} {rate:,.0f} steps/s ")
        sys.stdout.flush()

    def line(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r" + " " * 79 + "\r")
        print(text, flush=True)


def save_plots(out: pathlib.Path, rows: list[dict], test_x, test_y, pred, classes) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping learning_curves.png and predictions.png "
              "(pip install 'fnnet[plot]')", file=sys.stderr)
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


def run(
    cfg: Config, out: pathlib.Path, data_dir: str | None, resume: bool, stop_after: int | None, verify: bool = True
) -> dict:
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ds = data.load(cfg.dataset, data_dir, verify=verify)
    train = ds.train
    if cfg.train_size is not None:
        train = data.Split(train.x[: cfg.train_size], train.y[: cfg.train_size])
    dtype = np.dtype(cfg.dtype)
    model, opt = build_model(cfg), build_optimizer(cfg)
    k_init, k_data, k_eval = random.split(random.key(cfg.seed), 3)
    params, _ = model.init(k_init, (1, 28, 28), dtype=dtype)
    state = fn.TrainState.create(params, opt)
    ckpt = out / "checkpoint.npz"
    metrics_path = out / "metrics.jsonl"
    elapsed_before = 0.0
    if resume:
        tree, meta = checkpoint.load(ckpt, like={"params": state.params, "opt_state": state.opt_state})
        if meta.get("config") != attrs.asdict(cfg):
            raise SystemExit(f"--resume: {ckpt} was written with another config:\n  {meta.get('config')}\n"
                             f"  now: {attrs.asdict(cfg)}")
        if meta["data_key"] != [k_data.entropy, list(k_data.path)]:
            raise SystemExit(f"--resume: {ckpt} has another data-order key")
        state = fn.TrainState(tree["params"], tree["opt_state"], int(meta["step"]))
        elapsed_before = float(meta.get("elapsed", 0.0))
        rows = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
        rows = [r for r in rows if r["step"] <= state.step]
        print(f"resumed from {ckpt} at step {state.step}")
    else:
        rows = []
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def save_checkpoint():
        meta = {"step": state.step, "config": attrs.asdict(cfg), "data_key": [k_data.entropy, list(k_data.path)],
                "elapsed": elapsed_before + time.perf_counter() - t_start}
        checkpoint.save(ckpt, {"params": state.params, "opt_state": state.opt_state}, meta)

    step_fn = fn.jit(fn.train_step(model, fn.softmax_cross_entropy, opt))
    per_epoch = data.steps_per_epoch(len(train), cfg.batch_size)
    batches = batch_indices(cfg, k_data, len(train), state.step)
    end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    progress = Progress(cfg.steps)
    acc_loss, acc_acc, n_acc = 0.0, 0.0, 0
    print(f"{cfg.preset} preset on {cfg.dataset} ({ds.source}), seed {cfg.seed}, {cfg.steps} steps of "
          f"{cfg.batch_size}, {cfg.dtype}, kernels {fn.kernels.backend()}", flush=True)
    try:
        while state.step < end:
            idx = next(batches)
            x = train.x[idx].astype(dtype, copy=False)
            state, m = step_fn(state, (x, train.y[idx]))
            acc_loss, acc_acc, n_acc = acc_loss + m["loss"], acc_acc + m["accuracy"], n_acc + 1
            progress.update(state.step, m["loss"])
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                if cfg.eval_samples:
                    pick = random.generator(random.fold_in(k_eval, state.step)).choice(
                        len(ds.val), cfg.eval_samples, replace=False)
                    val = evaluate(model, state.params, data.Split(ds.val.x[pick], ds.val.y[pick]), dtype)
                else:
                    val = evaluate(model, state.params, ds.val, dtype)
                row = {
                    "step": state.step, "epoch": round(state.step / per_epoch, 4),
                    "loss": acc_loss / n_acc, "train_accuracy": acc_acc / n_acc,
                    "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                    "learning_rate": optim.learning_rate(state.opt_state),
                    "elapsed": round(elapsed_before + time.perf_counter() - t_start, 3),
                }
                rows.append(row)
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                acc_loss, acc_acc, n_acc = 0.0, 0.0, 0
                progress.line(
                    f"step {row['step']:>6}  epoch {row['epoch']:.2f}  train loss {row['loss']:.4f} "
                    f"acc {row['train_accuracy']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}  "
                    f"lr {row['learning_rate']:.2e}  {row['elapsed']:.1f}s"
                )
                save_checkpoint()
    except KeyboardInterrupt:
        save_checkpoint()
        progress.line(f"interrupted at step {state.step}; checkpoint saved, continue with --resume")
        raise SystemExit(130) from None
    save_checkpoint()
    if state.step < cfg.steps:
        print(f"stopped at step {state.step} of {cfg.steps} (--stop-after); continue with --resume")
        return {"step": state.step, "params_sha256": checkpoint.digest(state.params)}

    test, val = evaluate(model, state.params, ds.test, dtype), evaluate(model, state.params, ds.val, dtype)
    summary = {
        "config": attrs.asdict(cfg),
        "seed": cfg.seed,
        "dataset": cfg.dataset,
        "data_source": ds.source,
        "versions": {"fnnet": fn.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "kernels_backend": fn.kernels.backend(),
        "steps": state.step,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "val_accuracy": val["accuracy"],
        "val_loss": val["loss"],
        "confusion_matrix_test": fn.metrics.confusion_matrix(ds.test.y, test["pred"], len(ds.classes)).tolist(),
        "params_sha256": checkpoint.digest(state.params),
        "wall_seconds": round(elapsed_before + time.perf_counter() - t_start, 2),
    }
    summary["plots"] = save_plots(out, rows, ds.test.x, ds.test.y, test["pred"], ds.classes)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"test accuracy {test['accuracy']:.4f}  validation accuracy {val['accuracy']:.4f}  "
          f"params sha256 {summary['params_sha256'][:16]}...  {summary['wall_seconds']:.1f}s  -> {out}")
    return summary


def parse_args(argv=None) -> tuple[Config, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", choices=sorted(data.DATASETS), default="mnist")
    ap.add_argument("--data-dir", help="folder with the dataset files (or with a <dataset>/ subfolder)")
    ap.add_argument("--no-verify", action="store_true",
                    help="accept IDX files that are not the published ones (your own subsets); "
                    "their structure is still checked")
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="number of training steps")
    length.add_argument("--epochs", type=float, help="number of passes over the training set")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float, help="(peak) learning rate")
    ap.add_argument("--eval-every", type=int, help="steps between evaluations (default: tutorial 100, else 1 epoch)")
    ap.add_argument("--eval-samples", type=int,
                    help="random validation images per evaluation, 0 for all (default: tutorial 200, else all)")
    ap.add_argument("--train-size", type=int, help="use only the first N training images")
    ap.add_argument("--out", default=None, help="output folder (default runs/<preset>-<dataset>-seed<seed>)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.npz")
    ap.add_argument("--stop-after", type=int, help="stop after this step, leaving a checkpoint (to resume later)")
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    pick = lambda flag, key: preset[key] if flag is None else flag  # noqa: E731
    batch_size = pick(args.batch_size, "batch_size")
    try:
        if batch_size < 1 or (args.train_size is not None and args.train_size < 1):
            raise ValueError(f"--batch-size and --train-size must be >= 1, got {batch_size} and {args.train_size}")
        per_epoch = data.steps_per_epoch(args.train_size or 50_000, batch_size)
        epochs = pick(args.epochs, "epochs")
        steps = args.steps if args.steps is not None else (
            preset["steps"] if epochs is None else max(1, round(epochs * per_epoch))
        )
        cfg = Config(
            preset=args.preset, dataset=args.dataset, seed=args.seed, model=preset["model"], dtype=preset["dtype"],
            batch_size=batch_size, sampling=preset["sampling"], steps=steps, optimizer=preset["optimizer"],
            lr=pick(args.lr, "lr"), eval_every=min(pick(args.eval_every, "eval_every") or per_epoch, steps),
            eval_samples=pick(args.eval_samples, "eval_samples"), train_size=args.train_size,
        )
    except (ValueError, TypeError) as exc:
        ap.error(str(exc))
    if args.out is None:
        args.out = f"runs/{cfg.preset}-{cfg.dataset}-seed{cfg.seed}"
    return cfg, args


def main(argv=None) -> int:
    cfg, args = parse_args(argv)
    try:
        run(cfg, pathlib.Path(args.out), args.data_dir, args.resume, args.stop_after, verify=not args.no_verify)
    except (fn.DataNotFoundError, fn.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
