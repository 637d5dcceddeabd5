#!/usr/bin/env python3
"""Sweep seeds and hyper-parameters of pipelines/mnist.py on Ray Tune.

  python pipelines/sweep.py --seeds 0 1 2 --grid lr=1e-3,2e-3,4e-3 -- --preset default --epochs 2
  python pipelines/sweep.py --sample lr=loguniform:3e-4:1e-2 --num-samples 8 --scheduler asha -- --epochs 2
  python pipelines/sweep.py --address auto ...        # on a Ray cluster (ray start --head / --address)

After ``--``: flags of pipelines/mnist.py that every trial shares. Each trial is the
command its row of the table prints: pipelines/mnist.py with the trial's flags, run by a
Ray worker in its own folder ``<out>/trials/<trial>`` (the worker gets the script and
its recipes by value, so a cluster's nodes need fnnet, not this checkout), and each
evaluation's row of its metrics.jsonl reported to Tune as it lands. ``--grid`` gives
values to try; ``--sample`` draws ``--num-samples`` points at random (drawn from
``--sweep-seed``, so the sweep itself is reproducible); every point runs with every seed.
``--scheduler asha`` stops the trials that trail at each evaluation.

Locally Ray runs ``--num-cpus`` trials at a time (default: every core), one CPU and one
BLAS thread each. Outputs in --out: results.csv and results.md (one row per trial: its
flags, final validation and test accuracy, params sha256, and the mnist.py command that
reproduces it bit for bit), sweep.png (accuracy against the swept hyper-parameter, one
point per seed), and the trials' folders.

Exit status: 0 done, 2 bad flags, 1 a trial failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recipes  # noqa: E402
from sweep_report import plot, write_tables  # noqa: E402

import fnnet as fn  # noqa: E402
from fnnet import data, random  # noqa: E402
from fnnet.experiment import follow_metrics, number  # noqa: E402

# mnist.py's flags a sweep may vary: name -> the type of its values
SWEEPABLE: dict[str, type] = {
    "lr": float, "batch_size": int, "epochs": float, "steps": int, "train_size": int, "shift": int, "rotate": float,
    "scale": float, "shear": float, "cutout": int, "label_smoothing": float, "ema": float, "model": str,
}
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
OUTPUTS = ("results.csv", "results.md", "sweep.png")
METRIC = "val_accuracy"
SCRIPTS = ("mnist.py", "recipes.py", "models.py")  # what a trial runs: the pipeline, shipped to the workers as text


class SweepError(fn.InvalidValueError):
    """A bad sweep flag (an unknown hyper-parameter, a malformed value or distribution), or a
    node that would not run a trial as its command runs (another fnnet or other kernels)."""


def _name(text: str, flag: str) -> str:
    name = text.strip().replace("-", "_")
    if name not in SWEEPABLE:
        raise SweepError(f"{flag} {text}: cannot sweep {text!r}; choose from {', '.join(sorted(SWEEPABLE))}")
    if name in ("seed",):
        raise SweepError(f"{flag}: sweep seeds with --seeds")
    return name


def parse_grid(spec: str) -> tuple[str, list[Any]]:
    """``lr=1e-3,2e-3`` -> ("lr", [0.001, 0.002])."""
    name, sep, values = spec.partition("=")
    if not sep or not values:
        raise SweepError(f"--grid {spec}: expected NAME=V1,V2,...")
    name = _name(name, "--grid")
    try:
        parsed = [SWEEPABLE[name](v) for v in values.split(",")]
    except ValueError:
        raise SweepError(f"--grid {spec}: {name} takes {SWEEPABLE[name].__name__} values") from None
    if len(set(parsed)) != len(parsed):
        raise SweepError(f"--grid {spec}: a value is repeated")
    return name, parsed


def parse_sample(spec: str) -> tuple[str, str, float, float]:
    """``lr=loguniform:1e-4:1e-2`` -> ("lr", "loguniform", 1e-4, 1e-2)."""
    name, sep, rest = spec.partition("=")
    parts = rest.split(":")
    if not sep or len(parts) != 3:
        raise SweepError(f"--sample {spec}: expected NAME=DISTRIBUTION:LOW:HIGH ({'|'.join(DISTRIBUTIONS)})")
    name, dist = _name(name, "--sample"), parts[0]
    if dist not in DISTRIBUTIONS:
        raise SweepError(f"--sample {spec}: unknown distribution {dist!r}; choose from {', '.join(DISTRIBUTIONS)}")
    if SWEEPABLE[name] is str or (dist == "randint" and SWEEPABLE[name] is not int):
        raise SweepError(f"--sample {spec}: {dist} does not fit {name} ({SWEEPABLE[name].__name__})")
    try:
        low, high = float(parts[1]), float(parts[2])
    except ValueError:
        raise SweepError(f"--sample {spec}: LOW and HIGH must be numbers") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high) or (dist == "loguniform" and low <= 0):
        raise SweepError(f"--sample {spec}: needs finite LOW < HIGH{' and LOW > 0' if dist == 'loguniform' else ''}")
    return name, dist, low, high


def points(grid: list[tuple[str, list]], samples: list[tuple[str, str, float, float]], num_samples: int,
           sweep_seed: int) -> list[dict[str, Any]]:
    """Every combination of the grid's values, each with ``num_samples`` random draws of
    the sampled hyper-parameters (drawn from ``sweep_seed``: the same sweep each time)."""
    combos = [dict(zip([n for n, _ in grid], values)) for values in itertools.product(*[v for _, v in grid])]
    if not samples:
        return combos
    rng = random.generator(random.key(sweep_seed))
    out = []
    for combo in combos:
        for _ in range(num_samples):
            point = dict(combo)
            for name, dist, low, high in samples:
                if dist == "randint":
                    point[name] = int(rng.integers(math.ceil(low), math.floor(high) + 1))
                elif dist == "loguniform":
                    point[name] = SWEEPABLE[name](float(np.exp(rng.uniform(np.log(low), np.log(high)))))
                else:
                    point[name] = SWEEPABLE[name](float(rng.uniform(low, high)))
            out.append(point)
    return out


def trial_argv(fixed: list[str], point: dict[str, Any], seed: int, out: pathlib.Path) -> list[str]:
    """mnist.py's flags for one trial: the shared ones, then the point's and the seed."""
    flags = [f"--{k.replace('_', '-')}={v!r}" if isinstance(v, float) else f"--{k.replace('_', '-')}={v}"
             for k, v in point.items()]
    return [*fixed, *flags, f"--seed={seed}", f"--out={out}"]


def trial_name(index: int, seed: int) -> str:
    return f"p{index:03d}-seed{seed}"


def _end_with_parent() -> None:
    """(In the trial's process, before it runs:) end when the worker that started it
    ends, as when the scheduler stops a trailing trial (Linux; elsewhere the worker's
    ``finally`` ends it)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def node() -> dict[str, str]:
    """What a trial's bits depend on besides its flags: the fnnet it imports and its kernels."""
    return {"fnnet": fn.__version__, "kernels": fn.kernels.backend()}


PROBE = "import json, fnnet; print(json.dumps({'fnnet': fnnet.__version__, 'kernels': fnnet.kernels.backend()}))\n"
"""A script run beside a trial's ``mnist.py``, as it will run: :func:`node` of the fnnet the trial imports."""


def check_node(expect: dict[str, str], here: dict[str, str], trial: str) -> None:
    """SweepError unless a trial imports the fnnet and the kernels of the sweep's driver
    (``expect``: the driver's :func:`node`; ``here``: the trial's, from :data:`PROBE`): a
    trial on the numpy twins, or on another release, would not give the bits of its printed
    command run where the sweep started."""
    if here != expect:
        raise SweepError(
            f"{trial}: this node runs fnnet {here['fnnet']} with {here['kernels']} kernels, the sweep's driver fnnet "
            f"{expect['fnnet']} with {expect['kernels']} kernels: install the same fnnet, with its compiled kernels, "
            f"on every node (pip install fnnet builds them)"
        )


def trainable(config: dict[str, Any], *, fixed: list[str], out: str, sources: dict[str, str], workdir: str,
              pts: list[dict], expect: dict[str, str]) -> None:
    """One trial, in a Ray worker: the command of its row (pipelines/mnist.py, written
    from ``sources``) in its own process, each evaluation reported to Tune as it lands
    in metrics.jsonl, then the final test accuracy and params sha256. It runs in the
    sweep's ``workdir`` (where a relative --data-dir means what it meant to the sweep),
    and only where the fnnet and kernels it imports are the driver's (``expect``:
    :func:`check_node`, on what :data:`PROBE` finds beside it)."""
    from ray import tune

    folder = pathlib.Path(out) / "trials" / trial_name(config["index"], config["seed"])
    argv = trial_argv(fixed, pts[config["index"]], config["seed"], folder)
    folder.mkdir(parents=True, exist_ok=True)
    cwd = workdir if os.path.isdir(workdir) else None
    with tempfile.TemporaryDirectory(prefix="fnnet-trial-") as code, open(folder / "log.txt", "w") as log:
        for name, text in {**sources, "probe.py": PROBE}.items():
            (pathlib.Path(code) / name).write_text(text)
        # (the worker's own fnnet may be another: Ray puts the driver's folder on its path)
        probe = subprocess.run([sys.executable, str(pathlib.Path(code) / "probe.py")], capture_output=True, text=True,
                               cwd=cwd, check=True)
        check_node(expect, json.loads(probe.stdout.splitlines()[-1]), folder.name)
        (folder / "metrics.jsonl").unlink(missing_ok=True)  # (--overwrite: rows of an earlier trial are not this one's)
        proc = subprocess.Popen([sys.executable, str(pathlib.Path(code) / "mnist.py"), *argv, "--overwrite"],
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_end_with_parent, cwd=cwd)
        try:
            for row in follow_metrics(folder / "metrics.jsonl", lambda: proc.poll() is None):
                tune.report({k: row[k] for k in ("step", "epoch", "loss", "train_accuracy", "val_loss",
                                                  "val_accuracy")})
        finally:
            if proc.poll() is None:  # (the scheduler stopped the trial)
                proc.kill()
            proc.wait()
    if proc.returncode not in (0, 3):  # (3: ended diverged, its summary says so)
        raise RuntimeError(f"{folder.name} exited {proc.returncode}: {(folder / 'log.txt').read_text()[-2000:]}")
    summary = json.loads((folder / "summary.json").read_text())
    tune.report({"step": summary["steps"], "val_accuracy": summary["val_accuracy"],
                 "test_accuracy": summary["test_accuracy"], "params_sha256": summary["params_sha256"],
                 "wall_seconds": summary["wall_seconds"], "finished": True})


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:] if argv is None else argv
    fixed = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=number(int, 0), nargs="+", default=[0], help="seeds of every point")
    ap.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...", help="values to try")
    ap.add_argument("--sample", action="append", default=[], metavar="NAME=DIST:LOW:HIGH",
                    help=f"draw NAME at random ({', '.join(DISTRIBUTIONS)})")
    ap.add_argument("--num-samples", type=number(int, 1), default=4, help="random points (with --sample)")
    ap.add_argument("--sweep-seed", type=number(int, 0), default=0, help="seed of the random points")
    ap.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo",
                    help="asha: stop the trials that trail at each evaluation (async successive halving)")
    ap.add_argument("--num-cpus", type=number(int, 1), default=os.cpu_count() or 1,
                    help="trials at a time on this machine (one CPU each)")
    ap.add_argument("--address", help="a running Ray cluster's address ('auto': the one this machine joined)")
    ap.add_argument("--out", default="sweeps/sweep", help="output folder")
    ap.add_argument("--overwrite", action="store_true", help="replace the sweep in --out")
    args = ap.parse_args(own)
    return args, fixed


