"""Errors a user can fix: each is reported as one line and exit code 2.

Every error here crosses process boundaries intact (joblib and submitit return a job's
exception by pickling it), hence the `__reduce__` of those whose constructor takes more than
the message."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any


class ConfigError(ValueError):
    """A config value is invalid: names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")

    def __reduce__(self):
        return type(self), (self.key, self.value, self.allowed)


class UsageError(ValueError):
    """Bad command-line or environment input that is not a config key (missing data, bad path)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by SLURM, `timeout`, `kill`), or another signal that stops a run (SLURM's
    time-limit warning): handled exactly like Ctrl-C."""

    signal_name = "SIGTERM"

    def __init__(self, signal_name: str | None = None):
        super().__init__()
        if signal_name is not None:
            self.signal_name = signal_name

    def __reduce__(self):
        return type(self), (self.signal_name,)


class RunInterrupted(Exception):
    """A job of a sweep that a signal stopped (SLURM's scancel, time limit, preemption): its run
    is recorded `interrupted` with its last checkpoint, and `trainer.resume=auto` continues it."""

    def __init__(self, run_dir: str, how: str):
        self.run_dir, self.how = str(run_dir), how
        super().__init__(f"{run_dir}: interrupted by {how}")

    def __reduce__(self):
        return type(self), (self.run_dir, self.how)


class JobFailed(Exception):
    """A job's error that would not come back whole from a worker process (its class takes other
    arguments than a message): its type's name and message, as one."""


class JobLost(Exception):
    """A job of a sweep that ended without returning (cancelled or killed before it could say
    so, out of time or memory): `why` is one line, from the scheduler where it knows."""

    def __init__(self, run_dir: str | None, why: str, label: str = "failed"):
        self.run_dir, self.why, self.label = run_dir, why, label  # label: cancelled, timed out, failed
        super().__init__(f"{run_dir or 'a job'}: {why}")

    def __reduce__(self):
        return type(self), (self.run_dir, self.why, self.label)


class SweepFailed(Exception):
    """A sweep ended with jobs that did not complete: `message` is its one closing line, `code`
    the exit status (2 when every one was a config error or a refusal, else 1), `resumable`
    whether `trainer.resume=auto` continues some of them, and `overrides` what that command must
    also change (e.g. hydra.launcher.max_members after a chunk ran out of memory)."""

    def __init__(self, message: str, code: int = 1, resumable: bool = False, overrides: tuple[str, ...] = ()):
        self.message, self.code, self.resumable, self.overrides = message, code, resumable, tuple(overrides)
        super().__init__(message)

    def __reduce__(self):
        return type(self), (self.message, self.code, self.resumable, self.overrides)


def survives_pickling(error: BaseException) -> bool:
    """Whether `error` comes back whole from a worker process that returns it pickled: it
    pickles (its class importable, its arguments plain), and its `__reduce__` rebuilds it (an
    exception whose constructor takes other arguments than its message does not: joblib's pool
    breaks on it). `copy.deepcopy` rebuilds through the same `__reduce_ex__` a pickle does,
    without loading a pickle."""
    import copy
    import pickle

    try:
        pickle.dumps(error)
        return type(copy.deepcopy(error)) is type(error)
    except Exception:
        return False


def one_line(text: object) -> str:
    """An error message as one line: its lines joined, without Hydra's and OmegaConf's
    trailers (full_key, object_type, the config search path)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "Set the environment"))]
    return " ".join(lines).split(" Config search path:")[0]


def print_error(message: object, code: int = 2) -> int:
    """`regablate: error: <message>` as one line on stderr, its control characters shown
    escaped (a path or value from a run dir or a config can hold escape sequences a terminal
    would act on); returns `code`, the exit status."""
    print(f"regablate: error: {escape_control(one_line(message))}", file=sys.stderr)
    return code


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                      "\u2066-\u2069]")


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape_control(text: Any) -> str:
    """`str(text)` with control characters (C0 and C1 codes, DEL, newlines and tabs included)
    and bidirectional-text overrides written as visible escapes: "\\x1b[2J" shows as the
    five characters `\\x1b[2J` and a terminal never acts on it."""
    text = str(text)
    return _CONTROL.sub(_visible, text) if _CONTROL.search(text) else text


class OneLineParser(argparse.ArgumentParser):
    """argparse whose bad flag or value is a UsageError: argparse's own line, naming the flag and
    what it takes (then `hint`), instead of the usage before it and exit 2; --help still prints
    the usage. A sub-command's parser is one too (argparse makes it of its parent's class)."""

    def __init__(self, *args, hint: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.hint = hint

    def error(self, message: str):
        raise UsageError(message + self.hint)
