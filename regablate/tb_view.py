"""What `regablate tb` shows TensorBoard: a view of the runs, named by what they are.

The view is a folder of symbolic links (in regablate's cache, never in the results):

    <view>/events.out.tfevents.experiment        the HParams experiment of exactly these runs
    <view>/<group label>/seed=<s>/
        events.out.tfevents.session.hparams      session start (every hparam, group = label) and end
        events.out.tfevents.<…>  -> the run's tb/ event files (gap, lr, best/gap, weights/*)
        train/ val/ test/        -> the run's tb/train, tb/val, tb/test

so TensorBoard's run filter takes regablate's words (`dropout`, `p=0.5`, `seed=3`), the
HParams columns are the same whatever order runs are read in, every session has a value for
every column (a strength a run does not use is 0) and no group is dropped. Links scale to
thousands of runs; the view is rebuilt at each `regablate tb`, so it covers runs added since.
A sweep that ends also writes its experiment at its own root (`describe_sweep`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from regablate import hparams as hp

EXPERIMENT = "events.out.tfevents.experiment"


def cache_dir(dirs: list[Path]) -> Path:
    """`$REGABLATE_CACHE/tb/<id of the dirs>` (default ~/.cache/regablate)."""
    key = hashlib.sha1("\0".join(sorted(str(d.resolve()) for d in dirs)).encode()).hexdigest()[:12]
    return Path(os.environ.get("REGABLATE_CACHE", "~/.cache/regablate")).expanduser() / "tb" / key


def _safe(label: str) -> str:
    """A label as one path component."""
    return re.sub(r"[/\\\0]", "_", label).strip() or "run"


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


def build(dirs: list[Path], view: Path) -> tuple[int, int]:
    """(Re)build `view` over the runs under `dirs`; returns (runs shown, groups)."""
    from regablate.report.collect import collect
    from regablate.report.select import make_groups

    runs, _ = collect(dirs)
    runs = [r for r in runs if (r.path / "tb").is_dir()]
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
        _link_run(run.path / "tb", view / unique, values, g.name, run.status)
    hp.write(view / EXPERIMENT, [hp.experiment(sessions, _metrics(r for _, r in members))])
    return len(members), len(groups)


def _metrics(runs) -> list[str]:
    return sorted({r.metric for r in runs if r.metric})


def describe_sweep(sweep_dir: Path) -> None:
    """The HParams experiment of a finished sweep at its root, for `tensorboard --logdir
    SWEEP_DIR` without regablate: the same columns whatever order TensorBoard reads in."""
    from regablate.report.collect import collect

    runs = [r for r in collect([sweep_dir])[0] if (r.path / "tb").is_dir()]
    if runs:
        sessions = hp.fill([_identity(r) for r in runs])
        hp.write(sweep_dir / EXPERIMENT, [hp.experiment(sessions, _metrics(runs))])


def _link_run(tb: Path, into: Path, values: dict, label: str, status: str) -> None:
    into.mkdir(parents=True)
    for entry in tb.iterdir():
        if entry.name != hp.SESSION_FILE:
            (into / entry.name).symlink_to(entry.resolve())
    hp.write(into / hp.SESSION_FILE, [hp.session_start(values, label), hp.session_end(status)])
