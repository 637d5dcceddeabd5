"""MNIST and Fashion-MNIST: IDX files (gzipped or not) or the tutorial's ``mnist.pkl.gz``.

Images come out as float32 (N, 1, 28, 28) with values ``byte / 256`` in [0, 255/256] --
the scaling of ``mnist.pkl.gz`` -- so both sources give bit-identical arrays. Labels are
int64 (N,). The validation split is the last ``validation`` training images (10,000 by
default, as in ``mnist.pkl.gz``).
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
from typing import Any

import attrs
import numpy as np

from .._errors import DataError, DataNotFoundError, InvalidValueError
from . import _files
from ._files import FileSpec, read_idx

__all__ = ["DATASETS", "Dataset", "Split", "load", "load_pickle", "read_idx"]


_ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@attrs.frozen
class _Source:
    files: dict  # role -> FileSpec
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    pickle: FileSpec | None = None
    mirror_keeps_class: bool = False  # whether a mirror image is of the same class (a mirrored 2 is not a 2)


_PICKLE = FileSpec(  # the tutorial's mnist.pkl.gz
    "mnist.pkl.gz", "98100ca27dc0e07ddd9f822cf9d244db",
    "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
)

DATASETS: dict[str, _Source] = {
    "mnist": _Source(
        files={
            "train_images": FileSpec(
                "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", "6bbc9ace898e44ae57da46a324031adb",
            ),
            "train_labels": FileSpec(
                "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", "a25bea736e30d166cdddb491f175f624",
            ),
            "test_images": FileSpec(
                "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", "2646ac647ad5339dbf082846283269ea",
            ),
            "test_labels": FileSpec(
                "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", "27ae3e4e09519cfbb04c329615203637",
            ),
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist",
            "https://storage.googleapis.com/cvdf-datasets/mnist",
        ),
        classes=tuple("0123456789"),
        pickle=_PICKLE,
    ),
    "fashion-mnist": _Source(
        files={
            "train_images": FileSpec("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train_labels": FileSpec("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            "test_images": FileSpec("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            "test_labels": FileSpec("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion",
        ),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
        mirror_keeps_class=True,  # a mirrored shirt is a shirt
    ),
}
"""The datasets ``load`` knows, by name: their files, checksums, mirrors, class names, and
whether a mirror image keeps its class (``mirror_keeps_class``: what flips may be used for)."""


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@attrs.frozen
class Split:
    """Images ``x`` float32 (N, 1, 28, 28) in [0, 1) and labels ``y`` int64 (N,), read-only."""

    x: np.ndarray = attrs.field(converter=_readonly)
    y: np.ndarray = attrs.field(converter=_readonly)

    def __attrs_post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"Split: {len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)


@attrs.frozen
class Dataset:
    """``train``, ``val`` and ``test`` splits, the class names and where the files were."""

    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    source: str


def _images(u8: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) as byte/256 (exact, like mnist.pkl.gz)."""
    return (u8.astype(np.float32) * np.float32(1 / 256))[:, None]


def _check_pair(images: np.ndarray, labels: np.ndarray, ipath: pathlib.Path, lpath: pathlib.Path) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{ipath} has {images.shape[0]} images but {lpath} has {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{ipath}: images are {images.shape[1:]}, expected 28x28")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lpath}: label {labels.max()} out of range 0..9")


def _split_val(
    name: str, x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray, validation: int,
    classes: tuple[str, ...], source: str,
) -> Dataset:
    if not 0 <= validation < len(y):
        raise InvalidValueError(f"validation must be in [0, {len(y)}), got {validation}")
    cut = len(y) - validation
    return Dataset(name, Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:]), Split(tx, ty), classes, source)


