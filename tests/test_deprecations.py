"""Every renamed public name still works, warns with its new name, and is the new object."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

import fnnet as fn
from fnnet import optim


def _train_step_shards():
    return fn.train_step(fn.serial(fn.flatten(), fn.dense(3)), fn.softmax_cross_entropy, optim.sgd(0.1), shards=5)


CASES = {
    "train_step(shards=)": (_train_step_shards, r"train_step\(shards=\) is train_step\(rows_per_shard=\)",
                            lambda step: step.rows_per_shard == 5),
    "Step.shards": (lambda: fn.train_step(fn.serial(fn.flatten(), fn.dense(3)), fn.softmax_cross_entropy,
                                          optim.sgd(0.1), rows_per_shard=7).shards,
                    "Step.shards is Step.rows_per_shard", lambda got: got == 7),
    "fnnet.distributed.shard": (lambda: fn.distributed.shard, "fnnet.distributed.shard is fnnet.distributed.rank_rows",
                                lambda got: got is fn.distributed.rank_rows),
    "fnnet.train.shard_rows": (lambda: fn.train.shard_rows, "fnnet.train.shard_rows is fnnet.train.least_shard_rows",
                               lambda got: got is fn.train.least_shard_rows),
    "fnnet.train.cut(step, ...)": (
        lambda: fn.train.cut(fn.train_step(fn.serial(fn.flatten(), fn.dense(3)), fn.softmax_cross_entropy,
                                           optim.sgd(0.1), rows_per_shard=4), None, (10, 2), np.dtype(np.float32)),
        r"fnnet.train.cut\(step, params, x_shape, dtype\) is step.cut", lambda got: got == (4, 3, 3)),
    "fnnet.train.cores": (lambda: fn.train.cores, "fnnet.train.cores is fnnet.threads.cores",
                          lambda got: got is fn.threads.cores),
}


@pytest.mark.parametrize("name", CASES)
def test_an_old_name_warns_and_is_the_new_one(name):
    old, message, same = CASES[name]
    with pytest.warns(DeprecationWarning, match=message):
        got = old()
    assert same(got)


def test_the_package_itself_imports_without_a_warning(tmp_path):
    import subprocess

    # (from another folder: the fnnet under test, not the source tree's, is the one imported)
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", "import fnnet, fnnet.train"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr


def test_the_old_elementwise_flag_warns_and_the_pair_stays_plain():
    base = optim.sgd(0.1)
    with pytest.warns(DeprecationWarning, match=r"GradientTransformation\(elementwise=\) is gone"):
        t = optim.GradientTransformation(base.init, base.update, elementwise=True)
    assert tuple(t) == (base.init, base.update) and t._fields == ("init", "update")


@pytest.mark.parametrize("old", ["fnnet.combinators", "fnnet.typing.InitFn"])
def test_the_shims_of_0_2_0_are_gone(old):
    # (deprecated in 0.2.0, removed after 0.3.0: docs/migrating.md says what replaced them)
    module, _, name = old.rpartition(".") if old.endswith("Fn") else (old, "", "")
    if name:
        with pytest.raises(AttributeError, match=name):
            getattr(importlib.import_module(module), name)
    else:
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(module)
