"""Files written whole or not at all: what checkpoints, exports and run folders share.

:func:`atomic_write` writes to a temporary file beside the target, flushes it to disk, may
check it, and renames it over the target; :func:`check_writable` refuses a path that
cannot be a file before any work.
"""

from __future__ import annotations

import os
import pathlib
import re
import secrets
from collections.abc import Callable
from typing import Any, BinaryIO

from ._errors import InvalidTypeError, InvalidValueError

__all__ = ["atomic_write", "check_writable", "write_atomic"]


def _tmp_pattern(path: pathlib.Path) -> re.Pattern:
    # ours: .<name>.<pid>.<hex>.tmp; earlier versions' (mkstemp): .<name>.<8 random chars>.tmp
    return re.compile(re.escape(f".{path.name}.") + r"(?:(?P<pid>[0-9]+)\.[0-9a-f]+|[a-z0-9_]{8})\.tmp")


def _remove_stale_tmp(path: pathlib.Path) -> list[pathlib.Path]:
    """Remove the temporary files of earlier saves of ``path`` whose process is gone
    (a save killed between writing and renaming); returns what was removed."""
    removed, pattern = [], _tmp_pattern(path)
    for q in path.parent.iterdir():
        m = pattern.fullmatch(q.name)
        if m is None:
            continue
        pid = None if m["pid"] is None else int(m["pid"])
        if pid is not None and pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # that process still runs: it may be saving right now
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # alive, another user's
        try:
            q.unlink()
            removed.append(q)
        except FileNotFoundError:
            pass
    return removed


def check_writable(path: Any, what: str = "path") -> pathlib.Path:
    """``path`` as a Path, or an :class:`~fnnet.InvalidTypeError` if it is not a str or a
    path (``what`` names the argument) and an :class:`~fnnet.InvalidValueError` naming it
    if it is a folder or under a file: what a writer checks before any work."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise InvalidTypeError(f"{what} must be a str or a path, got {type(path).__name__}")
    path = pathlib.Path(path)
    if path.is_dir():
        raise InvalidValueError(f"{path}: is a folder, not a file to write")
    blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InvalidValueError(f"{path}: cannot be written, {blocker} is a file, not a folder")
    return path


def atomic_write(path: pathlib.Path, write: Callable[[BinaryIO], Any],
                 check: Callable[[pathlib.Path], Any] | None = None) -> None:
    """``write(f)`` to a temporary file beside ``path``, flushed to disk, ``check(tmp)`` if
    given (it raises to keep the old file), then renamed over ``path``: a crash or a full
    disk never leaves a half-written ``path``, and the old file stays whole until the
    rename. Temporary files of earlier writes whose process died are removed afterwards.
    A path whose folder cannot be made (a file in the way, no permission) is an
    :class:`~fnnet.InvalidValueError` naming it."""
    path = check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidValueError(f"{path}: its folder cannot be made ({exc.strerror or exc})") from None
    # the pid in the name lets a later save tell a dead save's leftovers from a running one's
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _remove_stale_tmp(path)


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (:func:`atomic_write`): a kill leaves
    the old or the new file."""
    atomic_write(path, lambda f: f.write(text.encode()))
