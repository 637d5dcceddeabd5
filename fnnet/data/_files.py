"""Dataset files: where they are looked for, checksums, verified downloads, IDX parsing."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pathlib
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence

import attrs
import numpy as np
from tqdm import tqdm

from .._errors import DataError, DataNotFoundError

CHUNK = 1 << 20


@attrs.frozen
class FileSpec:
    """A published file: its name and checksum(s), and the checksum of its content
    once gunzipped (for users who keep the files uncompressed), where published."""

    name: str
    md5: str
    sha256: str | None = None
    raw_md5: str | None = None


def file_digest(path: pathlib.Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify(path: pathlib.Path, spec: FileSpec) -> None:
    """Check ``path`` against the published checksum of ``spec`` (sha256 where known).

    An uncompressed copy (name without ``.gz``) is checked against ``raw_md5`` when
    published, and otherwise only by the IDX parser's structural checks.
    """
    if path.name.endswith(".gz"):
        algorithm, want = ("sha256", spec.sha256) if spec.sha256 else ("md5", spec.md5)
    elif spec.raw_md5:
        algorithm, want = "md5", spec.raw_md5
    else:
        return
    got = file_digest(path, algorithm)
    if got != want:
        raise DataError(
            f"{path}: {algorithm} {got} does not match the published {want}; the file is corrupt, "
            "truncated or not the official one. Delete it and provide a good copy (or let fnnet download it)."
        )


def cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/fnnet`` or ``~/.cache/fnnet``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "fnnet"


def candidate_dirs(dataset: str, data_dir: str | os.PathLike | None) -> list[pathlib.Path]:
    """Where to look, in order: ``data_dir`` (or its ``<dataset>/``), ``$FNNET_DATA_DIR/<dataset>/``,
    the user's cache folder ``<cache>/<dataset>/``."""
    dirs = []
    if data_dir is not None:
        d = pathlib.Path(data_dir).expanduser()
        if not d.is_dir():  # a typo must not silently fall back to another copy
            what = "is a file, not a folder" if d.exists() else "no such folder"
            raise DataNotFoundError(f"data_dir {str(data_dir)!r}: {what}")
        dirs += [d / dataset, d]
    env = os.environ.get("FNNET_DATA_DIR")
    if env:
        dirs.append(pathlib.Path(env).expanduser() / dataset)
    dirs.append(cache_dir() / dataset)
    return dirs


def find_file(directory: pathlib.Path, spec: FileSpec) -> pathlib.Path | None:
    """The gzipped file, or its uncompressed twin, in ``directory``; a DataError if that
    name is taken by something that is not a file (a folder, say)."""
    for name in (spec.name, spec.name.removesuffix(".gz")):
        p = directory / name
        if p.is_file():
            return p
        if p.exists():
            raise DataError(f"{p}: is not a file (a folder?); expected the data file {spec.name}")
    return None


def download(spec: FileSpec, mirrors: Sequence[str], directory: pathlib.Path, timeout: float = 30) -> pathlib.Path:
    """Fetch ``spec`` from the first mirror that serves a file with the right checksum.

    The data goes to a temporary file in ``directory``, renamed only once its checksum
    matches, so an interrupted or corrupt download never leaves a file behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + spec.name
        fd, tmp = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=directory)
        try:
            algorithm, want = ("sha256", spec.sha256) if spec.sha256 else ("md5", spec.md5)
            h = hashlib.new(algorithm)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                # a bar on a terminal (stderr), nothing otherwise
                with tqdm(total=total, desc=spec.name, unit="B", unit_scale=True, unit_divisor=1024,
                          disable=None, leave=False) as bar:
                    while block := resp.read(CHUNK):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
            if h.hexdigest() != want:
                raise DataError(f"downloaded {spec.name} has {algorithm} {h.hexdigest()}, expected {want}")
            final = directory / spec.name
            os.replace(tmp, final)
            return final
        except (OSError, DataError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataNotFoundError(f"could not download {spec.name}: " + "; ".join(errors))


def read_bytes(path: pathlib.Path) -> bytes:
    """The content of ``path``, gunzipped if it ends in .gz; a clear error if it is corrupt."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: truncated or corrupt gzip data ({exc})") from None


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (1: labels, 3: images) as uint8.

    Checks the magic number (``00 00 08 ndim``), and that the size matches the header.
    """
    path = pathlib.Path(path)
    data = read_bytes(path)
    want = bytes([0, 0, 8, ndim])
    if data[:4] != want:
        raise DataError(
            f"{path}: wrong IDX magic number {data[:4].hex() or '(empty file)'}, expected {want.hex()} "
            f"(unsigned bytes, {ndim}-D): not an MNIST-style {'label' if ndim == 1 else 'image'} file"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    size = math.prod(dims)  # (exact: an int64 product of four-byte dims can wrap)
    if len(data) - header != size:
        raise DataError(f"{path}: IDX header says {dims} = {size} bytes of data, file has {len(data) - header}")
    return np.frombuffer(data, np.uint8, size, header).reshape(dims)
