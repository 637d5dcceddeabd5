"""Data-parallel training over MPI: ``train_step(comm=)`` (every rank runs whole shards of
the global batch: the bits of one process), ``fnnet.distributed`` (the Horovod pattern,
``data_parallel``) and pipelines/mnist.py --distributed.

The first tests run everywhere, with stand-in communicators. The MPI tests launch
``mpiexec -n N python -m mpi4py ...``; they skip where mpi4py or mpiexec is absent
(``pip install mpi4py mpich``), except under ``FNNET_REQUIRE_MPI=1``
(``nox -s distributed``), where an absent MPI is a failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import mpi_worker as w
import numpy as np
import pytest
from conftest import pipeline_module
from test_pipeline_mnist import REAL, SCRIPT

import fnnet as fn
from fnnet import optim
from fnnet.distributed import broadcast, check_replicated, data_parallel, mean_gradient, rank_rows
from fnnet.experiment import read_metrics
from fnnet.tree import FrozenDict, tree_leaves, tree_map

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "mpi_worker.py"


class FakeComm:
    """Rank ``rank`` of ``size``, whose peers hold ``others`` (their gradients, in rank
    order without this rank's): enough of mpi4py's API to test the reductions alone."""

    def __init__(self, size: int = 1, rank: int = 0, others: list | None = None, digests: list | None = None):
        self.size, self.rank, self.others, self.digests = size, rank, others or [], digests

    def Get_rank(self):  # noqa: N802
        return self.rank

    def Get_size(self):  # noqa: N802
        return self.size

    def _rows(self, mine):
        rows = list(self.others)
        rows.insert(self.rank, mine)
        return rows

    def Allreduce(self, send, recv):  # noqa: N802
        rows = self._rows(send)
        recv[...] = rows[0]
        for r in rows[1:]:
            recv += r

    def Allgather(self, send, recv):  # noqa: N802
        recv[...] = self._rows(send)

    def Bcast(self, buf, root=0):  # noqa: N802
        pass

    def bcast(self, obj, root=0):
        return obj

    def allgather(self, obj):
        return self.digests if self.digests is not None else [obj] * self.size


# -- everywhere --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "clip"])  # flat gradient (jit) and a tree (clip_by_global_norm)
@pytest.mark.parametrize("deterministic", [False, True])
def test_one_rank_changes_no_bit(name, deterministic):
    (x, y), = w.batches(1, 8)
    runs = []
    for opt in (w.optimizer(name), data_parallel(w.optimizer(name), FakeComm(), deterministic=deterministic)):
        step, state = fn.jit(fn.train_step(w.model(), fn.softmax_cross_entropy, opt)), w.initial_state(opt)
        for _ in range(3):
            state, _ = step(state, (x, y))
        runs.append(state)
    assert fn.checkpoint.digest(runs[0].params) == fn.checkpoint.digest(runs[1].params)
    assert fn.checkpoint.digest(runs[0].opt_state) == fn.checkpoint.digest(runs[1].opt_state)


def test_the_optimizer_state_keeps_its_structure():
    params = w.initial_state(optim.adam(1e-3)).params
    plain, wrapped = optim.adam(1e-3).init(params), data_parallel(optim.adam(1e-3), FakeComm()).init(params)
    fn.tree.check_like(wrapped, plain, "state")
    # one path: a step's gradients (views of one vector) and a plain tree give the same bits,
    # and the optimizer gets the mean as views of one vector either way
    layout = fn.flat.Layout.of(params)
    vector = np.random.default_rng(0).standard_normal(layout.size).astype(layout.dtype)
    seen = []
    spy = optim.GradientTransformation(lambda p: (), lambda u, s, p=None: (seen.append(fn.flat.flat_of(u)), (u, s))[1])
    for grads in (layout.views(vector), fn.tree_map(np.array, layout.views(vector))):
        data_parallel(spy, FakeComm()).update(grads, ())
    assert all(found is not None for found in seen)
    assert seen[0][0].tobytes() == seen[1][0].tobytes() == vector.tobytes()


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_deterministic_mean_sums_in_rank_order_on_every_rank(rank):
    rng = np.random.default_rng(0)
    g = [(rng.standard_normal(1000) * 10.0 ** rng.integers(-4, 4, 1000)).astype(np.float32) for _ in range(3)]
    comm = FakeComm(3, rank, [g[r] for r in range(3) if r != rank])
    out = mean_gradient(g[rank], comm, deterministic=True)
    assert out.dtype == np.float32 and out is not g[rank]
    assert out.tobytes() == np.divide((g[0] + g[1]) + g[2], np.float32(3)).tobytes()
    assert ((g[1] + g[2]) + g[0]).tobytes() != ((g[0] + g[1]) + g[2]).tobytes()  # (the order shows in these values)


def test_mean_gradient_does_not_change_its_input():
    g = np.arange(6, dtype=np.float64)
    g.setflags(write=False)
    out = mean_gradient(g, FakeComm(2, 0, [np.ones(6)]))
    np.testing.assert_array_equal(out, (np.arange(6) + 1) / 2)
    np.testing.assert_array_equal(g, np.arange(6))


def test_rank_rows_gives_consecutive_equal_slices_and_refuses_uneven_ones():
    assert [rank_rows(12, FakeComm(3, r)) for r in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    with pytest.raises(fn.InvalidValueError, match="batch of 10 does not split into 3 equal slices"):
        rank_rows(10, FakeComm(3, 1))
    with pytest.raises(fn.InvalidValueError, match="batch_size must be an int >= 1, got 0"):
        rank_rows(0, FakeComm())


def test_check_replicated_names_the_ranks_that_differ():
    params = w.initial_state(optim.sgd(0.1)).params
    check_replicated(params, FakeComm(2))
    digest = fn.checkpoint.digest(params)
    with pytest.raises(fn.InvalidValueError, match=r"the params differ between ranks \(rank 0 and ranks 1, 3\)"):
        check_replicated(params, FakeComm(4, digests=[digest, "x", digest, "y"]))


def test_broadcast_freezes_what_it_hands_out():
    tree = broadcast({"w": np.ones(3)}, FakeComm())
    assert isinstance(tree, FrozenDict) and not tree["w"].flags.writeable


@pytest.mark.parametrize("call, message", [
    (lambda: data_parallel(optim.sgd(0.1), object()), "comm must be an mpi4py communicator .* got object"),
    (lambda: data_parallel(lambda g: g, FakeComm()), "optimizer must be a GradientTransformation, got function"),
    (lambda: data_parallel(optim.sgd(0.1), FakeComm(), deterministic="yes"), "deterministic must be a bool"),
    (lambda: rank_rows(8, None), "rank_rows: comm must be an mpi4py communicator"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(fn.InvalidTypeError, match=message):
        call()


def test_pipeline_distributed_without_mpi4py_says_what_to_install(monkeypatch, tmp_path, capsys):
    mnist = pipeline_module("mnist")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    assert mnist.main(["--distributed", "--out", str(tmp_path / "o")]) == 2
    assert "--distributed needs mpi4py and an MPI" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- over MPI ----------------------------------------------------------------------------


def _mpiexec() -> str:
    """mpiexec beside this Python (the mpich wheel's) or on PATH; skip or fail without it."""
    found = shutil.which("mpiexec", path=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        if os.environ.get("FNNET_REQUIRE_MPI") == "1":
            pytest.fail("FNNET_REQUIRE_MPI=1 but mpi4py or mpiexec is missing (pip install mpi4py mpich)")
        pytest.skip("mpi4py or mpiexec is missing (pip install mpi4py mpich)")
    return found


def mpirun(n: int, script: pathlib.Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([_mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py", str(script), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _params(path: pathlib.Path) -> list[np.ndarray]:
    return tree_leaves(fn.checkpoint.load(path)[0]["params"])


def reference(name: str, n: int, steps: int, batch: int, shards: bool = True) -> list[np.ndarray]:
    """One process: each step's gradient on each of ``n`` slices (the plain step, which
    jit equals bit for bit), summed in rank order and divided by ``n`` as
    ``mean_gradient`` does, then the optimizer; or (``shards=False``) the whole batch."""
    opt = w.optimizer(name)
    state, grads = w.initial_state(opt), []
    capture = optim.GradientTransformation(lambda p: FrozenDict(), lambda u, s, p=None: (grads.append(u), s)[1:] and
                                           (tree_map(np.zeros_like, u), s))
    grad_step = fn.train_step(w.model(), fn.softmax_cross_entropy, capture)
    params, opt_state = state.params, state.opt_state
    for x, y in w.batches(steps, batch):
        parts = np.array_split(np.arange(batch), n if shards else 1)
        grads.clear()
        for rows in parts:
            grad_step(fn.TrainState(params, FrozenDict(), 0), (x[rows], y[rows]))
        total = tree_map(np.copy, grads[0])
        for g in grads[1:]:
            total = tree_map(lambda a, b: np.add(a, b, out=a), total, g)
        mean = tree_map(lambda a: np.divide(a, len(grads), out=a), total)
        updates, opt_state = opt.update(mean, opt_state, params)
        params = optim.apply_updates(params, updates)
    return tree_leaves(params)


def _same_bits(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b))


@pytest.mark.parametrize("name, flags", [
    ("adam", []), ("adam", ["--deterministic"]), ("clip", []), ("adam", ["--plain"]),
])
def test_two_ranks_hold_identical_params_equal_to_the_reference(tmp_path, name, flags):
    _ok(mpirun(2, WORKER, "--out", str(tmp_path), "--slices", "--optimizer", name, "--steps", "4", "--batch", "12",
               *flags))
    r0, r1 = _params(tmp_path / "rank0.npz"), _params(tmp_path / "rank1.npz")
    assert _same_bits(r0, r1)
    assert _same_bits(r0, reference(name, 2, 4, 12))


def test_three_ranks_deterministic_reduction_sums_in_rank_order(tmp_path):
    _ok(mpirun(3, WORKER, "--out", str(tmp_path), "--slices", "--deterministic", "--steps", "3", "--batch", "12"))
    ranks = [_params(tmp_path / f"rank{r}.npz") for r in range(3)]
    assert _same_bits(ranks[0], ranks[1]) and _same_bits(ranks[0], ranks[2])
    assert _same_bits(ranks[0], reference("adam", 3, 3, 12))


def test_two_ranks_against_one_process_on_the_whole_batch(tmp_path):
    """Slicing the batch changes only the order of the sums: after 4 steps of SGD with
    momentum, float32, the params differ from one process's by at most 1e-6 of their
    largest magnitude (measured: a few 1e-8)."""
    _ok(mpirun(2, WORKER, "--out", str(tmp_path), "--slices", "--optimizer", "sgd", "--steps", "4", "--batch", "12"))
    got, whole = _params(tmp_path / "rank0.npz"), reference("sgd", 2, 4, 12, shards=False)
    scale = max(np.abs(p).max() for p in whole)
    worst = max(np.abs(a - b).max() for a, b in zip(got, whole)) / scale
    assert worst <= 1e-6, worst


# -- train_step(comm=): the bits of one process on any layout ---------------------------------


def one_process(kind: str, rows: object, steps: int, batch: int) -> tuple[list[np.ndarray], list[np.ndarray], list]:
    """The plain step on one process, no comm: params, model state and each step's loss."""
    opt = w.optimizer("adam")
    step, state, losses = w.train_step(kind, opt, rows), w.initial_state(opt, kind), []
    for x, y in w.batches(steps, batch):
        state, m = step(state, (x, y))
        losses.append(m["loss"])
    return tree_leaves(state.params), tree_leaves(state.model_state), losses


@pytest.mark.parametrize("n, kind, rows, flags", [
    (2, "cnn", "6", []),  # 4 shards, 2 a rank, jit on one thread
    (2, "cnn", "6", ["--threads", "2"]),  # ranks x threads
    (4, "cnn", "6", ["--plain"]),  # one shard a rank
    (2, "dropout", "6", ["--threads", "2"]),  # a shard's key: its global index
    (2, "bn", "6", []),  # batch norm's statistics over every rank's shards
    (4, "bn", "6", ["--plain"]),
    (2, "bn", "12", []),  # one shard a rank: a group of one, across ranks
    (2, "bn", "none", []),  # one shard (not cut): rank 0 alone, every rank its state
    (3, "dropout", "8", []),  # 3 shards on 3 ranks
    (2, "resnet", "6", ["--threads", "2"]),  # the pipeline's ResNet: batch norm in residual blocks
])
def test_ranks_give_the_bits_of_one_process(tmp_path, n, kind, rows, flags):
    _ok(mpirun(n, WORKER, "--out", str(tmp_path), "--model", kind, "--rows-per-shard", rows, "--batch", "24",
               "--steps", "3", *flags))
    params, model_state, losses = one_process(kind, w.rows_setting(rows), 3, 24)
    for r in range(n):
        got = fn.checkpoint.load(tmp_path / f"rank{r}.npz")[0]
        assert _same_bits(tree_leaves(got["params"]), params), f"rank {r}"
        assert _same_bits(tree_leaves(got["model_state"]), model_state), f"rank {r}"
        assert got["losses"].tolist() == losses  # the global batch's loss, on every rank


@pytest.mark.parametrize("n, flags, message", [
    (3, ["--rows-per-shard", "6"], "a batch of 24 rows is cut into 4 shards, which 3 ranks cannot share as whole "
     "shards (the bits would then depend on the ranks): run on 1, 2 or 4 ranks, or cut it so that they can: "
     "rows_per_shard=8 gives 3 shards"),
    (2, ["--rows-per-shard", "6", "--slices-to-step"], "step: the ranks passed different batches (rank 0 and rank 1)"),
    (2, ["--rows-per-shard", "6", "--model", "bn", "--bad-label-rank", "1"],
     "InvalidValueError: softmax_cross_entropy: labels must be class ids in [0, 5), got values in [0, 5]"),
])
def test_a_layout_or_batch_that_cannot_keep_the_bits_is_refused_on_every_rank(tmp_path, n, flags, message):
    proc = _ok(mpirun(n, WORKER, "--out", str(tmp_path), "--batch", "24", *flags, timeout=60))
    for r in range(n):
        assert f"rank {r}: " in proc.stdout and message in proc.stdout
    assert proc.stdout.count(message) == n
    assert not list(tmp_path.glob("rank*.npz"))


def test_an_error_on_one_rank_ends_every_rank_within_seconds(tmp_path):
    t0 = time.perf_counter()
    proc = mpirun(2, WORKER, "--out", str(tmp_path), "--rows-per-shard", "6", "--fail-rank", "1", "--fail-step", "2",
                  "--steps", "4", timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "rank 1 fails on purpose at step 2" in proc.stderr
    assert elapsed < 20, f"mpiexec took {elapsed:.1f} s to end after rank 1 failed (rank 0 waits in a collective)"
    assert not list(tmp_path.glob("rank*.npz"))


def test_the_guides_example_runs_on_two_ranks(tmp_path):
    import re

    page = (ROOT / "docs" / "scaling.md").read_text()
    code = next(c for c in re.findall(r"```python\n(.*?)```", page, re.S) if "from mpi4py import" in c)
    (tmp_path / "train.py").write_text(code)
    proc = _ok(mpirun(2, tmp_path / "train.py"))
    assert proc.stdout.startswith("3 {'loss': ")  # rank 0 alone prints; check_replicated passed on both


# -- the pipeline over MPI ---------------------------------------------------------------

RUN = ["--train-size", "2000", "--steps", "40", "--eval-every", "20"]


def _summary(out: pathlib.Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _one(out: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return _ok(subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True,
                              text=True, env=env, check=False))


def _sha(out: pathlib.Path) -> str:
    return _summary(out)["params_sha256"]


@REAL
def test_pipeline_gives_one_sha256_on_every_layout(tmp_path):
    """The promise's table (docs/scaling.md), row by row: the default preset for 40 steps."""
    one = {t: tmp_path / f"one-t{t}" for t in (1, 2, 3)}
    for t, out in one.items():
        _one(out, *RUN, "--threads", str(t))
    two = tmp_path / "two"
    proc = _ok(mpirun(2, SCRIPT, "--distributed", "--out", str(two), *RUN))
    _ok(mpirun(2, SCRIPT, "--distributed", "--threads", "2", "--out", str(tmp_path / "two-t2"), *RUN))
    assert len({_sha(o) for o in [*one.values(), two, tmp_path / "two-t2"]}) == 1
    s2, s1 = _summary(two), _summary(one[1])
    assert s2["distributed"] == {"ranks": 2} and s1["distributed"] is None and s2["shards_per_batch"] == 2
    assert [s2[k] for k in ("test_accuracy", "val_accuracy")] == [s1[k] for k in ("test_accuracy", "val_accuracy")]
    assert (two / "metrics.jsonl").read_text().count("train_accuracy") == 2
    for a, b in zip(*(read_metrics(o / "metrics.jsonl") for o in (two, one[1]))):  # the global batches' metrics
        assert {k: v for k, v in a.items() if k != "elapsed"} == {k: v for k, v in b.items() if k != "elapsed"}
    assert proc.stdout.count("test accuracy") == 1  # rank 0 alone prints and writes
    assert "64 (2 shards)" in proc.stdout and "2 ranks (MPI: each runs whole shards)" in proc.stdout
    # 4 ranks need a finer cut; the same cut on one process gives the same bits (another cut: other bits)
    _ok(mpirun(4, SCRIPT, "--distributed", "--shard-rows", "16", "--out", str(tmp_path / "four"), *RUN))
    _one(tmp_path / "one-16", *RUN, "--shard-rows", "16")
    assert _sha(tmp_path / "four") == _sha(tmp_path / "one-16") != _sha(two)
    assert _summary(tmp_path / "four")["shards_per_batch"] == 4


@REAL
def test_pipeline_resumes_on_another_number_of_ranks_with_the_same_bits(tmp_path):
    full, a, b = tmp_path / "full", tmp_path / "a", tmp_path / "b"
    _one(full, *RUN)
    _ok(mpirun(2, SCRIPT, "--distributed", "--out", str(a), *RUN, "--stop-after", "20"))
    proc = _one(a, *RUN, "--resume")  # 2 ranks -> 1 process
    assert "resumed from" in proc.stdout and "(written by 2 ranks)" in proc.stdout
    _one(b, *RUN, "--stop-after", "20")
    _ok(mpirun(2, SCRIPT, "--distributed", "--out", str(b), *RUN, "--resume"))  # 1 process -> 2 ranks
    assert _sha(a) == _sha(b) == _sha(full)
    assert _summary(a)["distributed"] is None and _summary(b)["distributed"] == {"ranks": 2}


@REAL
def test_ctrl_c_under_mpiexec_stops_every_rank_after_one_step_and_saves_it(tmp_path):
    """Ctrl-C in a terminal signals mpiexec and every rank (one process group): every rank
    stops after the same step, rank 0's checkpoint holds it, and --resume ends with the
    bits of a run never stopped."""
    out, full = tmp_path / "o", tmp_path / "full"
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(SCRIPT), "--distributed", "--out", str(out),
           "--train-size", "2000", "--steps", "400", "--eval-every", "20"]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step     40"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    said = re.search(r"interrupted at step (\d+); checkpoint saved to (\S+), continue with --resume", rest)
    assert said is not None, rest + err
    assert fn.checkpoint.load(out / "checkpoint.npz")[1]["step"] == int(said[1]) >= 40
    _ok(mpirun(2, SCRIPT, "--distributed", "--out", str(out), "--train-size", "2000", "--steps", "400",
               "--eval-every", "20", "--resume", timeout=300))
    _one(full, "--train-size", "2000", "--steps", "400", "--eval-every", "20")
    assert _sha(out) == _sha(full)


@REAL
def test_deterministic_reduction_is_a_no_op_that_says_so(tmp_path):
    proc = _ok(mpirun(2, SCRIPT, "--distributed", "--deterministic-reduction", "--out", str(tmp_path / "d"),
                      "--train-size", "2000", "--steps", "4", "--eval-every", "4"))
    assert "--deterministic-reduction does nothing now" in proc.stderr


@REAL
@pytest.mark.parametrize("n, args, message", [
    (3, RUN, "--distributed on 3 ranks: a batch of 64 rows is cut into 2 shards, which 3 ranks cannot share as whole "
     "shards (the bits would then depend on the ranks): run on 1 or 2 ranks, or cut it so that they can: "
     "--shard-rows 22 gives 3 shards"),
    (4, [*RUN, "--shard-rows", "8"], "a batch of 16 rows is cut into 2 shards, which 4 ranks cannot share"),
    (2, [*RUN, "--resume"], "--resume: no checkpoint to resume"),
])
def test_pipeline_errors_end_every_rank(tmp_path, n, args, message):
    t0 = time.perf_counter()
    proc = mpirun(n, SCRIPT, "--distributed", "--out", str(tmp_path / "o"), *args, timeout=60)
    assert proc.returncode != 0 and time.perf_counter() - t0 < 30
    assert message in proc.stderr
    assert not (tmp_path / "o").exists()