def _load_idx_dir(
    name: str, src: _Source, directory: pathlib.Path, paths: dict, validation: int, verify: bool
) -> Dataset:
    arrays = {}
    for role, path in paths.items():
        if verify:
            _files.verify(path, src.files[role])
        arrays[role] = read_idx(path, 3 if role.endswith("images") else 1)
    for split in ("train", "test"):
        _check_pair(arrays[f"{split}_images"], arrays[f"{split}_labels"], paths[f"{split}_images"],
                    paths[f"{split}_labels"])
    return _split_val(
        name, _images(arrays["train_images"]), arrays["train_labels"].astype(np.int64),
        _images(arrays["test_images"]), arrays["test_labels"].astype(np.int64), validation, src.classes,
        str(directory),
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy arrays, dtypes and plain containers only: pickle can run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles made by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        module = module.replace("numpy.core.", "numpy._core.")
        return getattr(__import__(module, fromlist=[name]), name)


def load_pickle(path: str | os.PathLike, *, verify: bool = True) -> tuple:
    """The tutorial's ``mnist.pkl.gz`` as ``((x, y), (vx, vy), (tx, ty))`` with x float32 (N, 784).

    Read with a restricted unpickler (numpy arrays and containers only); with ``verify``
    the file must match the published checksum first.
    """
    path = pathlib.Path(path)
    if verify:
        _files.verify(path, _PICKLE)
    raw = _files.read_bytes(path)
    try:
        data = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: refused or unreadable pickle ({exc})") from None
    ok = (
        isinstance(data, tuple) and len(data) == 3
        and all(isinstance(s, tuple) and len(s) == 2 for s in data)
        and all(isinstance(a, np.ndarray) and a.dtype.kind in "fiu" for s in data for a in s)
    )
    if not ok:
        raise DataError(f"{path}: expected ((x, y), (x, y), (x, y)) of numeric arrays")
    return data


def _check_pickle_split(path: pathlib.Path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """The IDX path's checks, for one split of the pickle: 28x28 images (as 784 values in
    [0, 1]), integer labels 0..9, one label per image."""
    if x.ndim != 2 or x.shape[1] != 28 * 28:
        raise DataError(f"{path}: {split} images have shape {x.shape}, expected (N, 784): 28x28 images, one per row")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: {split} has {len(x)} images but labels of shape {y.shape}")
    if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{path}: {split} labels must be integers in 0..9, got {y.dtype} in [{y.min()}, {y.max()}]")
    if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise DataError(f"{path}: {split} pixel values must be finite and in [0, 1]")


def _load_pickle_dataset(path: pathlib.Path, validation: int, verify: bool) -> Dataset:
    (x, y), (vx, vy), (tx, ty) = load_pickle(path, verify=verify)
    for split, (a, b) in (("train", (x, y)), ("validation", (vx, vy)), ("test", (tx, ty))):
        _check_pickle_split(path, split, a, b)
    if validation != len(vy):
        x, y = np.concatenate([x, vx]), np.concatenate([y, vy])
        cut = len(y) - validation
        x, vx, y, vy = x[:cut], x[cut:], y[:cut], y[cut:]
    to_img = lambda a: np.ascontiguousarray(a, np.float32).reshape(-1, 1, 28, 28)  # noqa: E731
    return Dataset(
        "mnist", Split(to_img(x), y.astype(np.int64)), Split(to_img(vx), vy.astype(np.int64)),
        Split(to_img(tx), ty.astype(np.int64)), DATASETS["mnist"].classes, str(path),
    )


def load(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    validation: int = 10_000,
    source: str = "auto",
    download: bool = True,
    verify: bool = True,
) -> Dataset:
    """Load ``"mnist"`` or ``"fashion-mnist"``.

    Looks in ``data_dir`` (or ``data_dir/<name>``), ``$FNNET_DATA_DIR/<name>``, then
    ``~/.cache/fnnet/<name>`` (``$XDG_CACHE_HOME``), for the four IDX files (``source="idx"``)
    or ``mnist.pkl.gz`` (``source="pickle"``; ``"auto"`` prefers IDX). If none is found
    and ``download`` is true, the IDX files are downloaded into the cache, each checked
    against its published checksum before it is kept. Every file is checked against its
    published checksum unless ``verify=False`` (for your own IDX files); the IDX structure
    (magic number, sizes, matching counts) is always checked.
    """
    if name not in DATASETS:
        raise InvalidValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    if source not in ("auto", "idx", "pickle"):
        raise InvalidValueError(f"source must be 'auto', 'idx' or 'pickle', got {source!r}")
    src = DATASETS[name]
    if source == "pickle" and src.pickle is None:
        raise InvalidValueError(f"{name} has no pickle source")
    dirs = _files.candidate_dirs(name, data_dir)
    for d in dirs:
        if source in ("auto", "idx"):
            paths = {role: _files.find_file(d, spec) for role, spec in src.files.items()}
            if all(paths.values()):
                return _load_idx_dir(name, src, d, paths, validation, verify)
        pkl = _files.find_file(d, src.pickle) if source in ("auto", "pickle") and src.pickle is not None else None
        if pkl is not None:
            return _load_pickle_dataset(pkl, validation, verify)
    looked = ", ".join(str(d) for d in dirs)
    idx_files = " and ".join(s.name for s in src.files.values())
    wanted = idx_files if src.pickle is None or source != "pickle" else src.pickle.name
    help_ = (
        f"Put {wanted} in one of them (e.g. `--data-dir DIR` or `export FNNET_DATA_DIR=DIR` with the files in "
        f"DIR/{name}/)."
    )
    if not download or source == "pickle":
        raise DataNotFoundError(f"{name}: no data files found; looked in {looked}. {help_}")
    target = _files.cache_dir() / name
    try:
        paths = {}
        for role, spec in src.files.items():
            paths[role] = _files.find_file(target, spec) or _files.download(spec, src.mirrors, target)
    except DataNotFoundError as exc:
        raise DataNotFoundError(
            f"{name}: no data files found (looked in {looked}) and the download failed: {exc}. {help_}"
        ) from None
    return _load_idx_dir(name, src, target, paths, validation, verify)
