"""Atomic file writes: readers see the old file or the new one, never a partial one.

Each file is written to a temp file, made durable, then renamed over its path. Inside
`one_sync()` (a loop that writes one file for each of many runs) the temp files are made
durable together by one sync of their file system instead of one fsync each, then renamed:
on this kind of VM an fsync costs ~3 ms and the one sync about as much as two.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it


_local = threading.local()  # .pending inside one_sync(): [(temp file, path)] this thread renames


def _pending() -> list[tuple[str, Path]] | None:
    return getattr(_local, "pending", None)


def write_atomic(path: Path, write: Callable[[IO], Any], mode: str = "w") -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path` (inside
    `one_sync()`: the sync and rename happen when it ends).

    A failed write (disk full, file-size limit) removes the temp file and raises an OSError
    that names `path`; the file at `path` is the previous complete version, or absent.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; results are shared like any file
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            if _pending() is None:
                os.fsync(f.fileno())
        if _pending() is None:
            os.replace(tmp, path)
        else:
            _pending().append((tmp, path))
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


@contextlib.contextmanager
def one_sync() -> Iterator[None]:
    """This thread's atomic writes inside are made durable by one `os.sync()` at the end and
    only then renamed over their paths, in order (nested: the outermost one does it). If the
    block raises, its files are still synced and renamed (each one is complete), then it
    re-raises."""
    if _pending() is not None:
        yield
        return
    _local.pending = []
    try:
        yield
    finally:
        pending, _local.pending = _local.pending, None
        if pending:
            os.sync()
            for tmp, path in pending:
                os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, lambda f: json.dump(obj, f, indent=2, sort_keys=False, allow_nan=False))
