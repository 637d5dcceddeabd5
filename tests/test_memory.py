"""Memory is checked before it is taken: a step or predict whose buffers exceed what the
process may use is refused with an OutOfMemoryError that says what to do, before any
buffer is mapped (a batch too large was killed by the kernel mid-pass)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fnnet as fn
from fnnet import memory


def _tutorial():
    model = fn.serial(fn.conv2d(1, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(), fn.dense(64), fn.relu(),
                      fn.dense(10))
    params, _ = model.init(fn.random.key(0), (1, 28, 28))
    return model, params


def test_available_reads_what_the_process_may_take():
    free = memory.available()
    assert free is None or 0 <= free < 1 << 50


@pytest.mark.parametrize("runner", ["step", "jit", "predict"])
def test_a_pass_larger_than_what_is_available_is_refused_before_its_buffers_are_made(monkeypatch, runner):
    model, params = _tutorial()
    opt = fn.optim.sgd(0.1)
    x, y = np.zeros((64, 1, 28, 28), np.float32), np.zeros(64, np.int64)
    monkeypatch.setattr(memory, "available", lambda: 1 << 20)  # 1 MiB left: less than 64 rows' buffers
    if runner == "predict":
        with pytest.raises(fn.OutOfMemoryError, match=r"predict on inputs of shape \(64, 1, 28, 28\) needs .* MiB "
                                                      r"of buffers, and this process may take 1.0 MiB more: predict "
                                                      r"in smaller chunks"):
            fn.predict(model, params, x, batch_size=64)
    else:
        step = fn.train_step(model, fn.softmax_cross_entropy, opt, rows_per_shard=None)
        step = fn.jit(step) if runner == "jit" else step
        with pytest.raises(fn.OutOfMemoryError, match=r"a training step on a batch of shape \(64, 1, 28, 28\) needs "
                                                      r".* MiB of buffers.*train on smaller batches"):
            step(fn.TrainState.create(params, opt), (x, y))
    monkeypatch.setattr(memory, "available", lambda: None)  # (nothing known: nothing refused)
    assert fn.predict(model, params, x[:4]).shape == (4, 10)


def test_an_address_space_limit_refuses_a_huge_broadcast_batch_instead_of_being_killed(tmp_path):
    # the audit's case: 10 million rows of one broadcast image, 64 shards of 3.5 GiB buffers each
    code = textwrap.dedent("""
        import resource, numpy as np, fnnet as fn
        vm = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize"))) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
        model = fn.serial(fn.conv2d(1, 3), fn.relu(), fn.flatten(), fn.dense(10))
        params, _ = model.init(fn.random.key(0), (1, 28, 28))
        opt = fn.optim.sgd(0.1)
        x = np.broadcast_to(np.zeros((1, 1, 28, 28), np.float32), (10_000_000, 1, 28, 28))
        try:
            fn.jit(fn.train_step(model, fn.softmax_cross_entropy, opt))(fn.TrainState.create(params, opt),
                                                                        (x, np.zeros(10_000_000, np.int64)))
        except fn.OutOfMemoryError as exc:
            print("refused:", exc)
    """)
    # (run outside the checkout: there the source tree, without compiled kernels, would shadow the install)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: a training step on a batch of shape (10000000, 1, 28, 28) needs" in proc.stdout
