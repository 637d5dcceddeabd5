"""The safetensors format (huggingface/safetensors), read and written with numpy alone.

A file is an 8-byte little-endian header size ``n``, ``n`` bytes of UTF-8 JSON (each
tensor's dtype, shape and ``data_offsets`` into the data, and an optional
``"__metadata__"`` of strings), then the data: every tensor's little-endian bytes, one
after another, without gaps. :func:`decode` checks all of that before it returns an
array, so a damaged file is an error, never a wrong or a huge array.
"""

from __future__ import annotations

import json
import math
from typing import Any, BinaryIO

import numpy as np

from ._errors import InvalidTypeError, InvalidValueError

__all__ = ["UnknownDtypeError", "check", "decode", "encode"]

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
          "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_CODES = {np.dtype(v): k for k, v in DTYPES.items()}
WIDENED = {"BF16": 2}  # read as float32, exactly: a bfloat16 is the top half of a float32
OTHERS = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64")  # the format's, without a numpy dtype
MAX_HEADER = 100 * 2**20  # (the reference implementation's limit)


class UnknownDtypeError(ValueError):
    """A tensor of a type the format has and numpy does not."""


def check(name: str, a: np.ndarray, where: str = "") -> None:
    """Raise :class:`~fnnet.InvalidValueError` or :class:`~fnnet.InvalidTypeError` if the
    format cannot hold tensor ``name``: the header's reserved key, or a dtype without a
    code (complex, float128, strings, objects, records)."""
    if name == "__metadata__":
        raise InvalidValueError(f"{where}the tensor name '__metadata__' is the safetensors header's own key; rename "
                                f"it, or save the tree as .npz")
    if _code(a.dtype) is None:
        raise InvalidTypeError(f"{where}tensor {name!r} is {a.dtype}, which safetensors cannot hold (it holds "
                               f"{', '.join(sorted(DTYPES, key=list(DTYPES).index))}); save it as .npz")


def _code(dtype: np.dtype) -> str | None:
    return _CODES.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)


def encode(f: BinaryIO, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write ``tensors`` (name -> array, each having passed :func:`check`: the caller
    checks them before it opens a file) and ``metadata`` (str -> str) to ``f``."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, a in tensors.items():
        code = _code(a.dtype)
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for a in tensors.values():
        f.write(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())


def decode(buf: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of a whole file's bytes; the arrays are read-only views
    of ``buf``. Raises ValueError saying what is wrong (truncated, malformed, overlapping
    or missing data, an unknown dtype)."""
    if len(buf) < 8:
        raise ValueError(f"{len(buf)} bytes: shorter than the header size")
    n = int.from_bytes(buf[:8], "little")
    if n > min(MAX_HEADER, len(buf) - 8):
        raise ValueError(f"a header of {n} bytes in a file of {len(buf)}")
    header = json.loads(buf[8:8 + n].decode())
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("__metadata__ is not a mapping of strings")
    data, spans, tensors = memoryview(buf)[8 + n:], [], {}
    for name, entry in header.items():
        if isinstance(entry, dict) and entry.get("dtype") in OTHERS:
            raise UnknownDtypeError(f"tensor {name!r} is {entry['dtype']}, which numpy has no dtype for (fnnet reads "
                                    f"{', '.join([*DTYPES, *WIDENED])}): convert it before saving, as "
                                    f"tensor.float() in torch")
        if not (isinstance(entry, dict) and entry.get("dtype") in (*DTYPES, *WIDENED)
                and isinstance(entry.get("shape"), list)
                and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
                and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
                and all(isinstance(o, int) for o in entry["data_offsets"])):
            raise ValueError(f"tensor {name!r}: a bad entry {json.dumps(entry)[:80]}")
        code, (begin, end) = entry["dtype"], entry["data_offsets"]
        dtype = np.dtype("<u2") if code in WIDENED else np.dtype(DTYPES[code])
        if end - begin != math.prod(entry["shape"]) * dtype.itemsize or not 0 <= begin <= end <= len(data):
            raise ValueError(f"tensor {name!r}: {entry['dtype']}{entry['shape']} does not fit bytes {begin}-{end} "
                             f"of {len(data)}")
        spans.append((begin, end, name))
        a = np.frombuffer(data[begin:end], dtype).reshape(entry["shape"])
        if code in WIDENED:
            a = (a.astype("<u4") << 16).view("<f4")
            a.flags.writeable = False
        tensors[name] = a
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise ValueError(f"tensor {name!r} starts at byte {begin} of the data, not {position} "
                             "(a gap or an overlap)")
        position = end
    if position != len(data):
        raise ValueError(f"{len(data) - position} bytes after the last tensor")
    return tensors, metadata
