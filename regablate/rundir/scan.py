"""A sweep's run dirs read into records, as `regablate status` shows them (regablate.cli.status).

No scheduler is asked: the run dirs say it all (on-disk contract v1). A run dir is a directory
holding `summary.json` (as for `regablate report`); one holding `.hydra/` but no `summary.json`,
or a job dir of a sweep (`<sweep>/<N>`) holding neither, is a run with no summary yet. Runs are
grouped per sweep (a dir holding `multirun.yaml`, or an Optuna sweep's dir) and, per root, the
single runs outside any sweep; each group's runs are counted by status:

- a `running` run's last epoch (the last whole line of `metrics.csv`: only the file's head and
  tail are read) and the age of its last write (the newest mtime of `summary.json`,
  `metrics.csv`, `checkpoints/last.pt`); when no process holds its lock (`regablate.rundir.claim`:
  `flock` on the run dir) the job that wrote it is dead and the run is `stale`;
- a `failed` or `interrupted` run's error;
- a damaged `summary.json` (not a regular file, too large, not JSON, not contract v1) is
  `unreadable`, with the reason.

Only `summary.json` is read whole (bounded, `regablate.rundir.untrusted`); the rest is listed with
`os.scandir` and `stat`ed. Looking at a lock takes it, shared and non-blocking, for an instant: a
job claiming that very run dir in that instant is refused as "being written by another process"
(nothing is written). Torch-free.
"""

from __future__ import annotations

import csv
import fcntl
import os
import re
import time

from regablate.rundir.untrusted import (
    SMALL_CAP,
    RefusedFile,
    RefusedValue,
    load_json_safe,
    open_regular,
    read_bounded,
)

STATUSES = ("running", "completed", "diverged", "failed", "interrupted")
KINDS = (*STATUSES, "no_summary", "unreadable")  # the keys of every `counts`
UNFINISHED = ("failed", "interrupted", "no_summary")  # plus stale running runs
LAST_WRITE = ("summary.json", "metrics.csv", os.path.join("checkpoints", "last.pt"))
HEAD_CAP = 64 << 10   # metrics.csv's header line is read from at most this many first bytes
TAIL_CAP = 64 << 10   # and its last line from at most this many last bytes
ERROR_CHARS = 300     # a shown error is cut to this many characters (a run's record keeps 4 times that)


class MissingDir(FileNotFoundError):
    """A DIR that does not exist or is not a directory (exit 2)."""


def _natural(name: str) -> tuple:
    """Job dirs in their numeric order: 2 before 10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def _listing(path: str) -> tuple[set, list]:
    """Names of the files (and other non-directories) and the sub-directories of `path`,
    symbolic links never followed. ([], []) when it cannot be listed."""
    files, dirs = set(), []
    try:
        with os.scandir(path) as it:
            for entry in it:
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                (dirs.append(entry.name) if is_dir else files.add(entry.name))
    except OSError:
        pass
    return files, dirs


def _find(root: str) -> tuple[list[tuple[str, str | None, bool]], list[str]]:
    """(run dir, its sweep dir or None, has summary.json) for every run below `root`, and the
    sweep dirs (multirun.yaml) found, those with no run yet included.

    The rule of `regablate.report.collect.find_run_dirs` (a dir holding summary.json is a run;
    one holding `.hydra/` but no summary.json is a run with no summary yet; nothing below a
    run is looked at; hidden dirs are skipped), plus: a dir holding `multirun.yaml` is a sweep,
    and its numbered job dirs count even when still empty; so is a dir holding `optuna_study.json`
    or `trial_<n>` dirs (an Optuna sweep: `trial_<n>/seed_<s>`)."""
    parent = os.path.dirname(os.path.abspath(root))
    top_sweep = parent if os.path.isfile(os.path.join(parent, "multirun.yaml")) else None
    found: list[tuple[str, str | None, bool]] = []
    sweeps: list[str] = []
    stack = [(root, top_sweep, False)]
    while stack:
        here, sweep, job = stack.pop()
        files, dirs = _listing(here)
        if "summary.json" in files or "summary.json" in dirs:
            found.append((here, sweep, True))
            continue
        if ".hydra" in dirs or job and not dirs:
            found.append((here, sweep, False))
            continue
        if "multirun.yaml" in files or "optuna_study.json" in files \
                or any(_TRIAL.fullmatch(d) for d in dirs):
            sweep = here
            if "multirun.yaml" in files:
                sweeps.append(here)
        for name in sorted((d for d in dirs if not d.startswith(".")), key=_natural, reverse=True):
            stack.append((os.path.join(here, name), sweep, sweep == here and name.isdigit()))
    return found, sweeps


_TRIAL = re.compile(r"trial_\d+")  # an Optuna sweep's trial dirs (trial_<n>/seed_<s>)


def lock_of(run_dir: str) -> str | None:
    """"held" when a process holds the run dir's lock (`regablate.rundir.claim`; a sweep's root:
    its sweep is running, `hold_sweep_dir`), "free" when none does, None when it cannot be told.
    The lock is taken shared and released at once."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "free"
    finally:
        os.close(fd)


