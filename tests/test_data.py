"""Dataset loading: real MNIST when FNNET_DATA_DIR has it, and small files made here for
every corruption case (these always run)."""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import pickle

import numpy as np
import pytest

import fnnet as fn
from fnnet import data
from fnnet.data import _files
from fnnet.data.mnist import DATASETS, _Source

DATA_DIR = os.environ.get("FNNET_DATA_DIR")
REAL = pytest.mark.skipif(
    not (DATA_DIR and (pathlib.Path(DATA_DIR) / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()),
    reason="real MNIST not in FNNET_DATA_DIR (the nox sessions point it at ../shared/data)",
)

NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def idx_bytes(a: np.ndarray) -> bytes:
    a = np.asarray(a, np.uint8)
    return bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.tobytes()


def write_set(directory: pathlib.Path, n_train=30, n_test=12, gz=True, seed=0) -> dict:
    """Four small IDX files in ``directory``; returns role -> path."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    content = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    paths = {}
    for role, arr in content.items():
        raw = idx_bytes(arr)
        p = directory / (NAMES[role] if gz else NAMES[role][:-3])
        p.write_bytes(gzip.compress(raw) if gz else raw)
        paths[role] = p
    return paths


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No FNNET_DATA_DIR, an empty cache folder, and no network mirrors."""
    monkeypatch.delenv("FNNET_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


# -- real files ---------------------------------------------------------------------------


@REAL
def test_real_mnist_idx_and_pickle_agree():
    idx = data.load("mnist", DATA_DIR)
    assert (len(idx.train), len(idx.val), len(idx.test)) == (50_000, 10_000, 10_000)
    assert idx.train.x.shape == (50_000, 1, 28, 28) and idx.train.x.dtype == np.float32
    assert idx.train.x.min() == 0 and idx.train.x.max() == np.float32(255 / 256)
    assert np.bincount(idx.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    full = np.concatenate([idx.train.y, idx.val.y])
    assert np.bincount(full).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    pkl = data.load("mnist", DATA_DIR, source="pickle")
    for split in ("train", "val", "test"):
        a, b = getattr(idx, split), getattr(pkl, split)
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not idx.train.x.flags.writeable


@REAL
def test_real_mnist_found_through_the_environment(monkeypatch):
    monkeypatch.setenv("FNNET_DATA_DIR", DATA_DIR)
    ds = data.load("mnist", validation=5000)
    assert len(ds.train) == 55_000 and ds.source.endswith("mnist")


# -- small files --------------------------------------------------------------------------


def test_read_idx_round_trip_gz_and_raw(tmp_path):
    paths = write_set(tmp_path / "gz")
    raw = write_set(tmp_path / "raw", gz=False)
    for role in NAMES:
        ndim = 3 if role.endswith("images") else 1
        np.testing.assert_array_equal(data.read_idx(paths[role], ndim), data.read_idx(raw[role], ndim))


def test_truncated_gzip_names_the_file(tmp_path):
    p = write_set(tmp_path)["train_images"]
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(fn.DataError, match=rf"{p.name}: truncated or corrupt gzip"):
        data.read_idx(p, 3)


def test_wrong_magic_names_the_file(tmp_path):
    paths = write_set(tmp_path)
    with pytest.raises(fn.DataError, match=r"train-labels-idx1-ubyte.gz: wrong IDX magic number 00000801, expected"):
        data.read_idx(paths["train_labels"], 3)  # a label file where images are expected
    bad = tmp_path / "junk.gz"
    bad.write_bytes(gzip.compress(b"PK\x03\x04 not idx"))
    with pytest.raises(fn.DataError, match="junk.gz: wrong IDX magic number 504b0304"):
        data.read_idx(bad, 1)


def test_size_disagreeing_with_header(tmp_path):
    p = tmp_path / "x-idx1-ubyte"
    p.write_bytes(idx_bytes(np.arange(10))[:-3])
    with pytest.raises(fn.DataError, match=r"header says \(10,\) = 10 bytes of data, file has 7"):
        data.read_idx(p, 1)


def test_count_mismatch_between_images_and_labels(isolated):
    d = isolated / "mine" / "mnist"
    write_set(d)
    labels = d / NAMES["train_labels"]
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(29))))
    want = r"train-images-idx3-ubyte.gz has 30 images but .*train-labels.* 29 labels"
    with pytest.raises(fn.DataError, match=want):
        data.load("mnist", isolated / "mine", validation=5, verify=False)


def test_checksum_mismatch_names_file_and_digest(isolated):
    write_set(isolated / "mine" / "mnist")
    want = r"train-images-idx3-ubyte.gz: sha256 [0-9a-f]{64} does not match the published"
    with pytest.raises(fn.DataError, match=want):
        data.load("mnist", isolated / "mine")
    write_set(isolated / "raw" / "mnist", gz=False)
    with pytest.raises(fn.DataError, match=r"train-images-idx3-ubyte: md5 [0-9a-f]{32} does not match"):
        data.load("mnist", isolated / "raw")


