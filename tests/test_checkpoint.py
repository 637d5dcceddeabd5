"""Checkpoints, .npz and .safetensors: bit-exact round trips, atomic writes, and clear errors
for damaged files; safetensors files as the safetensors package reads them (nox -s interop)."""

from __future__ import annotations

import json
import pathlib
import zipfile

import numpy as np
import pytest

import fnnet as fn
from fnnet import checkpoint, optim

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_, np.complex128]


FORMATS = ["npz", "safetensors"]


def sample_tree(rng, fmt="npz"):
    dtypes = [d for d in DTYPES if fmt == "npz" or d is not np.complex128]  # (safetensors has no complex)
    leaves = {np.dtype(d).name: (rng.standard_normal((3, 2)) * 100).astype(d) for d in dtypes}
    return {"leaves": leaves, "scalar": np.array(7, np.int64), "empty": np.zeros((0, 4)), "nest": ({}, None),
            "list": [np.ones(2, np.float32), (np.arange(3),)]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_bit_exact_for_every_dtype(tmp_path, rng, fmt):
    tree = fn.freeze(sample_tree(rng, fmt))
    sha = checkpoint.save(tmp_path / f"c.{fmt}", tree, {"step": 3, "note": "hi"})
    back, meta = checkpoint.load(tmp_path / f"c.{fmt}", like=tree)
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


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cut", [100, 1], ids=["100-bytes", "1-byte"])
def test_truncated_file_is_a_clear_error(tmp_path, rng, fmt, cut):
    p = tmp_path / f"c.{fmt}"
    checkpoint.save(p, sample_tree(rng, fmt))
    p.write_bytes(p.read_bytes()[:-cut])
    with pytest.raises(fn.DataError, match=rf"c.{fmt}: truncated, malformed or corrupt"):
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


@pytest.mark.parametrize("fmt", FORMATS)
def test_structure_shape_and_dtype_mismatch_name_the_path(tmp_path, fmt):
    p = tmp_path / f"c.{fmt}"
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


# -- safetensors -----------------------------------------------------------------------------


def _model_tree():
    model = fn.serial(fn.conv2d(3, 3), fn.batch_norm(), fn.relu(), fn.flatten(), fn.dense(2))
    params, _ = model.init(fn.random.key(0), (1, 5, 5))
    return {"params": params, "model_state": model.init_state(params)}


def _header(p):
    n = int.from_bytes(p.read_bytes()[:8], "little")
    return json.loads(p.read_bytes()[8:8 + n])


def test_safetensors_names_tensors_by_their_paths_and_keeps_the_structure_in_its_metadata(tmp_path):
    p = tmp_path / "m.safetensors"
    sha = checkpoint.save(p, _model_tree(), {"step": 7})
    header = _header(p)
    meta = header.pop("__metadata__")
    assert sorted(header) == ["model_state.batch_norm_1.mean", "model_state.batch_norm_1.var",
                              "params.batch_norm_1.scale", "params.batch_norm_1.shift", "params.conv2d_0.b",
                              "params.conv2d_0.w", "params.dense_4.b", "params.dense_4.w"]
    assert header["params.conv2d_0.w"]["shape"] == [3, 1, 3, 3] and header["params.conv2d_0.w"]["dtype"] == "F32"
    assert meta["sha256"] == sha and json.loads(meta["metadata"]) == {"step": 7}
    assert json.loads(meta["structure"]) and meta["format"] == checkpoint.FORMAT
    tensors, strings = checkpoint.read_tensors(p)
    assert strings == meta and tensors["params.dense_4.w"].shape == (27, 2)


@pytest.mark.parametrize("where", ["data", "metadata", "header"])
def test_a_flipped_byte_in_a_safetensors_file_is_refused(tmp_path, where):
    p = tmp_path / "m.safetensors"
    checkpoint.save(p, _model_tree(), {"step": 7})
    raw = bytearray(p.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    text = raw[8:8 + n].decode()
    at = {"data": len(raw) - 5, "metadata": 8 + text.index('\\"step\\": 7') + 9,
          "header": 8 + text.index("[3,1,3,3]") + 1}[where]
    raw[at] ^= 0x04  # (a digit 7 -> 3, a 3 -> 7: still well-formed JSON)
    p.write_bytes(bytes(raw))
    with pytest.raises(fn.DataError, match=r"m.safetensors: .*(sha256 mismatch|does not fit|malformed)"):
        checkpoint.load(p)


def test_a_safetensors_file_of_another_structure_or_writer_is_refused(tmp_path):
    p = tmp_path / "m.safetensors"
    tree = _model_tree()
    checkpoint.save(p, tree)
    other = {"params": tree["params"], "model_state": {}}
    with pytest.raises(fn.TreeMismatchError, match="m.safetensors: the checkpoint does not match"):
        checkpoint.load(p, like=other)
    checkpoint.write_tensors(tmp_path / "plain.safetensors", {"w": np.zeros(2, np.float32)})
    with pytest.raises(fn.DataError, match="without fnnet's structure.*read_tensors"):
        checkpoint.load(tmp_path / "plain.safetensors")
    with pytest.raises(fn.DataError, match="no such file"):
        checkpoint.read_tensors(tmp_path / "missing.safetensors")


def test_what_safetensors_cannot_hold_is_refused_before_a_file_is_written(tmp_path):
    p = tmp_path / "m.safetensors"
    checkpoint.save(p, {"w": np.ones(2)})
    before = p.read_bytes()
    with pytest.raises(fn.InvalidTypeError, match=r"m.safetensors: tensor 'z' is complex128"):
        checkpoint.save(p, {"w": np.ones(2), "z": np.ones(2, np.complex128)})
    with pytest.raises(fn.InvalidValueError, match=r"two leaves would both be named 'a.b'"):
        checkpoint.save(p, {"a": {"b": np.ones(1)}, "a.b": np.ones(1)})
    with pytest.raises(fn.InvalidTypeError, match="metadata maps strings to strings"):
        checkpoint.write_tensors(p, {"w": np.ones(1)}, {"step": 3})
    assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_a_save_that_load_could_not_read_never_replaces_the_old_file(tmp_path, fmt):
    p = tmp_path / f"ck.{fmt}"
    checkpoint.save(p, {"w": np.ones(2)}, {"step": 1})
    before = p.read_bytes()
    if fmt == "safetensors":  # the header's own key, as a tree key and as a tensor name
        with pytest.raises(fn.InvalidValueError, match=r"ck.safetensors: the tensor name '__metadata__' is the "
                                                       r"safetensors header's own key"):
            checkpoint.save(p, {"__metadata__": np.ones(2)})
        with pytest.raises(fn.InvalidValueError, match="'__metadata__' is the safetensors header's own key"):
            checkpoint.write_tensors(p, {"__metadata__": np.ones(2)})
    with pytest.raises(fn.InvalidTypeError, match=r"metadata has the key 1; its keys must be strings"):
        checkpoint.save(p, {"w": np.ones(2)}, {1: "one"})
    with pytest.raises(fn.InvalidTypeError, match=r"metadata\['a'\]\[0\] has the key 2"):
        checkpoint.save(p, {"w": np.ones(2)}, {"a": [{2: 0}]})
    assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == [p.name]
    assert checkpoint.load(p)[1] == {"step": 1}


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_big_endian_leaves_load_back_with_the_same_values(tmp_path, fmt):
    tree = {"w": np.arange(4, dtype=">f4"), "i": np.arange(3, dtype=">i8")}
    sha = checkpoint.save(tmp_path / f"be.{fmt}", tree)
    back, _ = checkpoint.load(tmp_path / f"be.{fmt}")
    assert checkpoint.digest(back) == sha
    for k in tree:
        assert np.array_equal(back[k], tree[k])
    # npz keeps the byte order; safetensors holds little-endian data only
    assert back["w"].dtype == (np.dtype(">f4") if fmt == "npz" else np.dtype("<f4"))


def test_a_check_that_fails_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def refuse(tmp):
        assert tmp.read_bytes() == b"new" and tmp != p
        raise fn.InvalidValueError("no")

    with pytest.raises(fn.InvalidValueError, match="no"):
        checkpoint.atomic_write(p, lambda f: f.write(b"new"), check=refuse)
    assert p.read_bytes() == b"old" and [q.name for q in tmp_path.iterdir()] == ["f.bin"]


def test_a_path_under_a_file_is_named(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(fn.InvalidValueError, match=r"file.txt/sub/ck.npz: cannot be written, .*file.txt is a file, "
                                                   r"not a folder"):
        checkpoint.save(tmp_path / "file.txt" / "sub" / "ck.npz", {"w": np.ones(1)})


def test_crafted_safetensors_headers_are_errors_not_allocations(tmp_path):
    p = tmp_path / "m.safetensors"

    def craft(header: dict, data: bytes = b"") -> None:
        raw = json.dumps(header).encode()
        p.write_bytes(len(raw).to_bytes(8, "little") + raw + data)

    cases = [
        ({"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 8]}}, b"\0" * 8, "does not fit"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "a gap or an overlap"),
        ({"w": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "a bad entry"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9, "5 bytes after the last tensor"),
    ]
    for header, data, match in cases:
        craft(header, data)
        with pytest.raises(fn.DataError, match=match):
            checkpoint.read_tensors(p)
    p.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(fn.DataError, match="a header of 1099511627776 bytes"):
        checkpoint.read_tensors(p)


@pytest.mark.interop
def test_a_safetensors_file_fnnet_writes_loads_in_safetensors_numpy_and_torch(tmp_path, rng):
    import safetensors.numpy as st_numpy
    import safetensors.torch as st_torch

    tree = fn.freeze(sample_tree(rng, "safetensors"))
    p = tmp_path / "c.safetensors"
    checkpoint.save(p, tree, {"step": 3})
    leaves = {".".join(map(str, path)) or "<root>": leaf for path, leaf in fn.tree.tree_leaves_with_path(tree)}
    numpy_side, torch_side = st_numpy.load_file(p), st_torch.load_file(p)
    assert sorted(numpy_side) == sorted(torch_side) == sorted(leaves)
    for name, leaf in leaves.items():
        assert numpy_side[name].dtype == leaf.dtype and numpy_side[name].tobytes() == leaf.tobytes(), name
        if leaf.dtype != np.uint64 or leaf.size == 0:  # (torch reads U64; its .numpy() may not)
            t = torch_side[name].numpy()
            assert t.shape == leaf.shape and t.tobytes() == leaf.tobytes(), name
    st_numpy.save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, tmp_path / "theirs.safetensors",
                       metadata={"by": "them"})
    tensors, meta = checkpoint.read_tensors(tmp_path / "theirs.safetensors")
    assert meta == {"by": "them"} and tensors["a"].tolist() == [[0, 1, 2], [3, 4, 5]]


# -- a checkpoint of the release before -----------------------------------------------------------

FIXTURES = pathlib.Path(__file__).parent / "fixtures"  # written by fnnet 0.2.0 (two Adam steps, float64)


def _fixture_batches() -> list:
    """The three batches the fixture was trained on (two) and stepped on (the third)."""
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((6, 8, 4, 4)), rng.integers(0, 3, 6)) for _ in range(3)]


def _resume_0_2_0(suffix: str, algorithm: str):
    model = fn.serial(fn.conv2d(8, 3, padding=1, algorithm=algorithm), fn.relu(), fn.max_pool2d(2), fn.flatten(),
                      fn.dense(3))
    opt = optim.adam(1e-2)
    params, _ = model.init(fn.random.key(1), (8, 4, 4), dtype=np.float64)
    like = fn.TrainState.create(params, opt, model)
    tree, meta = checkpoint.load(FIXTURES / f"v0.2.0-state.{suffix}",
                                 like={"params": like.params, "opt_state": like.opt_state, "step": np.asarray(0)})
    state = fn.TrainState(fn.tree.freeze(tree["params"]), fn.tree.freeze(tree["opt_state"]), int(tree["step"]))
    state, _ = fn.train_step(model, fn.softmax_cross_entropy, opt)(state, _fixture_batches()[2])
    return state.params, meta


_HASWELL = "4234b69a68b8d429b7a700a0dd78b262902374b56636e4a01327f23b6ce7fa34"  # (the fixture's own record)
NEXT_0_2_0 = {  # the params' digest after the fixture's next step by fnnet 0.2.0: (OpenBLAS kernel, fnnet's kernels)
    ("Haswell", "pythran"): _HASWELL, ("Haswell", "numpy"): _HASWELL,
    ("SkylakeX", "pythran"): "246f615296ff76556151660bb716e74b041dcc5cf3e07736a80d7281eff2d224",  # (nothing set)
    ("SkylakeX", "numpy"): "2864da7d3c65a509d705666400c68872a636dd3fd851ed3ca366b44870589eb4",
}
"""A product's order of sums is the BLAS kernel's, so 0.2.0's bits are a function of it; and the
softmax's twin (numpy's exp) and its compiled kernel (libm's exp) can differ in a last bit, which
the SkylakeX products carry to the params and Haswell's round away. Every digest was made by fnnet
0.2.0 itself (numpy 2.4.6, OpenBLAS 0.3.31, on an AVX-512 EPYC; ``FNNET_KERNELS`` and
``OPENBLAS_CORETYPE`` set to each), and the 0.3.0 step gives each."""


@pytest.mark.parametrize("suffix", ["npz", "safetensors"])
def test_a_checkpoint_of_0_2_0_loads_and_trains(suffix):
    assert fn.layers.conv_algorithm(8, 1, 3, 3, 16) == "rows"  # "auto": this conv's sums move in 0.3.0
    samples, meta = _resume_0_2_0(suffix, "samples")
    assert meta["fnnet"] == "0.2.0" and meta["next_params_digest"] == NEXT_0_2_0["Haswell", "pythran"]
    # a product per sample: 0.2.0's convolution, bit for bit (the digest 0.2.0 gave of this very step with
    # this BLAS kernel and these kernels; another BLAS kernel has no record, and the step is checked against
    # "auto" alone)
    made_by = (fn.runtime.info()["blas"].get("core"), fn.kernels.backend())
    if made_by in NEXT_0_2_0:
        assert checkpoint.digest(samples) == NEXT_0_2_0[made_by]
    auto, _ = _resume_0_2_0(suffix, "auto")  # one product over the shard: the same step up to the order of the sums
    for got, ref in zip(fn.tree_leaves(auto), fn.tree_leaves(samples)):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def _safetensors_file(path, entries, data):
    header = json.dumps(entries).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def test_bfloat16_tensors_read_as_float32_exactly_and_types_without_a_dtype_are_named(tmp_path):
    want = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)  # (each a bfloat16 exactly)
    top = (want.view("<u4") >> 16).astype("<u2")
    _safetensors_file(tmp_path / "bf16.safetensors", {"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}},
                      top.tobytes())
    tensors, _ = checkpoint.read_tensors(tmp_path / "bf16.safetensors")
    assert tensors["w"].dtype == np.float32 and np.array_equal(tensors["w"], want.reshape(2, 2))
    assert not tensors["w"].flags.writeable
    _safetensors_file(tmp_path / "f8.safetensors", {"q": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}},
                      b"\x01\x02")
    with pytest.raises(fn.DataError, match=r"f8.safetensors: tensor 'q' is F8_E4M3, which numpy has no dtype for"):
        checkpoint.read_tensors(tmp_path / "f8.safetensors")
    with pytest.raises(fn.InvalidTypeError, match="read_tensors: path must be a str or a path, got int"):
        checkpoint.read_tensors(3)
    with pytest.raises(fn.InvalidTypeError, match="write_tensors: path must be a str or a path, got NoneType"):
        checkpoint.write_tensors(None, {})
    with pytest.raises(fn.InvalidTypeError, match="tensors must be a mapping of names to arrays, got list"):
        checkpoint.write_tensors(tmp_path / "t.safetensors", [np.ones(1)])