def _last_write(run_dir: str) -> float | None:
    """The newest mtime among summary.json, metrics.csv and checkpoints/last.pt (links not
    followed), None when none is there."""
    times = []
    for name in LAST_WRITE:
        try:
            times.append(os.stat(os.path.join(run_dir, name), follow_symlinks=False).st_mtime)
        except OSError:
            pass
    return max(times) if times else None


def _head_and_tail(path: str, within: str) -> tuple[bytes, bytes, int]:
    """The first HEAD_CAP bytes of `path`, its last TAIL_CAP bytes and where they start, read
    as `regablate.rundir.untrusted.read_bounded` reads (a regular file inside `within`, opened without
    following a link or blocking), but never more than those bytes however large the file."""
    fd, info = open_regular(path, within=within)
    try:
        head = os.pread(fd, HEAD_CAP, 0)
        if info.st_size <= HEAD_CAP:
            return head, head, 0
        start = info.st_size - TAIL_CAP
        return head, os.pread(fd, TAIL_CAP, start), start
    finally:
        os.close(fd)


def last_epoch(run_dir: str) -> tuple[int | None, str | None]:
    """(the epoch of metrics.csv's last whole line, None) or (None, why not): no file yet, no
    epoch yet, or a damaged file. A half-written last line (no newline yet) is not read."""
    try:
        head, tail, start = _head_and_tail(os.path.join(run_dir, "metrics.csv"), run_dir)
    except FileNotFoundError:
        return None, "no metrics.csv yet"
    except RefusedFile as e:
        return None, f"metrics.csv: {e.reason}"
    except OSError as e:
        return None, f"metrics.csv: {e.strerror or e}"
    if b"\n" not in head:
        return None, "metrics.csv: no header line" if len(head) >= HEAD_CAP else "no epoch yet"
    header_line = head.split(b"\n", 1)[0]
    lines = tail.split(b"\n")[:-1]  # what follows the last newline is still being written
    lines = lines[1:]  # the header, or (a tail from the middle) part of a line
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        return None, "no epoch yet"
    try:
        header = next(csv.reader([header_line.decode("utf-8")]))
        row = next(csv.reader([lines[-1].decode("utf-8")]))
        text = row[header.index("epoch")].strip()
    except UnicodeDecodeError:
        return None, "metrics.csv is not UTF-8 text"
    except (csv.Error, StopIteration):
        return None, "metrics.csv: not CSV"
    except ValueError:
        return None, "metrics.csv has no 'epoch' column"
    except IndexError:
        return None, "metrics.csv: the last line is shorter than the header"
    if not (text.isascii() and text.isdigit() and len(text) <= 15):
        return None, f"metrics.csv: the last epoch is {_short(text)}, not a number"
    return int(text), None


