"""Atomic file writes: readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it


def write_atomic(path: Path, write: Callable[[IO], Any], mode: str = "w") -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`.

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
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, lambda f: json.dump(obj, f, indent=2, sort_keys=False, allow_nan=False))
