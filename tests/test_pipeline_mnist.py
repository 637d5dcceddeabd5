"""pipelines/mnist.py end to end on real MNIST: accuracy, outputs, reproducibility, resume."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import pipeline_module

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "pipelines" / "mnist.py"
DATA_DIR = os.environ.get("FNNET_DATA_DIR")
REAL = pytest.mark.skipif(
    not (DATA_DIR and (pathlib.Path(DATA_DIR) / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()),
    reason="real MNIST not in FNNET_DATA_DIR (the nox sessions point it at ../shared/data)",
)
REAL_FASHION = pytest.mark.skipif(
    not (DATA_DIR and (pathlib.Path(DATA_DIR) / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()),
    reason="real Fashion-MNIST not in FNNET_DATA_DIR (the nox sessions point it at ../shared/data)",
)

SMALL = ["--train-size", "2000", "--batch-size", "16", "--eval-samples", "300", "--steps", "40", "--eval-every", "10"]


def run(out: pathlib.Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def summary(out: pathlib.Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def metrics(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@REAL
@pytest.mark.slow
def test_default_preset_learns_from_5000_images_in_one_epoch(tmp_path):
    run(tmp_path, "--preset", "default", "--train-size", "5000", "--epochs", "1", "--eval-every", "40")
    s = summary(tmp_path)
    assert s["test_accuracy"] > 0.9 and s["val_accuracy"] > 0.9
    assert s["kernels_backend"] == os.environ.get("FNNET_EXPECT_BACKEND", s["kernels_backend"])
    assert sum(map(sum, s["confusion_matrix_test"])) == 10_000
    assert len(s["params_sha256"]) == 64 and s["config"]["dtype"] == "float32"
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [40, 79]
    assert set(rows[0]) == {"step", "epoch", "loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate",
                            "elapsed"}
    for name in s["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "checkpoint.npz").is_file()


@REAL
@pytest.mark.slow
def test_same_seed_same_bits_other_seed_other_bits(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run(a, *SMALL, "--seed", "5")
    run(b, *SMALL, "--seed", "5")
    run(c, *SMALL, "--seed", "6")
    assert summary(a)["params_sha256"] == summary(b)["params_sha256"] != summary(c)["params_sha256"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed"} for r in rows]  # noqa: E731
    assert strip(metrics(a)) == strip(metrics(b))


@REAL
@pytest.mark.slow
def test_the_number_of_threads_changes_no_bit(tmp_path):
    """Batches of 64 of the default CNN are cut into 4 shards: 1, 2 and 3 threads run them."""
    args = ["--train-size", "2000", "--steps", "20", "--eval-every", "10"]
    for t in (1, 2, 3):
        run(tmp_path / f"t{t}", *args, "--threads", str(t))
    shas = {summary(tmp_path / f"t{t}")["params_sha256"] for t in (1, 2, 3)}
    assert len(shas) == 1
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed"} for r in rows]  # noqa: E731
    assert strip(metrics(tmp_path / "t1")) == strip(metrics(tmp_path / "t3"))


@REAL
@pytest.mark.slow
def test_resume_ends_with_the_same_params_as_an_uninterrupted_run(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(whole, *SMALL)
    first = run(split, *SMALL, "--stop-after", "20")
    assert "stopped at step 20 of 40" in first.stdout
    assert not (split / "summary.json").exists()
    second = run(split, *SMALL, "--resume")
    assert "resumed from" in second.stdout and "at step 20" in second.stdout
    assert summary(split)["params_sha256"] == summary(whole)["params_sha256"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed"} for r in rows]  # noqa: E731
    assert strip(metrics(split)) == strip(metrics(whole))


@REAL
@pytest.mark.slow
def test_resume_refuses_another_config(tmp_path):
    run(tmp_path, *SMALL, "--stop-after", "10")
    proc = run(tmp_path, *SMALL[:-2], "--eval-every", "5", "--resume", check=False)
    assert proc.returncode != 0 and "was written with another config" in proc.stderr


@REAL
@pytest.mark.slow
def test_tutorial_preset_is_float64_with_replacement_sampling(tmp_path):
    proc = run(tmp_path, "--preset", "tutorial", "--steps", "200")
    s = summary(tmp_path)
    assert s["config"]["dtype"] == "float64" and s["config"]["batch_size"] == 2
    assert s["config"]["sampling"] == "replacement" and s["config"]["eval_samples"] == 200
    assert [r["step"] for r in metrics(tmp_path)] == [100, 200]
    assert "step    100" in proc.stdout


@REAL_FASHION
@pytest.mark.slow
def test_default_preset_learns_real_fashion_mnist_from_5000_images_in_one_epoch(tmp_path):
    run(tmp_path, "--preset", "default", "--dataset", "fashion-mnist", "--train-size", "5000", "--epochs", "1")
    s = summary(tmp_path)
    assert s["dataset"] == "fashion-mnist" and s["data_source"].endswith("fashion-mnist")
    assert s["test_accuracy"] > 0.7 and s["val_accuracy"] > 0.7  # (10 classes of clothing: chance is 0.1)
    assert sum(map(sum, s["confusion_matrix_test"])) == 10_000


@REAL_FASHION
@pytest.mark.slow
def test_best_preset_flips_clothing_and_not_digits(tmp_path):
    short = ["--train-size", "2000", "--steps", "30", "--eval-every", "30"]
    run(tmp_path / "f", "--preset", "best", "--dataset", "fashion-mnist", *short)
    assert summary(tmp_path / "f")["config"]["regularization"]["flip"] == 0.5
    assert summary(tmp_path / "f")["test_accuracy"] > 0.3
    run(tmp_path / "m", "--preset", "best", *short)
    assert summary(tmp_path / "m")["config"]["regularization"]["flip"] == 0.0


@pytest.mark.slow
def test_default_preset_runs_on_idx_files_of_fashion_mnists_layout(tmp_path):
    """The same preset on IDX files of Fashion-MNIST's layout (random pixels, written here),
    with checksums off since they are not the published files; without --no-verify, an error."""
    from test_data import write_set

    write_set(tmp_path / "data" / "fashion-mnist", n_train=10_200, n_test=50)
    run(tmp_path / "out", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--no-verify",
        "--train-size", "200", "--steps", "10", "--eval-samples", "50")
    s = summary(tmp_path / "out")
    assert s["dataset"] == "fashion-mnist" and s["steps"] == 10
    assert sum(map(sum, s["confusion_matrix_test"])) == 50
    proc = run(tmp_path / "out2", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"),
               "--steps", "10", check=False)
    assert proc.returncode == 2 and "md5" in proc.stderr and "does not match the published" in proc.stderr


def test_cli_help_and_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    for flag in ("--preset", "--seed", "--dataset", "--data-dir", "--steps", "--epochs", "--batch-size", "--lr",
                 "--out", "--resume", "--eval-every"):
        assert flag in proc.stdout
    bad = run(tmp_path, "--batch-size", "0", check=False)
    assert bad.returncode == 2 and "argument --batch-size: must be an integer >= 1, got '0'" in bad.stderr


@REAL
@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resumes_to_the_same_params(tmp_path):
    import signal

    args = ["--train-size", "2000", "--batch-size", "16", "--eval-samples", "100", "--steps", "1500",
            "--eval-every", "50", "--shift", "2", "--rotate", "10", "--ema", "0.99"]  # augmented batches too
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(whole, *args)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(cut), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # interrupt once training is under way
        if line.startswith("step"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"checkpoint saved to {cut / 'checkpoint.npz'}, continue with --resume" in out
    resumed = run(cut, *args, "--resume")
    assert "resumed from" in resumed.stdout
    assert summary(cut)["params_sha256"] == summary(whole)["params_sha256"]


def _fake_mnist(root: pathlib.Path) -> list[str]:
    from test_data import write_set

    write_set(root / "data" / "mnist", n_train=10_200, n_test=50)
    return ["--data-dir", str(root / "data"), "--no-verify", "--train-size", "200", "--batch-size", "16",
            "--steps", "6", "--eval-every", "3", "--eval-samples", "50"]


def test_no_terminal_no_bar_only_the_evaluation_lines(tmp_path):
    proc = run(tmp_path / "out", *_fake_mnist(tmp_path))
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("default preset on mnist") and lines[-1].startswith("test accuracy")
    assert [line.split()[:2] for line in lines[1:-1]] == [["step", "3"], ["step", "6"]]
    assert proc.stderr == "", "no bar (and nothing else) on stderr when it is not a terminal"


def test_on_a_terminal_the_bar_shows_step_rate_eta_and_loss(tmp_path):
    """stderr on a pseudo-terminal: tqdm draws its bar there (steps done, rate, ETA, loss)."""
    import fcntl
    import pty
    import re
    import struct
    import termios

    args = _fake_mnist(tmp_path)
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a new pty has 0 columns
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), *args],
                            stdout=subprocess.PIPE, stderr=sub, text=True)
    os.close(sub)
    out, _ = proc.communicate(timeout=120)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    bar = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, bar
    assert re.search(r"\b6/6 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(step/s|s/step), loss \d\.\d{4}\]", bar), bar
    assert "step      3" in out and "step      6" in out  # the evaluation lines stay on stdout


def test_an_augmented_run_is_reproducible_and_resumes_to_the_same_bits(tmp_path):
    """Translation, affine and cutout on every batch (keyed by fold_in(key, step)), label
    smoothing and the params' moving average: same seed, same bits; stopped and resumed,
    the same bits again; and another seed, other bits."""
    flags = [*_fake_mnist(tmp_path), "--shift", "2", "--rotate", "10", "--scale", "0.1", "--shear", "5",
             "--cutout", "6", "--label-smoothing", "0.1", "--ema", "0.9"]
    flags[flags.index("--steps") + 1] = "12"
    run(tmp_path / "a", *flags)
    run(tmp_path / "b", *flags)
    run(tmp_path / "c", *flags, "--stop-after", "5")
    run(tmp_path / "c", *flags, "--resume")
    run(tmp_path / "d", *flags, "--seed", "1")
    sha = [summary(tmp_path / r)["params_sha256"] for r in "abcd"]
    assert sha[0] == sha[1] == sha[2] != sha[3]
    s = summary(tmp_path / "a")
    reg = s["config"]["regularization"]
    assert reg["shift"] == 2 and reg["cutout"] == 6 and reg["ema"] == 0.9
    plain = [*_fake_mnist(tmp_path)]
    plain[plain.index("--steps") + 1] = "12"
    run(tmp_path / "e", *plain)
    assert summary(tmp_path / "e")["params_sha256"] != sha[0]  # the augmentation changed what was learnt


def test_best_differs_by_dataset_only_as_its_table_says():
    recipes = pipeline_module("recipes")
    assert recipes.preset_for("best", "mnist") == recipes.PRESETS["best"]  # (digits: the preset as written)
    fashion = recipes.preset_for("best", "fashion-mnist")
    for field, value in recipes.BEST_BY_DATASET["fashion-mnist"].items():
        where = fashion.regularization if hasattr(fashion.regularization, field) else fashion
        assert getattr(where, field) == value, field
    assert recipes.BEST_BY_DATASET["fashion-mnist"]["flip"] > 0 and "flip" not in recipes.BEST_BY_DATASET["mnist"]
    assert fashion.tta == "flip" and recipes.PRESETS["best"].tta is None  # (a mirror keeps a shirt, not a 2)
    for name in ("tutorial", "default"):  # (the other presets are the same on every dataset)
        assert recipes.preset_for(name, "fashion-mnist") == recipes.PRESETS[name]


@pytest.mark.parametrize("name", pipeline_module("recipes").MODELS)
def test_every_model_of_the_recipes_maps_images_to_ten_logits(name):
    import numpy as np

    import fnnet as fn

    recipes = pipeline_module("recipes")
    split = fn.data.Split(np.zeros((64, 1, 28, 28), np.float32), np.arange(64) % 10)
    ds = fn.data.Dataset("fashion-mnist", split, split, split, tuple("0123456789"), "fake")
    model = recipes.build_model(recipes.make_config(recipes.parse_args(["--model", name, "--steps", "1"]), ds))
    params, shape = model.init(fn.random.key(0), (1, 28, 28))
    assert shape == (10,) and model.stateful == (name.endswith("_bn") or name.startswith(("vgg", "resnet")))
    state = fn.TrainState.create(params, fn.optim.sgd(0.1), model)
    logits = fn.predict(model, params, split.x[:3], model_state=state.model_state)
    assert logits.shape == (3, 10)
    widths = [w.shape[0] for path, w in fn.tree.tree_leaves_with_path(params) if path[-1] == "w" and w.ndim == 4]
    stage = {"resnet": [16, 16, 16, 32, 32, 32, 64, 64, 64],  # stem; a block's two convs, then its shortcut's
             "resnet14": [16, *[16] * 4, *[32] * 5, *[64] * 5]}  # (the second block of a stage: no shortcut)
    assert widths == stage.get(name) or widths == (
        [1] if name == "tutorial" else [32, 32, 64, 64, 128, 128] if name == "vgg" else [16, 16, 32, 32, 64, 64]
        if name == "vgg_small" else [32, 64] if "wide" in name else [16, 32])


@REAL
@pytest.mark.slow
def test_a_batch_norm_model_resumes_to_the_params_and_statistics_of_an_unstopped_run(tmp_path):
    short = ["--model", "cnn_wide_bn", "--train-size", "1000", "--steps", "20", "--eval-every", "10"]
    run(tmp_path / "full", *short)
    run(tmp_path / "cut", *short, "--stop-after", "10")
    run(tmp_path / "cut", *short, "--resume")
    import fnnet as fn

    full, cut = (fn.checkpoint.load(tmp_path / d / "checkpoint.npz")[0] for d in ("full", "cut"))
    assert fn.checkpoint.digest(full["model_state"]) == fn.checkpoint.digest(cut["model_state"])
    assert summary(tmp_path / "cut")["params_sha256"] == summary(tmp_path / "full")["params_sha256"]
    assert summary(tmp_path / "cut")["val_accuracy"] == summary(tmp_path / "full")["val_accuracy"]


@REAL
@pytest.mark.interop
def test_export_onnx_writes_the_trained_model_that_onnxruntime_runs_as_fnnet_does(tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    import fnnet as fn

    run(tmp_path, *SMALL, "--export", "onnx")
    s = summary(tmp_path)
    assert s["onnx"] == "model.onnx"
    saved, _ = fn.checkpoint.load(tmp_path / "checkpoint.npz")
    recipes = pipeline_module("recipes")
    model = recipes.build_model(recipes.Config(**{**s["config"], "regularization": recipes.Regularization(
        **s["config"]["regularization"])}))
    x = fn.data.load("mnist").test.x[:200]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    assert np.max(np.abs(got - fn.predict(model, saved["params"], x))) <= 1e-5
    meta = {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}
    assert meta["params_sha256"] == s["params_sha256"]
    again = run(tmp_path, *SMALL, "--export", "onnx", check=False)  # (a second run keeps the first's files)
    assert again.returncode == 2 and "holds a run" in again.stderr


def test_export_onnx_without_onnx_says_what_to_install_before_any_work(tmp_path, monkeypatch, capsys):
    import importlib.util

    recipes = pipeline_module("recipes")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(SystemExit) as exit_:
        recipes.parse_args(["--export", "onnx", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "--export onnx: needs onnx, which is not installed (pip install onnx onnxruntime)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@REAL
def test_a_model_with_dropout_trains_with_a_key_of_its_seed_and_reproduces(tmp_path):
    args = [*SMALL, "--model", "cnn_wide_same_drop", "--steps", "12", "--eval-every", "6"]
    run(tmp_path / "a", *args)
    run(tmp_path / "b", *args)
    run(tmp_path / "c", *args, "--seed", "1")
    assert summary(tmp_path / "a")["params_sha256"] == summary(tmp_path / "b")["params_sha256"]
    assert summary(tmp_path / "a")["params_sha256"] != summary(tmp_path / "c")["params_sha256"]


def test_tta_comes_from_the_preset_and_the_flag_overrides_it():
    import numpy as np

    import fnnet as fn

    recipes = pipeline_module("recipes")
    split = fn.data.Split(np.zeros((64, 1, 28, 28), np.float32), np.arange(64) % 10)
    for name, want in (("mnist", {None: None, "none": None}),
                       ("fashion-mnist", {None: "flip", "none": None, "flip": "flip"})):
        ds = fn.data.Dataset(name, split, split, split, tuple("0123456789"), "fake")
        for flag, tta in want.items():
            argv = ["--preset", "best", "--dataset", name, "--steps", "1", "--eval-samples", "0"]
            argv += [] if flag is None else ["--tta", flag]
            assert recipes.make_config(recipes.parse_args(argv), ds).tta == tta, (name, flag)


@pytest.mark.parametrize("flags, match", [
    (["--tta", "flip"], r"--tta flip: a mirror changes mnist's classes \(a mirrored 2 is not a 2\); it serves "
                        r"datasets whose mirror images keep their class \(fashion-mnist\)"),
    (["--flip", "0.5"], r"--flip 0.5: a mirror changes mnist's classes"),
])
def test_flips_are_refused_for_digits(flags, match):
    import numpy as np

    import fnnet as fn

    recipes = pipeline_module("recipes")
    split = fn.data.Split(np.zeros((64, 1, 28, 28), np.float32), np.arange(64) % 10)
    ds = fn.data.Dataset("mnist", split, split, split, tuple("0123456789"), "fake")
    with pytest.raises(fn.experiment.FlagError, match=match):
        recipes.make_config(recipes.parse_args(["--steps", "1", "--eval-samples", "0", *flags]), ds)


def test_an_unusable_out_is_a_flag_error_and_leaves_nothing(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    proc = run(tmp_path / "file.txt" / "sub", "--preset", "tutorial", "--steps", "1", check=False)
    assert proc.returncode == 2 and "error: --out" in proc.stderr and "file.txt is a file, not a folder" in proc.stderr
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if os.access(locked, os.W_OK):  # (root writes anywhere: a path under /proc cannot be made by anyone)
            locked = pathlib.Path("/proc/fnnet-no-such-folder")
        proc = run(locked / "a" / "b", "--preset", "tutorial", "--steps", "1", check=False)
        assert proc.returncode == 2 and "cannot be written" in proc.stderr, proc.stderr
    finally:
        (tmp_path / "locked").chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "locked"]
    assert not list((tmp_path / "locked").iterdir())


def test_a_batch_too_large_for_memory_is_a_flag_error_before_the_data_is_read(tmp_path, monkeypatch):
    import fnnet as fn

    recipes = pipeline_module("recipes")
    args = recipes.parse_args(["--batch-size", "4096", "--out", str(tmp_path / "o")])
    monkeypatch.setattr(fn.memory, "available", lambda: 1 << 30)  # 1 GiB left
    recipes.check_memory(recipes.parse_args(["--batch-size", "64", "--out", str(tmp_path / "o")]))  # (fits)
    with pytest.raises(fn.experiment.FlagError, match=r"--batch-size 4096 with --model cnn \(a step, an evaluation "
                                                      r"and the data\) needs .* GiB of buffers, and this process may "
                                                      r"take 1.00 GiB more: pass a smaller --batch-size"):
        recipes.check_memory(args)
    # the whole script: exit 2, and no data read (an empty data folder would otherwise be the error)
    monkeypatch.setenv("FNNET_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    proc = run(tmp_path / "o", "--batch-size", "100000000", check=False)
    assert proc.returncode == 2 and "error: --batch-size 100000000 with --model cnn" in proc.stderr, proc.stderr


@REAL
@pytest.mark.parametrize("flags", [
    ["--preset", "tutorial", "--seed", "2", "--steps", "60", "--eval-every", "20"],
    ["--preset", "default", *SMALL],
    pytest.param(["--preset", "best", "--dataset", "fashion-mnist", *SMALL], marks=REAL_FASHION),
], ids=["tutorial", "default", "best-fashion-mnist"])
def test_resume_alone_takes_the_flags_of_the_run_and_ends_as_a_run_never_stopped(tmp_path, flags):
    whole = run(tmp_path / "whole", *flags)
    assert whole.returncode == 0
    run(tmp_path / "cut", *flags, "--stop-after", "20")
    run(tmp_path / "cut", "--resume")  # (no other flag: they come from the run)
    assert summary(tmp_path / "cut")["params_sha256"] == summary(tmp_path / "whole")["params_sha256"]
    assert summary(tmp_path / "cut")["config"] == summary(tmp_path / "whole")["config"]
    changed = run(tmp_path / "cut", "--resume", "--seed", "5", check=False)  # a flag given must agree
    assert changed.returncode == 2 and "seed: " in changed.stderr and "5 now" in changed.stderr, changed.stderr


@REAL
@pytest.mark.parametrize("flags", [
    ["--preset", "tutorial", "--steps", "40", "--eval-every", "20"],
    ["--preset", "default", *SMALL],
    ["--preset", "best", *SMALL, "--ema", "0.9"],
    pytest.param(["--preset", "best", "--dataset", "fashion-mnist", *SMALL], marks=REAL_FASHION),
], ids=["tutorial", "default", "best-ema", "best-fashion-mnist"])
def test_load_run_gives_back_the_model_and_params_the_run_was_scored_with(tmp_path, flags):
    import numpy as np

    import fnnet as fn

    recipes = pipeline_module("recipes")
    run(tmp_path / "r", *flags)
    r = recipes.load_run(tmp_path / "r")
    s = summary(tmp_path / "r")
    assert r.config == s["config"] and r.summary == s and r.state.step == s["steps"] == r.metrics[-1]["step"]
    assert fn.checkpoint.digest(r.state.params) == s["params_sha256"]
    ds = fn.data.load(s["dataset"], DATA_DIR)
    cfg = recipes.Config(**{**r.config, "regularization": recipes.Regularization(**r.config["regularization"])})
    got = fn.experiment.evaluate(r.model, r.params, ds.test, np.dtype(cfg.dtype), r.state.step,
                                 model_state=r.model_state, tta=cfg.tta)
    assert got["accuracy"] == s["test_accuracy"]  # (the same params, model and state: the same score)


@REAL
def test_load_run_opens_a_stopped_run_and_names_what_is_missing(tmp_path):
    import fnnet as fn

    recipes = pipeline_module("recipes")
    run(tmp_path / "cut", "--preset", "default", *SMALL, "--stop-after", "20")
    r = recipes.load_run(tmp_path / "cut")
    assert r.summary is None and r.state.step == 20 and [m["step"] for m in r.metrics] == [10, 20]
    with pytest.raises(fn.DataError, match=r"nowhere: no such run folder"):
        recipes.load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(fn.DataError, match=r"empty: holds no checkpoint.npz"):
        recipes.load_run(tmp_path / "empty")
    fn.checkpoint.save(tmp_path / "other" / "checkpoint.npz", {"w": fn.tree_leaves(r.params)[0]})
    with pytest.raises(fn.DataError, match=r"holds no run config and params"):
        recipes.load_run(tmp_path / "other")


def test_help_says_what_each_model_is():
    recipes = pipeline_module("recipes")
    text = " ".join(subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                                   check=True).stdout.split())
    for name, what in recipes.MODELS.items():
        assert f"{name}: {' '.join(what.split())}" in text, name
    assert [len(list(recipes.model_of(n).children)) for n in ("cnn", "cnn_wide_bn")] == [10, 12]  # (bn: 2 more)