def test_own_files_load_without_verification(isolated):
    write_set(isolated / "mine" / "fashion-mnist", gz=False)
    ds = data.load("fashion-mnist", isolated / "mine", validation=10, verify=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 10, 12)
    assert ds.classes[9] == "Ankle boot"
    assert ds.train.x.dtype == np.float32 and ds.train.x.shape[1:] == (1, 28, 28)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_the_validation_split_is_the_last_training_images_in_file_order(isolated, name):
    paths = write_set(isolated / "mine" / name, n_train=30)
    images, labels = data.read_idx(paths["train_images"], 3), data.read_idx(paths["train_labels"], 1)
    ds = data.load(name, isolated / "mine", validation=8, verify=False)
    np.testing.assert_array_equal(ds.train.y, labels[:22])
    np.testing.assert_array_equal(ds.val.y, labels[22:])
    np.testing.assert_array_equal(ds.val.x[:, 0], images[22:].astype(np.float32) / 256)
    np.testing.assert_array_equal(ds.test.y, data.read_idx(paths["test_labels"], 1))


def test_not_found_offline_says_where_it_looked(isolated):
    want = r"no data files found; looked in .*mine/mnist.*cache/fnnet/mnist"
    (isolated / "mine").mkdir()
    with pytest.raises(fn.DataNotFoundError, match=want) as e:
        data.load("mnist", isolated / "mine", download=False)
    assert "FNNET_DATA_DIR" in str(e.value)


def _fake_dataset(monkeypatch, files: dict, mirror: pathlib.Path, spoil: str | None = None):
    specs = {}
    for role, p in files.items():
        body = p.read_bytes()
        sha = hashlib.sha256(b"other" if role == spoil else body).hexdigest()
        specs[role] = _files.FileSpec(p.name, hashlib.md5(body).hexdigest(), sha)
    monkeypatch.setitem(DATASETS, "tiny", _Source(specs, (mirror.as_uri(),), tuple("0123456789")))


def test_download_is_verified_then_renamed(isolated, monkeypatch):
    mirror = isolated / "mirror"
    _fake_dataset(monkeypatch, write_set(mirror), mirror)
    ds = data.load("tiny", validation=10)
    cache = isolated / "cache" / "fnnet" / "tiny"
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES.values())
    assert ds.source == str(cache) and len(ds.train) == 20


def test_corrupt_download_leaves_nothing_behind(isolated, monkeypatch):
    mirror = isolated / "mirror"
    _fake_dataset(monkeypatch, write_set(mirror), mirror, spoil="test_labels")
    want = r"downloaded t10k-labels-idx1-ubyte.gz has sha256 [0-9a-f]{64}, expected"
    with pytest.raises(fn.DataNotFoundError, match=want):
        data.load("tiny", validation=10)
    cache = isolated / "cache" / "fnnet" / "tiny"
    assert "t10k-labels-idx1-ubyte.gz" not in [p.name for p in cache.iterdir()]
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_unreachable_mirror_is_a_clear_error(isolated, monkeypatch):
    mirror = isolated / "empty-mirror"
    mirror.mkdir()
    files = write_set(isolated / "elsewhere")
    _fake_dataset(monkeypatch, files, mirror)
    with pytest.raises(fn.DataNotFoundError, match=r"tiny: no data files found .* and the download failed: could not"):
        data.load("tiny")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(pickle.dumps(((_Evil(), np.zeros(1)), (), ()))))
    with pytest.raises(fn.DataError, match=r"refused or unreadable pickle .*global 'posix.system' is not allowed"):
        data.load_pickle(p, verify=False)
    assert not (tmp_path / "pwned-by-pickle").exists()
    with pytest.raises(fn.DataError, match="sha256"):
        data.load_pickle(p)  # and it is not the published file


def test_pickle_of_arrays_loads(tmp_path):
    arrays = tuple((np.zeros((3, 784), np.float32), np.arange(3)) for _ in range(3))
    p = tmp_path / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(pickle.dumps(arrays, protocol=2)))
    got = data.load_pickle(p, verify=False)
    np.testing.assert_array_equal(got[2][1], np.arange(3))


@pytest.mark.parametrize("bad", [{"name": "cifar"}, {"source": "csv"}, {"validation": -1}])
def test_bad_arguments(isolated, bad):
    write_set(isolated / "d" / "mnist")
    kwargs = {"name": "mnist", "data_dir": isolated / "d", "verify": False, **bad}
    with pytest.raises(ValueError):
        data.load(**kwargs)


# -- batching -----------------------------------------------------------------------------


def test_epoch_batches_cover_each_example_once_per_epoch():
    it = data.epoch_batches(fn.random.key(0), 10, 4)
    epochs = [np.concatenate([next(it) for _ in range(3)]) for _ in range(2)]
    for e in epochs:
        assert sorted(e.tolist()) == list(range(10))
    assert not np.array_equal(epochs[0], epochs[1])


def test_batch_orders_are_pure_functions_of_key_and_step():
    for make in (data.epoch_batches, data.sample_batches):
        full = make(fn.random.key(3), 50, 8)
        seq = [next(full) for _ in range(20)]
        resumed = make(fn.random.key(3), 50, 8, start_step=13)
        for want in seq[13:]:
            np.testing.assert_array_equal(next(resumed), want)
        other = make(fn.random.key(4), 50, 8)
        assert not np.array_equal(next(other), seq[0])


def test_sample_batches_draw_with_replacement():
    it = data.sample_batches(fn.random.key(0), 3, 50)
    b = next(it)
    assert len(b) == 50 and set(b.tolist()) <= {0, 1, 2} and len(set(b.tolist())) == 3


def test_batching_errors():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(data.epoch_batches(fn.random.key(0), 10, 0))
    with pytest.raises(ValueError, match="gives no batch"):
        next(data.epoch_batches(fn.random.key(0), 3, 4, drop_last=True))