def _shared_flags(fixed: list[str]) -> argparse.Namespace:
    """The flags after ``--``, parsed as mnist.py parses them (a trial's ``--resume`` is
    refused first: parsing it would read a run's flags)."""
    if "--resume" in fixed:
        raise SweepError("after --: --resume is the sweep's to set, not a trial's")
    return recipes.parse_args(fixed)


def check(
    args: argparse.Namespace, fixed: list[str], ds: data.Dataset
) -> tuple[list[dict[str, Any]], list[recipes.Config]]:
    """The sweep's points and their configs: every trial's flags checked as mnist.py
    checks them (pipelines/recipes.py), before Ray starts."""
    grid, samples = [parse_grid(g) for g in args.grid], [parse_sample(s) for s in args.sample]
    names = [n for n, _ in grid] + [s[0] for s in samples]
    if len(set(names)) != len(names):
        raise SweepError(f"a hyper-parameter is swept twice: {names}")
    if not names and len(args.seeds) < 2:
        raise SweepError("nothing to sweep: give --grid, --sample or several --seeds")
    shared = _shared_flags(fixed)
    given = {"out": shared.out != recipes.default_out(shared),
             **{flag: getattr(shared, flag) not in (None, False) for flag in ("resume", "overwrite", "stop_after",
                                                                                "distributed")}}
    for flag in (f for f, yes in given.items() if yes):
        raise SweepError(f"after --: --{flag.replace('_', '-')} is the sweep's to set, not a trial's")
    if any(f.split("=")[0] == "--seed" for f in fixed):
        raise SweepError("after --: give seeds with --seeds")
    pts = points(grid, samples, args.num_samples, args.sweep_seed)
    # (the bounds of a random draw are checked by its draws)
    cfgs = [recipes.make_config(recipes.parse_args(trial_argv(fixed, p, args.seeds[0], pathlib.Path("x"))), ds)
            for p in pts]
    return pts, cfgs


