"""The thread budget: cores counted as the process may use them, BLAS held to its share
while fnnet's threads run and given back afterwards, and bits that depend on neither."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

import fnnet as fn
from fnnet import optim, threads

BLAS = ThreadpoolController().select(user_api="blas")


def blas_threads() -> list[int]:
    return [lib.num_threads for lib in BLAS.lib_controllers]


@pytest.fixture
def blas_at_2():
    """BLAS at 2 threads (the nox sessions start it at 1), as numpy's OpenBLAS starts on 2 cores."""
    assert BLAS.lib_controllers, "numpy's BLAS was not found by threadpoolctl"
    with BLAS.limit(limits=2):
        assert blas_threads() == [2] * len(BLAS.lib_controllers)
        yield


# -- counting cores ----------------------------------------------------------------------------


def _cgroup(tmp_path, lines, files):
    (tmp_path / "proc").write_text("".join(f"{line}\n" for line in lines))
    for rel, text in files.items():
        path = tmp_path / "fs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return threads.cgroup_cores(tmp_path / "proc", tmp_path / "fs")


@pytest.mark.parametrize("lines, files, want", [
    # cgroup v2: the tightest quota on the path from the process's group to the root binds
    (["0::/"], {"cpu.max": "150000 100000\n"}, 1.5),
    (["0::/"], {"cpu.max": "max 100000\n"}, None),
    (["0::/a/b"], {"cpu.max": "max 100000", "a/cpu.max": "400000 100000", "a/b/cpu.max": "max 100000"}, 4.0),
    (["0::/a/b"], {"a/cpu.max": "800000 100000", "a/b/cpu.max": "200000 100000"}, 2.0),
    (["0::/"], {}, None),  # no file: no quota
    (["0::/"], {"cpu.max": "garbage"}, None),
    # cgroup v1: the cpu controller's mount, quota -1 is none
    (["2:cpuacct:/", "1:cpu:/"], {"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3.0),
    (["1:cpu,cpuacct:/job"], {"cpu,cpuacct/job/cpu.cfs_quota_us": "-1", "cpu,cpuacct/job/cpu.cfs_period_us": "100000",
                              "cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
     0.5),
    (["4:memory:/x"], {"memory/cpu.cfs_quota_us": "100000"}, None),  # no cpu controller
])
def test_cgroup_quota_is_read_from_v1_and_v2(tmp_path, lines, files, want):
    assert _cgroup(tmp_path, lines, files) == want


def test_cgroup_quota_without_cgroups(tmp_path):
    assert threads.cgroup_cores(tmp_path / "absent", tmp_path) is None


@pytest.mark.parametrize("affinity, quota, want", [
    (64, None, 64), (64, 3.5, 3), (2, 8.0, 2), (8, 0.5, 1), (1, None, 1),
])
def test_cores_are_the_affinity_capped_by_the_quota(monkeypatch, affinity, quota, want):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    monkeypatch.setattr(threads, "_quota", lambda: quota)
    assert threads.cores() == want
    step = fn.train_step(fn.serial(fn.flatten(), fn.dense(10)), fn.softmax_cross_entropy, optim.sgd(0.1))
    assert fn.jit(step).threads == want  # the default thread count follows
    assert fn.jit(step, threads=3).threads == 3


# -- BLAS's share --------------------------------------------------------------------------------


def test_blas_share_caps_and_restores(blas_at_2):
    with threads.blas_share(2, cores_=2) as cap:
        assert cap == 1 and blas_threads() == [1] * len(BLAS.lib_controllers)
        with threads.blas_share(2, cores_=8) as inner:  # nested: never raised above what it has now
            assert inner == 4 and blas_threads() == [1] * len(BLAS.lib_controllers)
        assert blas_threads() == [1] * len(BLAS.lib_controllers)  # the outer call is still inside
    assert blas_threads() == [2] * len(BLAS.lib_controllers)
    with threads.blas_share(1, cores_=2) as cap:  # one thread of fnnet's, work of unknown size: BLAS keeps its cores
        assert cap == 0 and blas_threads() == [2] * len(BLAS.lib_controllers)
    with threads.blas_share(1, product=threads.BLAS_MIN_PRODUCT) as cap:  # large products: BLAS keeps its cores
        assert cap == 0 and blas_threads() == [2] * len(BLAS.lib_controllers)
    with threads.blas_share(1, product=threads.BLAS_MIN_PRODUCT - 1) as cap:  # small ones: one BLAS thread
        assert cap == 1 and blas_threads() == [1] * len(BLAS.lib_controllers)
    with threads.blas_share(2, cores_=64, product=threads.BLAS_MIN_PRODUCT - 1) as cap:  # beside shards too
        assert cap == 1 and blas_threads() == [1] * len(BLAS.lib_controllers)
    assert blas_threads() == [2] * len(BLAS.lib_controllers)
    with threads.blas_share(4, cores_=64) as cap:  # 64 cores, 4 shards: 16 BLAS threads each, at most what it had
        assert cap == 16 and blas_threads() == [2] * len(BLAS.lib_controllers)


def test_blas_share_restores_after_an_error(blas_at_2):
    with pytest.raises(RuntimeError, match="boom"), threads.blas_share(2, cores_=2):
        raise RuntimeError("boom")
    assert blas_threads() == [2] * len(BLAS.lib_controllers)


class FakeLib:
    """A BLAS library controller as threadpoolctl gives it (num_threads, set_num_threads)."""

    def __init__(self, n):
        self.num_threads = n

    def set_num_threads(self, n):
        self.num_threads = n


def test_overlapping_calls_from_two_threads_restore_the_setting_once(monkeypatch):
    # A enters, B enters, A leaves (B still inside: still capped), B leaves (restored). (Fake
    # libraries: OpenBLAS 0.3.31 ignores a non-main thread's setting once the main thread set one.)
    libs = [FakeLib(8), FakeLib(2)]
    monkeypatch.setattr(threads._BLAS, "libs", libs)
    monkeypatch.setattr(threads._BLAS, "counts", [lambda lib=lib: lib.num_threads for lib in libs])
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with threads.blas_share(2, cores_=8):
            seen["A inside"] = [lib.num_threads for lib in libs]
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with threads.blas_share(4, cores_=8):
            b_in.set()
            a_out.wait(5)
            seen["after A left"] = [lib.num_threads for lib in libs]

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert seen == {"A inside": [4, 2], "after A left": [2, 2]}  # 8 // 2, then 8 // 4; 2 is never raised
    assert [lib.num_threads for lib in libs] == [8, 2]


def test_jit_and_predict_give_blas_back_and_hold_it_while_their_threads_run(monkeypatch, blas_at_2):
    seen = []
    real = threads.blas_share

    def recording(n, cores_=None, *, product=None, bound=None):
        seen.append((n, blas_threads()))
        return real(n, cores_, product=product, bound=bound)

    import fnnet.train._jit
    import fnnet.train._predict

    monkeypatch.setattr(fnnet.train._jit, "blas_share", recording)
    monkeypatch.setattr(fnnet.train._predict, "blas_share", recording)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    model = fn.serial(fn.conv2d(4, 3), fn.relu(), fn.flatten(), fn.dense(10))
    params, _ = model.init(fn.random.key(0), (1, 12, 12))
    opt = optim.sgd(0.1)
    x, y = np.random.default_rng(0).random((64, 1, 12, 12), dtype=np.float32), np.arange(64) % 10
    inside = []
    jitted = fn.jit(fn.train_step(model, _spy_loss(inside), opt, rows_per_shard=16), threads=2)
    jitted(fn.TrainState.create(params, opt), (x, y))
    assert seen == [(2, [2] * len(BLAS.lib_controllers))]  # 4 shards on 2 threads
    assert inside and all(n == [1] * len(BLAS.lib_controllers) for n in inside)  # held while the shards ran
    assert blas_threads() == [2] * len(BLAS.lib_controllers)  # and given back
    fn.predict(model, params, x, batch_size=16, threads=2)
    assert seen[-1][0] == 2 and blas_threads() == [2] * len(BLAS.lib_controllers)
    seen.clear()
    inside.clear()
    fn.jit(fn.train_step(model, _spy_loss(inside), opt, rows_per_shard=16), threads=1)(
        fn.TrainState.create(params, opt), (x, y))
    assert seen == [(1, [2] * len(BLAS.lib_controllers))]  # one thread, products of at most 2^18 multiply-adds:
    assert inside and all(n == [2] * len(BLAS.lib_controllers) for n in inside)  # OpenBLAS keeps them on one thread
    assert blas_threads() == [2] * len(BLAS.lib_controllers)


@pytest.mark.parametrize("width, want", [(64, 2), (128, 1), (4095, 1), (4096, 2)])
@pytest.mark.parametrize("runner", ["step", "jit", "jit 1 thread", "predict"])
def test_one_thread_gives_blas_its_threads_only_for_large_products(monkeypatch, blas_at_2, runner, width, want):
    # one shard of 16 rows x 256 inputs x width outputs: 64 gives 2^18 multiply-adds (OpenBLAS's own one-thread
    # products: nothing to cap), 128 and 4095 between the bounds (capped), 4096 2^24 (BLAS keeps its threads)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    model = fn.serial(fn.flatten(), fn.dense(width), fn.relu(), fn.dense(10))
    params, _ = model.init(fn.random.key(0), (1, 16, 16))
    x, y = np.random.default_rng(0).random((16, 1, 16, 16), dtype=np.float32), np.arange(16) % 10
    assert _blas_inside(runner, model, params, x, y) == [[want] * len(BLAS.lib_controllers)]
    assert blas_threads() == [2] * len(BLAS.lib_controllers)  # given back


@pytest.mark.parametrize("runner", ["step", "jit 1 thread", "predict"])
def test_a_conv_whose_products_over_its_pixels_pass_2_18_is_capped_on_one_thread(monkeypatch, blas_at_2, runner):
    # 4 rows x 4,608 weights is 18,432 multiply-adds by the rows-times-leaf estimate, but the conv's product runs
    # over every output pixel: 256 x 4,608 per sample, above OpenBLAS's one-thread size; uncapped, BLAS would run
    # it on 2 threads here and on 1 beside jit's shard threads (bits that depend on BLAS's threads, under a
    # BLAS whose sums do)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    model = fn.serial(fn.conv2d(32, 3, padding="same"), fn.relu(), fn.global_avg_pool2d(), fn.dense(10))
    params, _ = model.init(fn.random.key(0), (16, 16, 16))
    x, y = np.random.default_rng(0).random((4, 16, 16, 16), dtype=np.float32), np.arange(4)
    assert threads.largest_product(params, 4) <= threads.BLAS_ONE_THREAD_PRODUCT < threads.product_bound(params, 4, 256)
    assert _blas_inside(runner, model, params, x, y) == [[1] * len(BLAS.lib_controllers)]
    assert blas_threads() == [2] * len(BLAS.lib_controllers)


def _blas_inside(runner, model, params, x, y):
    """BLAS's thread counts seen inside one pass of ``runner`` ("step", "jit", "jit 1 thread", "predict")
    over the whole batch as one shard or chunk."""
    inside = []
    if runner == "predict":
        def fwd(v, out):
            inside.append(blas_threads())
            return v

        spy = fn.serial(model, fn.layers.elementwise("spy", fwd, lambda v, dy, out: dy))
        fn.predict(spy, {"serial_0": params, "spy_1": {}}, x, batch_size=x.shape[0])
    else:
        step = fn.train_step(model, _spy_loss(inside), optim.sgd(0.1), rows_per_shard=None)
        step = step if runner == "step" else fn.jit(step, threads=1 if "1 thread" in runner else None)
        step(fn.TrainState.create(params, optim.sgd(0.1)), (x, y))
    return inside


def _spy_loss(record):
    def loss(logits, labels):
        record.append(blas_threads())
        return fn.softmax_cross_entropy(logits, labels)

    return loss


# -- the bits depend on neither the cores nor BLAS's threads -------------------------------------


def _wide_net():
    # products large enough for OpenBLAS to use a second thread (64 x 288 x 256), which fnnet holds to one
    return fn.serial(fn.conv2d(8, 3, padding="same"), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(256),
                     fn.relu(), fn.dense(10))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_bits_do_not_depend_on_cores_threads_or_blas(monkeypatch, dtype):
    model, opt = _wide_net(), optim.adam(1e-3)
    params, _ = model.init(fn.random.key(0), (1, 12, 12), dtype=dtype)
    step = fn.train_step(model, fn.softmax_cross_entropy, opt, rows_per_shard=16)  # 64 rows: 4 shards

    def train(f):
        s, rng = fn.TrainState.create(params, opt), np.random.default_rng(0)
        for _ in range(3):
            x = rng.random((64, 1, 12, 12)).astype(dtype)
            s, _ = f(s, (x, rng.integers(0, 10, 64)))
        return fn.tree_leaves(s.params)

    want = train(step)
    runs = {}
    for blas in (1, 2):
        with BLAS.limit(limits=blas):
            runs[f"step, BLAS {blas}"] = train(step)
            for t in (1, 2, 4):
                runs[f"jit {t} threads, BLAS {blas}"] = train(fn.jit(step, threads=t))
            monkeypatch.setattr(threads, "cores", lambda: 64)  # 64 cores: 4 shard threads, BLAS 1 each
            runs[f"jit on 64 cores, BLAS {blas}"] = train(fn.jit(step))
            monkeypatch.undo()
    for label, got in runs.items():
        assert all(a.tobytes() == b.tobytes() for a, b in zip(want, got)), label


def test_the_old_name_of_cores_warns():
    with pytest.warns(DeprecationWarning, match="fnnet.train.cores is fnnet.threads.cores"):
        assert fn.train.cores is threads.cores
