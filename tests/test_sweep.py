"""pipelines/sweep.py: sweeps of pipelines/mnist.py on Ray Tune.

The flag parsing and the sweep's points are tested everywhere; the sweep itself needs
``ray[tune]`` (``pip install 'ray[tune]'``) and skips without it, except under
``FNNET_REQUIRE_RAY=1`` (``nox -s sweep``), where a missing Ray is a failure.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from test_pipeline_mnist import REAL

import fnnet as fn

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = ROOT / "pipelines" / "sweep.py"
sys.path.insert(0, str(SWEEP.parent))
import sweep  # noqa: E402

sys.path.remove(str(SWEEP.parent))


def _dataset(n: int = 256) -> fn.data.Dataset:
    rng = np.random.default_rng(0)

    def split(k: int) -> fn.data.Split:
        return fn.data.Split(rng.random((k, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, k))

    return fn.data.Dataset("mnist", split(n), split(64), split(64), tuple("0123456789"), "fake")


def test_grid_and_sample_specs():
    assert sweep.parse_grid("lr=1e-3,2e-3") == ("lr", [1e-3, 2e-3])
    assert sweep.parse_grid("batch-size=32,64") == ("batch_size", [32, 64])
    assert sweep.parse_grid("model=cnn,cnn_wide") == ("model", ["cnn", "cnn_wide"])
    assert sweep.parse_sample("lr=loguniform:1e-4:1e-2") == ("lr", "loguniform", 1e-4, 1e-2)


@pytest.mark.parametrize("call, message", [
    (lambda: sweep.parse_grid("lr"), "--grid lr: expected NAME=V1,V2"),
    (lambda: sweep.parse_grid("momentum=0.9"), "cannot sweep 'momentum'; choose from"),
    (lambda: sweep.parse_grid("seed=1,2"), "cannot sweep 'seed'"),
    (lambda: sweep.parse_grid("batch_size=32,x"), "batch_size takes int values"),
    (lambda: sweep.parse_grid("lr=1e-3,1e-3"), "a value is repeated"),
    (lambda: sweep.parse_sample("lr=normal:0:1"), "unknown distribution 'normal'"),
    (lambda: sweep.parse_sample("lr=uniform:1e-3"), "expected NAME=DISTRIBUTION:LOW:HIGH"),
    (lambda: sweep.parse_sample("lr=loguniform:0:1"), "needs finite LOW < HIGH and LOW > 0"),
    (lambda: sweep.parse_sample("lr=uniform:2:1"), "needs finite LOW < HIGH"),
    (lambda: sweep.parse_sample("lr=randint:1:5"), r"randint does not fit lr \(float\)"),
    (lambda: sweep.parse_sample("model=uniform:1:5"), r"uniform does not fit model \(str\)"),
])
def test_bad_specs_name_the_flag_and_value(call, message):
    with pytest.raises(sweep.SweepError, match=message):
        call()


def test_random_points_are_drawn_from_the_sweep_seed_within_bounds():
    grid, samples = [("batch_size", [32, 64])], [("lr", "loguniform", 1e-4, 1e-2), ("shift", "randint", 0, 2)]
    a = sweep.points(grid, samples, 3, sweep_seed=0)
    assert a == sweep.points(grid, samples, 3, sweep_seed=0)
    assert a != sweep.points(grid, samples, 3, sweep_seed=1)
    assert [p["batch_size"] for p in a] == [32, 32, 32, 64, 64, 64]
    assert all(1e-4 <= p["lr"] <= 1e-2 and p["shift"] in (0, 1, 2) for p in a)
    assert sweep.points([("lr", [1e-3, 2e-3])], [], 5, 0) == [{"lr": 1e-3}, {"lr": 2e-3}]


def test_a_trials_flags_are_mnist_flags_with_exact_values():
    argv = sweep.trial_argv(["--steps", "5"], {"lr": 0.1 + 0.2, "batch_size": 16}, 3, pathlib.Path("/o"))
    args = sweep.recipes.parse_args(argv)
    assert (args.lr, args.batch_size, args.seed, args.out, args.steps) == (0.1 + 0.2, 16, 3, "/o", 5)


@pytest.mark.parametrize("own, fixed, message", [
    (["--grid", "lr=1e-3"], ["--out", "elsewhere"], "--out is the sweep's to set"),
    (["--grid", "lr=1e-3"], ["--resume"], "--resume is the sweep's to set"),
    (["--grid", "lr=1e-3"], ["--seed", "3"], "give seeds with --seeds"),
    ([], [], "nothing to sweep"),
    (["--grid", "lr=1e-3", "--sample", "lr=uniform:1e-3:2e-3"], [], "swept twice"),
    (["--grid", "batch_size=64,1000"], [], "--batch-size 1000: larger than the 256 training images"),
])
def test_every_trial_is_checked_before_ray_starts(own, fixed, message):
    args, fixed = sweep.parse_args([*own, "--", *fixed])
    with pytest.raises(fn.InvalidValueError, match=message):
        sweep.check(args, fixed, _dataset())


@REAL
def test_a_node_with_another_fnnet_or_other_kernels_refuses_its_trial(tmp_path):
    here = sweep.node()
    assert here == {"fnnet": fn.__version__, "kernels": fn.kernels.backend()}
    (tmp_path / "probe.py").write_text(sweep.PROBE)  # (what a trial's process imports, as it runs)
    probe = subprocess.run([sys.executable, str(tmp_path / "probe.py")], capture_output=True, text=True, check=True)
    assert json.loads(probe.stdout.splitlines()[-1]) == here
    sweep.check_node(here, here, "p000-seed0")
    with pytest.raises(sweep.SweepError, match=rf"p000-seed0: this node runs fnnet {re.escape(here['fnnet'])} with "
                                               rf"{here['kernels']} kernels, the sweep's driver fnnet 0.1.0 with "
                                               rf"{here['kernels']} kernels: install the same fnnet"):
        sweep.check_node({**here, "fnnet": "0.1.0"}, here, "p000-seed0")
    with pytest.raises(sweep.SweepError, match="this node runs fnnet .* with numpy kernels, the sweep's driver fnnet "
                                               ".* with pythran kernels"):
        sweep.check_node({**here, "kernels": "pythran"}, {**here, "kernels": "numpy"}, "p001-seed2")


def test_main_refuses_an_out_that_holds_a_sweep(tmp_path, capsys):
    (tmp_path / "results.csv").write_text("x")
    assert sweep.main(["--seeds", "0", "1", "--out", str(tmp_path)]) == 2
    assert "holds a sweep (results.csv); pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "results.csv").read_text() == "x"


def _need_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        if os.environ.get("FNNET_REQUIRE_RAY") == "1":
            pytest.fail("FNNET_REQUIRE_RAY=1 but ray[tune] is missing (pip install 'ray[tune]')")
        pytest.skip("ray[tune] is missing (pip install 'ray[tune]')")


@REAL
def test_a_four_trial_sweep_writes_its_table_and_a_trial_reproduces_standalone(tmp_path):
    _need_ray()
    out = tmp_path / "sweep"
    shared = ["--train-size", "1000", "--steps", "20", "--eval-every", "10"]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run([sys.executable, str(SWEEP), "--seeds", "0", "1", "--grid", "lr=1e-3,3e-3", "--num-cpus",
                           "2", "--out", str(out), "--", *shared], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["lr"], r["seed"]) for r in rows) == [("0.001", "0"), ("0.001", "1"), ("0.003", "0"),
                                                          ("0.003", "1")]
    assert all(r["status"] == "done" and 0.5 < float(r["test_accuracy"]) <= 1 for r in rows)
    assert len({r["params_sha256"] for r in rows}) == 4
    assert (out / "results.md").read_text().count("\n") == 6 and (out / "sweep.png").stat().st_size > 1000
    # each trial ran in its own folder as a normal run
    trial = rows[3]
    summary = json.loads((out / "trials" / trial["trial"] / "summary.json").read_text())
    assert summary["params_sha256"] == trial["params_sha256"]
    # the table's command, run standalone, gives the same bits
    command = trial["command"].split()[2:]
    command[command.index(next(a for a in command if a.startswith("--out=")))] = f"--out={tmp_path / 'alone'}"
    alone = subprocess.run([sys.executable, str(ROOT / "pipelines" / "mnist.py"), *command], capture_output=True,
                           text=True, check=False)
    assert alone.returncode == 0, alone.stderr
    assert json.loads((tmp_path / "alone" / "summary.json").read_text())["params_sha256"] == trial["params_sha256"]


@REAL
def test_asha_stops_trailing_trials_and_the_table_says_so(tmp_path):
    _need_ray()
    out = tmp_path / "asha"
    proc = subprocess.run([sys.executable, str(SWEEP), "--sample", "lr=loguniform:1e-5:1e-2", "--num-samples", "6",
                           "--scheduler", "asha", "--num-cpus", "2", "--out", str(out), "--",
                           "--train-size", "1000", "--steps", "40", "--eval-every", "10"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    stopped = [r for r in rows if r["status"].startswith("stopped at step")]
    done = [r for r in rows if r["status"] == "done"]
    assert stopped and done and len(stopped) + len(done) == 6
    assert all(r["test_accuracy"] == "" and r["val_accuracy"] for r in stopped)
    best = max(float(r["val_accuracy"]) for r in rows)
    assert any(float(r["val_accuracy"]) == best for r in done)  # the best trial was not stopped


@REAL
def test_a_sweep_runs_on_a_ray_cluster_it_joins_with_address(tmp_path):
    """`ray start --head` makes a one-node cluster; the sweep joins it with --address auto and
    runs from another working directory (workers get mnist.py by value, not by path)."""
    _need_ray()
    ray_cli = str(pathlib.Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    port = "6391"
    subprocess.run([ray_cli, "start", "--head", "--num-cpus", "2", "--port", port, "--disable-usage-stats"],
                   capture_output=True, text=True, env=env, timeout=120, check=True)
    try:
        # ('auto': the cluster this machine joined, with its token; ray 2.60's `ray start` turns token
        # authentication on, and a client given the address itself needs RAY_AUTH_MODE=token too)
        proc = subprocess.run([sys.executable, str(SWEEP), "--address", "auto", "--seeds", "0", "1",
                               "--out", "cluster", "--", "--train-size", "1000", "--steps", "10", "--eval-every", "5"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    finally:
        subprocess.run([ray_cli, "stop"], capture_output=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Connecting to existing Ray cluster" in proc.stderr + proc.stdout
    with open(tmp_path / "cluster" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["done", "done"]
    assert all((tmp_path / "cluster" / "trials" / r["trial"] / "summary.json").is_file() for r in rows)
