"""What `regablate tb` shows TensorBoard: a view of the runs, named by what they are.

The view is a folder of symbolic links (in regablate's cache, never in the results):

    <view>/events.out.tfevents.experiment        the HParams experiment of exactly these runs
    <view>/<group label>/seed=<s>/
        events.out.tfevents.session.hparams      session start (every hparam, group = label) and end
        events.out.tfevents.<…>  -> the run's tb/ event files (gap, lr, best/gap, weights/*)
        train/ val/ test/        folders of links to the files of tb/train, tb/val, tb/test

so TensorBoard's run filter takes regablate's words (`dropout`, `p=0.5`, `seed=3`), the
HParams columns are the same whatever order runs are read in, every session has a value for
every column (a strength a run does not use is 0) and no group is dropped. Links scale to
thousands of runs; the view is rebuilt at each `regablate tb`, so it covers runs added since.
A sweep that ends also writes its experiment at its own root (`describe_sweep`).

Run dirs are read as the report reads them (unreadable ones skipped, each with a warning); only
regular files are linked, never a symbolic link, FIFO or device under a run's tb/, so
TensorBoard reads nothing outside the runs and never blocks. A label is one path component of
at most 120 characters, its control characters escaped.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from regablate import hparams as hp
from regablate.untrusted import escape_control

EXPERIMENT = "events.out.tfevents.experiment"
MAX_NAME = 120  # characters of a label as a path component
MAX_DEPTH = 3   # folders below a run's tb/ that are mirrored


def cache_dir(dirs: list[Path]) -> Path:
    """`$REGABLATE_CACHE/tb/<id of the dirs>` (default ~/.cache/regablate)."""
    key = hashlib.sha1("\0".join(sorted(str(d.resolve()) for d in dirs)).encode()).hexdigest()[:12]
    return Path(os.environ.get("REGABLATE_CACHE", "~/.cache/regablate")).expanduser() / "tb" / key


def _safe(label: str) -> str:
    """A label as one path component: no separators, control characters escaped, at most
    MAX_NAME characters (a longer one is cut and ends in a hash of the whole)."""
    name = escape_control(re.sub(r"[/\\]", "_", label)).strip()
    if name in ("", ".", ".."):
        return "run"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(label.encode("utf-8", "replace")).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 10]}…{digest}"
    return name


def _real_dir(path: Path) -> bool:
    """A directory, not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _identity(run) -> dict:
    """A run's hparams from its stored config, as the runner writes them."""
    nested: dict = {}
    for key, value in run.config.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    values = hp.identity(nested)
    values["reg"] = hp.stack_name(run.stack)
    return values


def build(dirs: list[Path], view: Path,
          warn: Callable[[str], None] | None = None) -> tuple[int, int]:
    """(Re)build `view` over the runs under `dirs`; returns (runs shown, groups). `warn` is
    told, in one line each, of every run dir skipped and every tb/ entry not linked."""
    from regablate.report.collect import collect
    from regablate.report.select import make_groups

    warn = warn or (lambda line: None)
    runs, skipped = collect(dirs)
    for path, reason in skipped:
        warn(f"skipped {path}: {reason}")
    runs = [r for r in runs if _real_dir(r.path / "tb")]
    groups = make_groups(runs)
    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    members = [(g, r) for g in groups for r in g.runs]
    sessions = hp.fill([_identity(r) for _, r in members])
    taken: set[str] = set()
    for (g, run), values in zip(members, sessions):
        name = f"{_safe(g.name)}/seed={run.summary.get('seed')}"
        unique, i = name, 2
        while unique in taken:  # another data_seed of the same seed, say
            unique, i = f"{name}-{i}", i + 1
        taken.add(unique)
        _link_run(run.path / "tb", view / unique, values, g.name, run.status, warn)
    hp.write(view / EXPERIMENT, [hp.experiment(sessions, _metrics(r for _, r in members))])
    return len(members), len(groups)


def _metrics(runs) -> list[str]:
    return sorted({r.metric for r in runs if r.metric})


def describe_sweep(sweep_dir: Path) -> None:
    """The HParams experiment of a finished sweep at its root, for `tensorboard --logdir
    SWEEP_DIR` without regablate: the same columns whatever order TensorBoard reads in."""
    from regablate.report.collect import collect

    runs = [r for r in collect([sweep_dir])[0] if _real_dir(r.path / "tb")]
    if runs:
        sessions = hp.fill([_identity(r) for r in runs])
        hp.write(sweep_dir / EXPERIMENT, [hp.experiment(sessions, _metrics(runs))])


def _link_run(tb: Path, into: Path, values: dict, label: str, status: str,
              warn: Callable[[str], None]) -> None:
    _mirror(tb, into, warn, 0)
    hp.write(into / hp.SESSION_FILE, [hp.session_start(values, label), hp.session_end(status)])


def _mirror(src: Path, into: Path, warn: Callable[[str], None], depth: int) -> None:
    """`into` holds a link to each regular file of `src` and, MAX_DEPTH deep, a folder for
    each of its folders; symbolic links and special files are left out with a warning."""
    into.mkdir(parents=True, exist_ok=depth > 0)
    try:
        entries = sorted(src.iterdir())
    except OSError as e:
        warn(f"not shown: {src} ({e.strerror or e})")
        return
    for entry in entries:
        if depth == 0 and entry.name == hp.SESSION_FILE:
            continue
        try:
            mode = entry.lstat().st_mode
        except OSError as e:  # gone since it was listed
            warn(f"not shown: {entry} ({e.strerror or e})")
            continue
        if stat.S_ISREG(mode):
            (into / entry.name).symlink_to(entry.resolve())
        elif stat.S_ISDIR(mode) and depth < MAX_DEPTH:
            _mirror(entry, into / entry.name, warn, depth + 1)
        else:
            what = "a symbolic link" if stat.S_ISLNK(mode) else "too deep" \
                if stat.S_ISDIR(mode) else "not a regular file"
            warn(f"not shown: {entry} ({what})")
