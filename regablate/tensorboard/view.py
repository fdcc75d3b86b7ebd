"""What `regablate tb` shows TensorBoard: a view of the runs, named by what they are.

The view is a folder of symbolic links to the runs' files, plus the events files of the group
means it computes (in regablate's cache, never in the results):

    <view>/events.out.tfevents.experiment        the HParams experiment of exactly these runs
    <view>/<group label>/seed=<s>/
        events.out.tfevents.session.hparams      session start (every hparam, group = label) and end
        events.out.tfevents.<…>  -> the run's tb/ event files (gap, lr, best/gap, weights/*)
        train/ val/ test/        folders of links to the files of tb/train, tb/val, tb/test
    <view>/<group label>/mean/                   the group's mean over its completed seeds
        events…  gap, seeds      `seeds`: how many seeds reached the epoch
        train/ val/              loss, acc (or mse): the same tags as the seeds' sub-runs
        lo/ hi/                  the 95% t interval of each (epochs two or more seeds reached)

so TensorBoard's run filter takes regablate's words (`dropout`, `p=0.5`, `seed=3`), the
HParams columns are the same whatever order runs are read in, every session has a value for
every column (a strength a run does not use is 0) and no group is dropped. Links scale to
thousands of runs; the view is rebuilt at each `regablate tb`, so it covers runs added since.
A sweep that ends also writes its experiment, and its groups' means under `means/`, at its
own root (`describe_sweep`).

A group's mean is taken, epoch by epoch, over the completed runs (those the report averages)
that reached the epoch, from their metrics.csv as the report reads it: a seed that stopped
early counts up to its last epoch, a NaN or infinite value is left out of its point.

Run dirs are read as the report reads them (unreadable ones skipped, each with a warning); only
regular files are linked, never a symbolic link, FIFO or device under a run's tb/, so
TensorBoard reads nothing outside the runs and never blocks. A label is one path component of
at most 120 characters, its control characters escaped.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from regablate.errors import escape_control
from regablate.tensorboard import hparams as hp

EXPERIMENT = "events.out.tfevents.experiment"
MEANS = "means"  # the folder of a sweep's group means, at its root
_MEANS_MARK = ".regablate-means"  # in MEANS: regablate wrote it, so may replace it
MAX_STEP = 2**62  # epochs past this are not steps TensorBoard can hold
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
    values = hp.run_hparams(nested)
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
    write_means(groups, view, taken)
    hp.write(view / EXPERIMENT, [hp.experiment(sessions, _metrics(r for _, r in members))])
    return len(members), len(groups)


def _metrics(runs) -> list[str]:
    return sorted({r.metric for r in runs if r.metric})


def describe_sweep(sweep_dir: Path) -> None:
    """The HParams experiment of a finished sweep at its root, for `tensorboard --logdir
    SWEEP_DIR` without regablate: the same columns whatever order TensorBoard reads in; and
    its groups' means in `SWEEP_DIR/means/<label>/mean` (`write_means`), replaced at each
    call (a `means` there that regablate did not write is left alone, and no means written)."""
    from regablate.report.collect import collect
    from regablate.report.select import make_groups

    runs = [r for r in collect([sweep_dir])[0] if _real_dir(r.path / "tb")]
    if runs:
        sessions = hp.fill([_identity(r) for r in runs])
        hp.write(sweep_dir / EXPERIMENT, [hp.experiment(sessions, _metrics(runs))])
        means = sweep_dir / MEANS
        if os.path.lexists(means):
            if not (_real_dir(means) and (means / _MEANS_MARK).is_file()):
                return  # not regablate's: left alone, and no means written
            shutil.rmtree(means)  # the means of the sweep as it was: replaced
        means.mkdir()
        (means / _MEANS_MARK).write_text("group means written by regablate; rewritten at "
                                         "the end of each sweep into this dir\n")
        write_means(make_groups(runs), means)


def _epochs(run) -> dict[int, int]:
    """A run's epochs (whole numbers that can be steps) -> the index of their metrics.csv
    row; the last row of an epoch written twice."""
    out = {}
    for i, e in enumerate(run.curves.get("epoch", [])):
        if math.isfinite(e) and e == int(e) and 0 <= e < MAX_STEP:
            out[int(e)] = i
    return out


def write_means(groups, root: Path, taken: set[str] | None = None) -> int:
    """For each group with completed runs, `<root>/<label>/mean` (run level: `gap`, `seeds`;
    `train/`, `val/`: `loss`, `<metric>`) and `.../mean/lo`, `.../mean/hi` (the 95% t
    interval where two or more seeds have a value), one point per epoch; returns how many
    groups. `taken`: run names already used under `root`."""
    from regablate.report.stats import describe
    from regablate.tensorboard.records import EventsFile, scalars_event

    taken = set() if taken is None else taken
    written = 0
    for g in groups:
        runs = [r for r in g.done if r.curves.get("epoch")]
        if not runs:
            continue
        metric = runs[0].metric
        tags = [("", "gap", "gap")] + [(split, tag, f"{split}_{column}")
                                        for split in ("train", "val")
                                        for tag, column in (("loss", "loss"), (metric, metric))]
        rows: dict[int, list[tuple]] = {}
        for r in runs:
            for e, i in _epochs(r).items():
                rows.setdefault(e, []).append((r, i))
        name, n = f"{_safe(g.name)}/mean", 2
        while name in taken:
            name, n = f"{_safe(g.name)}/mean-{n}", n + 1
        taken.add(name)
        files: dict[tuple[str, str], EventsFile] = {}
        for step in sorted(rows):
            points: dict[tuple[str, str], list] = {}
            for split, tag, column in tags:
                values = [r.curves[column][i] for r, i in rows[step] if column in r.curves]
                s = describe(values)  # the finite ones
                if s.n:
                    points.setdefault(("", split), []).append((tag, s.mean))
                if s.n >= 2:
                    points.setdefault(("lo", split), []).append((tag, s.lo))
                    points.setdefault(("hi", split), []).append((tag, s.hi))
            points.setdefault(("", ""), []).append(("seeds", len(rows[step])))
            for where, pairs in points.items():
                if where not in files:
                    files[where] = EventsFile(root / name / where[0] / where[1])
                files[where].add(scalars_event(step, pairs))
        for f in files.values():
            f.flush()
        written += 1
    return written


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