def read_summary(run_dir: str) -> tuple[dict | None, str | None]:
    """(summary, None), or (None, why it is unreadable). Bounded and checked
    (`regablate.rundir.untrusted`); only what status needs is required: a JSON object of schema 1
    with a known `status`, and `error` text or null."""
    try:
        data = read_bounded(os.path.join(run_dir, "summary.json"), SMALL_CAP, within=run_dir)
    except RefusedFile as e:
        return None, f"summary.json: {e.reason}"
    except FileNotFoundError:
        return None, "summary.json: No such file or directory"
    except OSError as e:
        return None, f"summary.json: {e.strerror or e}"
    try:
        summary = load_json_safe(data)
    except RefusedValue as e:
        return None, f"summary.json{' is' if str(e).startswith('not ') else ':'} {e}"
    if not isinstance(summary, dict):
        return None, "summary.json is not a JSON object"
    if summary.get("schema") != 1:
        return None, f"summary.json has schema {_short(summary.get('schema'))}, expected 1"
    if summary.get("status") not in STATUSES:
        return None, f"summary.json has status {_short(summary.get('status'))}"
    if not isinstance(summary.get("error"), (str, type(None))):
        return None, "summary.json: 'error' is not text"
    return summary, None


def ended(run_dir) -> dict | None:
    """The run's summary where it says the run ended with a result (completed or diverged), else
    None (none yet, running, stopped, failed or unreadable)."""
    summary, _ = read_summary(str(run_dir))
    return summary if summary is not None and summary["status"] in ("completed", "diverged") else None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _inspect(run_dir: str, has_summary: bool, now: float) -> dict:
    """What status shows of one run dir."""
    run: dict = {"dir": run_dir}
    if not has_summary:
        run["status"] = "no_summary"
        run["lock"] = lock_of(run_dir)
        return run
    summary, why = read_summary(run_dir)
    if summary is None:
        run.update(status="unreadable", reason=why)
        return run
    run["status"] = status = summary["status"]
    if status in ("failed", "interrupted") and summary.get("error"):
        run["error"] = summary["error"][:4 * ERROR_CHARS]
    if status == "running":
        run["lock"] = lock_of(run_dir)
        run["stale"] = run["lock"] == "free"
        run["last_epoch"], note = last_epoch(run_dir)
        if note:
            run["note"] = note
        written = _last_write(run_dir)
        run["last_write"] = written
        run["age_s"] = None if written is None else max(0.0, now - written)
    return run


def _counts(runs: list[dict]) -> dict:
    counts = dict.fromkeys(KINDS, 0)
    for run in runs:
        counts[run["status"]] += 1
    counts["stale"] = sum(1 for r in runs if r.get("stale"))
    return counts


def unfinished(run: dict) -> bool:
    """Whether a run is to be continued: failed, interrupted or with no summary (and no process
    holding its lock), or running but stale."""
    return run["status"] in UNFINISHED and run.get("lock") != "held" or bool(run.get("stale"))


def scan(paths) -> list[dict]:
    """The runs below `paths`, grouped: one group per sweep dir, and one (`"sweep": False`)
    for the single runs below each root, each `{"dir", "sweep": bool, "runs": [{"dir",
    "status", ...}], "counts"}`, its runs in natural order. Raises MissingDir (a
    FileNotFoundError) naming a path that is not a directory."""
    now = time.time()
    roots = [os.fspath(p) for p in paths]
    for root in roots:
        if not os.path.isdir(root):
            why = "not a directory" if os.path.exists(root) else "no such directory"
            raise MissingDir(2, why, root)
    groups: dict[tuple, dict] = {}
    seen: set[str] = set()
    for root in roots:
        found, sweeps = _find(root)
        for run_dir, sweep, has_summary in found:
            key = os.path.abspath(run_dir)
            if key in seen:  # roots that overlap
                continue
            seen.add(key)
            group = groups.setdefault((sweep is not None, sweep or root),
                                      {"dir": sweep or root, "sweep": sweep is not None, "runs": []})
            group["runs"].append(_inspect(run_dir, has_summary, now))
        for sweep in sweeps:  # a sweep none of whose jobs has made its dir yet: a group with no run
            if not any(os.path.abspath(g["dir"]) == os.path.abspath(sweep) for g in groups.values()):
                groups[(True, sweep)] = {"dir": sweep, "sweep": True, "runs": []}
    for group in groups.values():
        group["runs"].sort(key=lambda r: _natural(r["dir"]))
        group["counts"] = _counts(group["runs"])
    return list(groups.values())