def sweep(
    args: argparse.Namespace, fixed: list[str], pts: list[dict[str, Any]], cfgs: list[recipes.Config]
) -> list[dict]:
    """Run every (point, seed) on Ray Tune; one row per trial."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    out = pathlib.Path(args.out).resolve()  # trials run in their own working directories
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           **{k: os.environ[k] for k in ("FNNET_DATA_DIR", "PYTHONPATH") if k in os.environ}}
    if args.address:
        ray.init(address=args.address, runtime_env={"env_vars": env})
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, runtime_env={"env_vars": env})
    # (max_t past the longest trial's last step: a trial that gets there reports its test accuracy before it
    # ends; points may sweep --steps, --epochs or --batch-size)
    scheduler = (ASHAScheduler(time_attr="step", max_t=max(c.steps for c in cfgs) + 1,
                               grace_period=min(c.eval_every for c in cfgs), reduction_factor=2)
                 if args.scheduler == "asha" else FIFOScheduler())
    space = {"index": tune.grid_search(list(range(len(pts)))), "seed": tune.grid_search(args.seeds)}
    sources = {name: (HERE / name).read_text() for name in SCRIPTS}  # (by value: a node may lack this checkout)
    run = tune.with_parameters(tune.with_resources(trainable, {"cpu": 1}), fixed=fixed, out=str(out), sources=sources,
                               workdir=os.getcwd(), pts=pts, expect=node())
    tuner = tune.Tuner(
        run,
        param_space=space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler),
        run_config=tune.RunConfig(name="tune", storage_path=str(out / "ray"), verbose=1),
    )
    results = tuner.fit()
    rows = []
    for result in (results[i] for i in range(len(results))):
        cfg, m = result.config or {}, result.metrics or {}
        folder = out / "trials" / trial_name(cfg["index"], cfg["seed"])
        if result.error:  # (its last line: what went wrong, e.g. a node with other kernels)
            print(f"error: {folder.name}: {str(result.error).strip().splitlines()[-1]}", file=sys.stderr)
        rows.append({
            "trial": folder.name, "seed": cfg["seed"], **pts[cfg["index"]],
            "status": ("done" if m.get("finished") else "failed" if result.error
                       else f"stopped at step {m.get('step')}"),
            "val_accuracy": m.get("val_accuracy"), "test_accuracy": m.get("test_accuracy"),
            "params_sha256": m.get("params_sha256"), "wall_seconds": m.get("wall_seconds"),
            "command": shlex.join(["python", "pipelines/mnist.py",
                                   *trial_argv(fixed, pts[cfg["index"]], cfg["seed"], folder)]),
        })
    ray.shutdown()
    return sorted(rows, key=lambda r: r["trial"])


def main(argv: list[str] | None = None) -> int:
    args, fixed = parse_args(argv)
    out = pathlib.Path(args.out)
    try:
        if out.exists() and not out.is_dir():
            raise SweepError(f"--out {out}: is a file, not a folder")
        existing = [n for n in (*OUTPUTS, "trials", "ray") if (out / n).exists()]
        if existing and not args.overwrite:
            raise SweepError(f"--out {out}: holds a sweep ({', '.join(existing)}); pass --overwrite or another --out")
        shared = _shared_flags(fixed)
        ds = data.load(shared.dataset, shared.data_dir, verify=not shared.no_verify)
        pts, cfgs = check(args, fixed, ds)
    except fn.FnnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(pts)} points x {len(args.seeds)} seeds = {len(pts) * len(args.seeds)} trials on Ray Tune "
          f"({args.scheduler}); {out}/")
    if args.overwrite:
        import shutil

        for folder in ("trials", "ray"):
            shutil.rmtree(out / folder, ignore_errors=True)
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    rows = sweep(args, fixed, pts, cfgs)
    write_tables(out, rows)
    plot(out, rows, list(dict.fromkeys(k for p in pts for k in p)))
    print((out / "results.md").read_text())
    failed = [r["trial"] for r in rows if r["status"] == "failed"]
    if failed:
        print(f"error: trials failed: {', '.join(failed)} (their logs: {out / 'ray'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
