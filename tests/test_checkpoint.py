"""Checkpoints: bit-exact round trips, atomic writes, and clear errors for damaged files."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import fnnet as fn
from fnnet import checkpoint

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_, np.complex128]


def sample_tree(rng):
    leaves = {np.dtype(d).name: (rng.standard_normal((3, 2)) * 100).astype(d) for d in DTYPES}
    return {"leaves": leaves, "scalar": np.array(7, np.int64), "empty": np.zeros((0, 4)), "nest": ({}, None)}


def test_round_trip_is_bit_exact_for_every_dtype(tmp_path, rng):
    tree = fn.freeze(sample_tree(rng))
    sha = checkpoint.save(tmp_path / "c.npz", tree, {"step": 3, "note": "hi"})
    back, meta = checkpoint.load(tmp_path / "c.npz", like=tree)
    assert meta == {"step": 3, "note": "hi"}
    assert fn.tree_structure(back) == fn.tree_structure(tree)
    for a, b in zip(fn.tree_leaves(back), fn.tree_leaves(tree)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        assert not a.flags.writeable
    assert sha == checkpoint.digest(tree) == checkpoint.digest(back)


def test_train_state_round_trip(tmp_path):
    model = fn.serial(fn.dense(3), fn.relu(), fn.dense(2))
    params, _ = model.init(fn.random.key(0), (4,))
    opt = fn.optim.adam(1e-3)
    state = fn.TrainState.create(params, opt)
    tree = {"params": state.params, "opt_state": state.opt_state}
    checkpoint.save(tmp_path / "s.npz", tree)
    back, _ = checkpoint.load(tmp_path / "s.npz", like=tree)
    assert checkpoint.digest(back) == checkpoint.digest(tree)


def test_the_file_holds_no_pickle(tmp_path, rng):
    checkpoint.save(tmp_path / "c.npz", sample_tree(rng))
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_truncated_file_is_a_clear_error(tmp_path, rng):
    p = tmp_path / "c.npz"
    checkpoint.save(p, sample_tree(rng))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(fn.DataError, match=r"c.npz: truncated, malformed or corrupt checkpoint"):
        checkpoint.load(p)


def test_tampered_leaf_fails_the_sha256(tmp_path):
    p = tmp_path / "c.npz"
    checkpoint.save(p, {"w": np.arange(4.0)})
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["leaf_0"] = arrays["leaf_0"] + 1
    np.savez(p, **arrays)
    with pytest.raises(fn.DataError, match="sha256 mismatch"):
        checkpoint.load(p)


def test_structure_shape_and_dtype_mismatch_name_the_path(tmp_path):
    p = tmp_path / "c.npz"
    checkpoint.save(p, {"a": {"w": np.zeros(3)}, "b": np.zeros(2)})
    want = r"does not match the expected tree: at a expected a mapping with keys \[.v.\], got a mapping with keys"
    with pytest.raises(fn.TreeMismatchError, match=want):
        checkpoint.load(p, like={"a": {"v": np.zeros(3)}, "b": np.zeros(2)})
    with pytest.raises(fn.TreeMismatchError, match=r"at a/w expected float64\[4\], got float64\[3\]"):
        checkpoint.load(p, like={"a": {"w": np.zeros(4)}, "b": np.zeros(2)})
    with pytest.raises(fn.TreeMismatchError, match=r"at b expected float32\[2\], got float64\[2\]"):
        checkpoint.load(p, like={"a": {"w": np.zeros(3)}, "b": np.zeros(2, np.float32)})


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    p = tmp_path / "c.npz"
    checkpoint.save(p, {"w": np.arange(3.0)}, {"step": 1})
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(p, {"w": np.arange(5.0)}, {"step": 2})
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["c.npz"], "no temporary file left behind"
    _, meta = checkpoint.load(p)
    assert meta == {"step": 1}


def test_other_files_and_bad_leaves(tmp_path):
    with pytest.raises(fn.DataError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(fn.DataError, match="truncated, malformed or corrupt checkpoint"):
        checkpoint.load(tmp_path / "plain.npz")
    with zipfile.ZipFile(tmp_path / "zip.npz", "w") as z:
        z.writestr("x.txt", "hello")
    with pytest.raises(fn.DataError):
        checkpoint.load(tmp_path / "zip.npz")
    with pytest.raises(TypeError, match=r"leaf at a/0 is a str"):
        checkpoint.save(tmp_path / "bad.npz", {"a": ("text",)})
    with pytest.raises(TypeError, match="mapping keys must be strings"):
        checkpoint.save(tmp_path / "bad.npz", {1: np.zeros(1)})
