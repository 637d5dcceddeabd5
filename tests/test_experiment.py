"""fnnet.experiment: run folders, metrics files, ranks, divergence and exit statuses.

pipelines/mnist.py runs all of it end to end (tests/test_pipeline_mnist.py); here each
part alone, with the cases a run meets rarely."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time

import numpy as np
import pytest

import fnnet as fn
from fnnet import optim
from fnnet.experiment import Divergence, FlagError, Ranks, RunFolder, evaluate, exit_status, follow_metrics, number

OUTPUTS = ("checkpoint.npz", "metrics.jsonl", "summary.json")


def _state():
    model = fn.serial(fn.flatten(), fn.dense(3))
    params, _ = model.init(fn.random.key(0), (2, 2))
    return fn.TrainState.create(params, optim.adam(1e-3))


def test_a_run_folder_refuses_to_lose_or_mix_files(tmp_path):
    folder = RunFolder(tmp_path / "run", OUTPUTS, {"lr": 1.0})
    folder.check(resume=False, overwrite=False)  # (nothing there yet)
    with pytest.raises(FlagError, match="--resume: no checkpoint to resume"):
        folder.check(resume=True, overwrite=False)
    folder.start()
    (folder.path / "summary.json").write_text("{}")
    with pytest.raises(FlagError, match=r"holds a run \(summary.json\); pass --resume .* --overwrite"):
        folder.check(resume=False, overwrite=False)
    folder.check(resume=False, overwrite=True)
    folder.start()
    assert not (folder.path / "summary.json").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FlagError, match="is a file, not a folder"):
        RunFolder(tmp_path / "file", OUTPUTS, {}).check(False, False)


def test_a_checkpoint_resumes_only_its_own_config_and_key(tmp_path):
    state = _state()
    folder = RunFolder(tmp_path, OUTPUTS, {"lr": 1.0})
    folder.save(state, {"data_key": [1, []], "elapsed": 2.0})
    folder.write_metrics([{"step": 0, "loss": 1.0}, {"step": 5, "loss": 0.5}])
    got, meta, rows = folder.resume(state, {"data_key": [1, []]})
    assert fn.checkpoint.digest(got.params) == fn.checkpoint.digest(state.params) and meta["elapsed"] == 2.0
    assert rows == [{"step": 0, "loss": 1.0}]  # (the rows after the checkpoint's step are not this run's)
    with pytest.raises(FlagError, match="has another data-order key"):
        folder.resume(state, {"data_key": [2, []]})
    with pytest.raises(FlagError, match=r"another config:\n  lr: 1.0 there, 2.0 now"):
        RunFolder(tmp_path, OUTPUTS, {"lr": 2.0}).resume(state, {})


def test_a_checkpoint_from_before_a_new_field_resumes_while_the_field_is_off(tmp_path):
    state = _state()
    RunFolder(tmp_path, OUTPUTS, {"lr": 1.0, "reg": {"shift": 2}}).save(state, {})
    for off in ({"shard_rows": None}, {"reg": {"shift": 2, "flip": 0.0}}):  # (fields added since, off)
        config = {"lr": 1.0, "reg": {"shift": 2}}
        config.update(off)
        RunFolder(tmp_path, OUTPUTS, config).resume(state, {})
    with pytest.raises(FlagError, match="another config"):  # (a new field that is on is another run)
        RunFolder(tmp_path, OUTPUTS, {"lr": 1.0, "reg": {"shift": 2, "flip": 0.5}}).resume(state, {})


def test_a_model_with_state_has_it_saved_and_resumed(tmp_path):
    model = fn.serial(fn.flatten(), fn.dense(3), fn.batch_norm())
    params, _ = model.init(fn.random.key(0), (4,))
    state = fn.TrainState.create(params, optim.sgd(0.1), model)
    state = fn.train_step(model, fn.softmax_cross_entropy, optim.sgd(0.1))(
        state, (np.arange(24, dtype=np.float32).reshape(6, 4), np.arange(6) % 3))[0]
    folder = RunFolder(tmp_path, OUTPUTS, {})
    folder.save(state, {})
    got = folder.resume(state, {})[0]
    assert fn.checkpoint.digest(got.model_state) == fn.checkpoint.digest(state.model_state)
    assert got.model_state["batch_norm_2"]["mean"].any()  # (the running statistics, not the initial zeros)


def test_metrics_drop_a_torn_last_line_and_name_a_bad_one(tmp_path, capsys):
    folder = RunFolder(tmp_path, OUTPUTS, {})
    folder.metrics.write_text('{"step": 1}\n{"step": 2')
    assert folder.read_metrics() == [{"step": 1}]
    assert "dropped a torn last line" in capsys.readouterr().err
    folder.metrics.write_text('{"step": 1}\n[1]\n{"step": 3}\n')
    with pytest.raises(fn.DataError, match="metrics.jsonl: line 2 is not a metrics row"):
        folder.read_metrics()


def test_follow_metrics_yields_each_whole_row_as_it_lands(tmp_path):
    path, done = tmp_path / "metrics.jsonl", threading.Event()

    def writer():
        with open(path, "w") as f:
            for step in (1, 2, 3):
                f.write(json.dumps({"step": step}))
                f.flush()
                time.sleep(0.05)  # (a half-written line for a while)
                f.write("\n")
                f.flush()
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    rows = list(follow_metrics(path, lambda: not done.is_set(), poll=0.01))
    thread.join()
    assert rows == [{"step": 1}, {"step": 2}, {"step": 3}]


def test_divergence_judges_enough_examples_and_the_final_state():
    d = Divergence(10, min_examples=100)
    assert d.above == pytest.approx(2 * np.log(10))
    spike = [{"step": 1, "loss": 9.0}]  # one batch of 2 images far above chance: says nothing yet
    assert d.warnings(spike, batch_size=2) == []
    rows = [{"step": s, "loss": 9.0 if s == 50 else 1.0} for s in range(1, 51)]  # 100 examples, one bad batch
    assert d.warnings(rows, batch_size=2) == []  # mean (49 * 1 + 9) / 50 = 1.16
    bad = [{"step": 10, "loss": 1.0}, {"step": 40, "loss": 6.0}, {"step": 60, "loss": 6.0}]
    assert d.warnings(bad, batch_size=2) == ["diverging: mean training loss 6 over the 100 examples up to step 60 is "
                                             "above twice the chance level (4.605); lower --lr"]
    assert d.warnings(bad[:2], batch_size=2) == []  # (80 examples: not enough to judge)
    assert d.final(2.3, 60) == [] and "final validation loss 7 at step 60" in d.final(7.0, 60)[0]
    assert d.final(float("inf"), 3)


class Two:
    """Rank 1 of 2, enough of a communicator for Ranks; ``hit``: what the other rank's
    allreduce adds (it was interrupted)."""

    def __init__(self, hit: int = 0) -> None:
        self.hit = hit

    def Get_size(self):  # noqa: N802
        return 2

    def Get_rank(self):  # noqa: N802
        return 1

    def allreduce(self, value):
        return value + self.hit


def test_ranks_alone_and_on_two_check_the_shard_cut_of_every_batch():
    ranks = Ranks(threads=3)
    assert (ranks.mpi, ranks.size, ranks.root, ranks.step_threads, ranks.step_comm) == (False, 1, True, 3, None)
    assert ranks.on_root(lambda: 7) == 7
    with pytest.warns(DeprecationWarning, match="Ranks.cores is Ranks.step_threads"):
        assert ranks.cores == 3
    two = Ranks(Two())
    assert two.mpi and two.step_threads == 1 and not two.root and two.step_comm is two.comm
    model = fn.serial(fn.flatten(), fn.dense(3))
    params, _ = model.init(fn.random.key(0), (4,))
    step = fn.train_step(model, fn.softmax_cross_entropy, fn.optim.sgd(0.1), rows_per_shard=8)
    assert two.check_shards(step, params, [64, 16], (4,), np.float32) == 8  # (8 shards; 2, and 1 for a short batch)
    assert ranks.check_shards(step, params, [24], (4,), np.float32) == 3
    with pytest.raises(FlagError, match=r"--distributed on 2 ranks: a batch of 24 rows is cut into 3 shards, which 2 "
                                        r"ranks cannot share .* run on 1 or 3 ranks, or cut it so that they can: "
                                        r"--shard-rows 12 gives 2 shards"):
        two.check_shards(step, params, [64, 24], (4,), np.float32)  # (an epoch's last batch)


def test_interrupts_stop_every_rank_after_the_same_step():
    alone = Ranks().interrupts()
    assert not alone() and alone.agreed  # (one process: KeyboardInterrupt, as always)
    quiet, hit = Ranks(Two()).interrupts(), Ranks(Two(hit=1)).interrupts()
    try:
        assert signal.getsignal(signal.SIGINT) == hit._handler
        assert not quiet() and not quiet.agreed
        assert hit() and hit.agreed  # the other rank was interrupted: this one stops too
        hit._handler(signal.SIGINT, None)  # a first Ctrl-C here: noted...
        with pytest.raises(KeyboardInterrupt):  # ...a second one: at once
            hit._handler(signal.SIGINT, None)
    finally:
        hit.close()
        quiet.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("error, status", [(fn.DivergenceError("x"), 3), (FlagError("y"), 2),
                                           (fn.DataError("z"), 2)])
def test_errors_become_exit_statuses(tmp_path, capsys, error, status):
    def run():
        raise error

    ckpt = tmp_path / "checkpoint.npz"
    assert exit_status(run, Ranks, ckpt) == status
    err = capsys.readouterr().err
    assert f"error: {'training diverged: ' if status == 3 else ''}{error}" in err
    if status == 3:  # what it says of the checkpoint is what is on disk
        assert "no checkpoint was written yet" in err and "is intact" not in err
        ckpt.write_bytes(b"x")
        assert exit_status(run, Ranks, ckpt) == 3
        assert f"the last checkpoint, {ckpt}, is intact" in capsys.readouterr().err
    assert exit_status(lambda: 0, Ranks, ckpt) == 0


def test_number_flags_name_the_range():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=number(float, 0, low_open=True))
    assert ap.parse_args(["--lr", "0.5"]).lr == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="must be a finite number > 0, got 'nan'"):
        number(float, 0, low_open=True)("nan")
    with pytest.raises(argparse.ArgumentTypeError, match="expected an integer, got '1.5'"):
        number(int, 1)("1.5")


def test_flip_tta_evaluates_the_mean_of_the_logits_of_each_image_and_its_mirror(rng):
    model = fn.serial(fn.conv2d(3, 3), fn.relu(), fn.flatten(), fn.dense(4))
    params, _ = model.init(fn.random.key(0), (1, 6, 5), dtype=np.float32)
    x = rng.random((9, 1, 6, 5), dtype=np.float32)
    split = fn.data.Split(x, np.arange(9) % 4)
    plain, flip = (evaluate(model, params, split, np.dtype(np.float32), 0, tta=t) for t in (None, "flip"))
    mirrored = fn.predict(model, params, x[..., ::-1].copy())
    logits = (fn.predict(model, params, x) + mirrored) * np.float32(0.5)
    assert np.array_equal(flip["pred"], logits.argmax(1)) and flip["accuracy"] == np.mean(logits.argmax(1) == split.y)
    assert flip["loss"] == float(fn.softmax_cross_entropy(logits, split.y)[0]) != plain["loss"]
    assert np.array_equal(plain["pred"], fn.predict(model, params, x).argmax(1))
    with pytest.raises(fn.InvalidValueError, match=r"evaluate: tta must be None or one of \('flip',\), got 'rot90'"):
        evaluate(model, params, split, np.dtype(np.float32), 0, tta="rot90")
    flat = fn.data.Split(x.reshape(9, -1), split.y)
    with pytest.raises(fn.ShapeError, match=r"tta='flip' mirrors images \(N, C, H, W\), got inputs of shape \(9, 30\)"):
        evaluate(fn.serial(fn.dense(4)), {}, flat, np.dtype(np.float32), 0, tta="flip")


@pytest.mark.parametrize("dtype, shift", [(np.float32, 0.0), (np.float64, -0.5)])  # raw pixels; standardized ones
def test_plots_show_the_first_test_images_then_the_mistakes_in_red(tmp_path, rng, dtype, shift):
    import matplotlib.image

    from fnnet.experiment import save_plots

    rows = [{"step": s, "loss": 1 / s, "val_loss": 2 / s, "train_accuracy": 1 - 1 / s, "val_accuracy": 1 - 2 / s}
            for s in (10, 20, 30)]
    x = (rng.random((1000, 1, 28, 28)) + shift).astype(dtype)
    y = rng.integers(0, 10, 1000)

    def red_pixels(pred: np.ndarray) -> int:
        assert save_plots(tmp_path, rows, x, y, pred, tuple("0123456789")) == ["learning_curves.png", "predictions.png"]
        assert matplotlib.image.imread(tmp_path / "learning_curves.png").shape[:2] == (400, 1000)
        img = matplotlib.image.imread(tmp_path / "predictions.png")[..., :3]
        return int(np.sum((img[..., 0] > 0.8) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)))

    assert red_pixels(y.copy()) == 0  # no mistake: 40 black titles
    wrong = y.copy()
    wrong[[3, 500]] = (y[[3, 500]] + 1) % 10
    assert red_pixels(wrong) > 0  # the two mistakes, in red after the first 38 images
