"""Output that may go away: `regablate run … | head -1` must not change the run.

When the reader of stdout or stderr leaves, writes raise BrokenPipeError. The run goes on
with that stream sent to /dev/null, exactly as if its output had been read to the end.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


class Tolerant:
    """A text stream whose writes and flushes never raise BrokenPipeError."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def _gone(self) -> None:
        """The reader left: point the fd at /dev/null too, so Python's exit flush is quiet."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        except (OSError, ValueError):
            pass
        os.close(devnull)
        self._stream = open(os.devnull, "w")

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def tolerate_closed_pipes() -> None:
    """Wrap sys.stdout and sys.stderr (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, Tolerant):
            setattr(sys, name, Tolerant(stream))
