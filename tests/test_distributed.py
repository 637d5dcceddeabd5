"""fnnet.distributed: data-parallel training over MPI, and pipelines/mnist.py --distributed.

The first tests run everywhere, with stand-in communicators. The MPI tests launch
``mpiexec -n N python -m mpi4py ...``; they skip where mpi4py or mpiexec is absent
(``pip install 'fnnet[distributed]' mpich``), except under ``FNNET_REQUIRE_MPI=1``
(``nox -s distributed``), where an absent MPI is a failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import mpi_worker as w
import numpy as np
import pytest
from test_pipeline_mnist import REAL, SCRIPT

import fnnet as fn
from fnnet import optim
from fnnet.distributed import broadcast, check_replicated, data_parallel, mean_gradient, rank_rows
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
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import mnist
    finally:
        sys.path.remove(str(SCRIPT.parent))
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
            pytest.fail("FNNET_REQUIRE_MPI=1 but mpi4py or mpiexec is missing (pip install 'fnnet[distributed]' mpich)")
        pytest.skip("mpi4py or mpiexec is missing (pip install 'fnnet[distributed]' mpich)")
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
    _ok(mpirun(2, WORKER, "--out", str(tmp_path), "--optimizer", name, "--steps", "4", "--batch", "12", *flags))
    r0, r1 = _params(tmp_path / "rank0.npz"), _params(tmp_path / "rank1.npz")
    assert _same_bits(r0, r1)
    assert _same_bits(r0, reference(name, 2, 4, 12))


def test_three_ranks_deterministic_reduction_sums_in_rank_order(tmp_path):
    _ok(mpirun(3, WORKER, "--out", str(tmp_path), "--deterministic", "--steps", "3", "--batch", "12"))
    ranks = [_params(tmp_path / f"rank{r}.npz") for r in range(3)]
    assert _same_bits(ranks[0], ranks[1]) and _same_bits(ranks[0], ranks[2])
    assert _same_bits(ranks[0], reference("adam", 3, 3, 12))


def test_two_ranks_against_one_process_on_the_whole_batch(tmp_path):
    """Slicing the batch changes only the order of the sums: after 4 steps of SGD with
    momentum, float32, the params differ from one process's by at most 1e-6 of their
    largest magnitude (measured: a few 1e-8)."""
    _ok(mpirun(2, WORKER, "--out", str(tmp_path), "--optimizer", "sgd", "--steps", "4", "--batch", "12"))
    got, whole = _params(tmp_path / "rank0.npz"), reference("sgd", 2, 4, 12, shards=False)
    scale = max(np.abs(p).max() for p in whole)
    worst = max(np.abs(a - b).max() for a, b in zip(got, whole)) / scale
    assert worst <= 1e-6, worst


def test_an_error_on_one_rank_ends_every_rank_within_seconds(tmp_path):
    t0 = time.perf_counter()
    proc = mpirun(2, WORKER, "--out", str(tmp_path), "--fail-rank", "1", "--fail-step", "2", "--steps", "4",
                  timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "rank 1 fails on purpose at step 2" in proc.stderr
    assert elapsed < 20, f"mpiexec took {elapsed:.1f} s to end after rank 1 failed (rank 0 waits in Allreduce)"
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


@REAL
def test_pipeline_on_two_ranks_learns_logs_means_and_writes_once(tmp_path):
    two, det, one = tmp_path / "two", tmp_path / "det", tmp_path / "one"
    proc = _ok(mpirun(2, SCRIPT, "--distributed", "--out", str(two), *RUN))
    _ok(mpirun(2, SCRIPT, "--distributed", "--deterministic-reduction", "--out", str(det), *RUN))
    _one(one, *RUN)
    s2, sd, s1 = _summary(two), _summary(det), _summary(one)
    assert s2["distributed"] == {"ranks": 2, "reduction": "allreduce"} and s1["distributed"] is None
    assert sd["distributed"]["reduction"] == "deterministic"
    assert s2["params_sha256"] == sd["params_sha256"]  # two ranks: a + b == b + a, whichever reduction
    assert s2["params_sha256"] != s1["params_sha256"]  # other summation order than one BLAS product
    assert abs(s2["test_accuracy"] - s1["test_accuracy"]) <= 0.01 and s2["test_accuracy"] > 0.85
    rows2, rows1 = ([json.loads(r) for r in (o / "metrics.jsonl").read_text().splitlines()] for o in (two, one))
    assert [r["step"] for r in rows2] == [20, 40]
    for a, b in zip(rows2, rows1):  # the logged training metrics are the global batches' means
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=0.02)
        assert a["loss"] == pytest.approx(b["loss"], rel=0.02)
    assert proc.stdout.count("test accuracy") == 1  # rank 0 alone prints and writes
    assert "2 ranks (MPI, allreduce of the gradients)" in proc.stdout


@REAL
def test_pipeline_resumes_on_another_number_of_ranks(tmp_path):
    full, a, b = tmp_path / "full", tmp_path / "a", tmp_path / "b"
    _ok(mpirun(2, SCRIPT, "--distributed", "--out", str(full), *RUN))
    # 2 ranks -> 2 ranks: the same bits as without the stop
    _ok(mpirun(2, SCRIPT, "--distributed", "--out", str(a), *RUN, "--stop-after", "20"))
    _ok(mpirun(2, SCRIPT, "--distributed", "--out", str(a), *RUN, "--resume"))
    assert _summary(a)["params_sha256"] == _summary(full)["params_sha256"]
    # 2 ranks -> 1 process, and 1 process -> 2 ranks
    _ok(mpirun(2, SCRIPT, "--distributed", "--out", str(b), *RUN, "--stop-after", "20"))
    proc = _one(b, *RUN, "--resume")
    assert "resumed from" in proc.stdout and "(written by 2 ranks)" in proc.stdout
    assert _summary(b)["steps"] == 40 and _summary(b)["distributed"] is None
    c = tmp_path / "c"
    _one(c, *RUN, "--stop-after", "20")
    _ok(mpirun(2, SCRIPT, "--distributed", "--out", str(c), *RUN, "--resume"))
    assert _summary(c)["distributed"]["ranks"] == 2 and _summary(c)["test_accuracy"] > 0.85


@REAL
@pytest.mark.parametrize("n, args, message", [
    (3, RUN, "--distributed on 3 ranks: --batch-size 64 does not split into 3 equal slices"),
    (2, [*RUN, "--train-size", "1999"], "the last batch of each epoch has 15 images (1999 % 64)"),
    (2, [*RUN, "--resume"], "--resume: no checkpoint to resume"),
])
def test_pipeline_errors_end_every_rank(tmp_path, n, args, message):
    t0 = time.perf_counter()
    proc = mpirun(n, SCRIPT, "--distributed", "--out", str(tmp_path / "o"), *args, timeout=60)
    assert proc.returncode != 0 and time.perf_counter() - t0 < 30
    assert message in proc.stderr
    assert not (tmp_path / "o").exists()
