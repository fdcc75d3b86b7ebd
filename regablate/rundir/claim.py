"""Who may write a run dir: one process at a time, and never over a run that is already there.

`claim(run_dir, resume)` takes an exclusive lock on the directory itself (`flock`, released
by the kernel when the process ends, even on SIGKILL) and then checks it: a dir that holds a
`summary.json` is refused unless `trainer.resume=auto`, and a new run in a dir that holds other
things than a run's files (a new run goes into a new or empty dir). A refused job touches nothing, Hydra's
`.hydra/` files included: Hydra writes none itself (`hydra.output_subdir: null`, and no job log
file), regablate writes them once it holds the lock (`write_hydra_files`).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from regablate.errors import UsageError

WAYS_ON = "continue it with trainer.resume=auto, or choose another hydra.run.dir / hydra.sweep.dir"


class RunRefused(UsageError):
    """This job may not write `run_dir`; nothing in it was touched."""

    def __init__(self, run_dir: Path, why: str, ways_on: str = WAYS_ON, busy: bool = False):
        self.run_dir, self.why, self.ways_on, self.busy = Path(run_dir), why, ways_on, busy
        super().__init__(f"{run_dir} {why}; {ways_on}")

    def __reduce__(self):  # crosses process boundaries (joblib, submitit) intact
        return type(self), (self.run_dir, self.why, self.ways_on, self.busy)


def is_run_dir(path: Path) -> bool:
    """A dir that holds a run: the `.hydra/config.yaml` its launch wrote first, or a summary.json
    that is a run's (its status and seed; a report written as summary.json is not one)."""
    import json

    from regablate.rundir.untrusted import SMALL_CAP

    if (path / ".hydra" / "config.yaml").is_file():
        return True
    summary = path / "summary.json"
    try:
        if not summary.is_file() or summary.stat().st_size > SMALL_CAP:
            return False
        doc = json.loads(summary.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "status" in doc and "seed" in doc


def _absolute(path) -> Path:
    """`path` made absolute with `..` and links resolved (where it would really be written)."""
    return Path(os.path.realpath(path))


def enclosing_run(path: Path) -> Path | None:
    """The run dir that `path` lies inside, if any (a run dir holds only what its run writes).
    The walk up stops at a sweep's root (multirun.yaml): nothing above one is a run."""
    for d in _absolute(path).parents:
        if is_run_dir(d):
            return d
        if (d / "multirun.yaml").is_file():
            return None
    return None


def within_run(folder: Path) -> str | None:
    """Why nothing else may be written in `folder`: "is a run dir", "is inside the run dir D",
    or None when it is neither."""
    if is_run_dir(_absolute(folder)):
        return "is a run dir"
    outer = enclosing_run(folder)
    return None if outer is None else f"is inside the run dir {outer}"


def check_sweep_dir(sweep_dir: Path) -> None:
    """Refuse a `hydra.sweep.dir` that is a run dir or lies inside one: its multirun.yaml and job
    dirs would go among that run's files and hide it from the report."""
    where = within_run(sweep_dir)
    if where:
        raise UsageError(f"hydra.sweep.dir={sweep_dir}: {where}, which holds only what its run writes; "
                         "give the sweep its own hydra.sweep.dir")


@contextmanager
def _held(directory: Path, busy, unlockable_ok: bool = False) -> Iterator[None]:
    """`directory` (made if missing) held by this process (`flock`, exclusive) while inside;
    `busy()` is raised when another process holds it. `unlockable_ok`: where the file system
    cannot lock (some network mounts), go on unheld."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy() from None
        except OSError:
            if not unlockable_ok:
                raise
        yield
    finally:
        os.close(fd)  # releases the lock


def hold_sweep_dir(sweep_dir: Path):
    """Hold a sweep's root for this sweep while it runs, as `claim` holds a run dir: a second
    sweep into it meanwhile, the same or another, is refused before it reads or writes
    multirun.yaml (two sweeps started together each found no job there, and the second's
    multirun.yaml replaced the first's: its continue command then fit no run)."""
    return _held(sweep_dir, lambda: UsageError(
        f"hydra.sweep.dir={sweep_dir} is being swept by another process: wait for it to end "
        f"(regablate status {sweep_dir}), or give this sweep its own hydra.sweep.dir"), unlockable_ok=True)


@contextmanager
def claim(run_dir: Path, resume: str = "never") -> Iterator[None]:
    """Hold `run_dir` for this process while the body writes it (see the module docstring).
    A dir inside another run dir, or a sweep's root (multirun.yaml), is refused before anything
    is made."""
    run_dir = Path(run_dir)
    outer = enclosing_run(run_dir)
    if outer is not None:
        raise RunRefused(run_dir, f"is inside the run dir {outer}, which holds only what its run writes",
                         "choose another hydra.run.dir / hydra.sweep.dir")
    if (run_dir / "multirun.yaml").exists():
        raise RunRefused(run_dir, "is a sweep's dir (multirun.yaml): its runs are its job dirs",
                         "report it with regablate report; choose another hydra.run.dir")
    with _held(run_dir, lambda: RunRefused(run_dir, "is being written by another process",
                                           "wait for it, or choose another hydra.run.dir / hydra.sweep.dir",
                                           busy=True)):
        if not (run_dir / "summary.json").exists():
            _refuse_other_files(run_dir)
        elif resume != "auto":
            raise RunRefused(run_dir, "already holds a run (summary.json)")
        yield


RUN_FILES = frozenset({"summary.json", "metrics.csv", "tb", "checkpoints"})
HYDRA_FILES = frozenset({"config.yaml", "hydra.yaml", "overrides.yaml"})


def _hydras(folder: Path) -> bool:
    """Whether `folder` holds Hydra's files of a job and nothing else (another hydra.output_subdir)."""
    try:
        return folder.is_dir() and not folder.is_symlink() and set() < {p.name for p in folder.iterdir()} <= HYDRA_FILES
    except OSError:
        return False


def _refuse_other_files(run_dir: Path) -> None:
    """A new run goes into a new or empty dir, or one that holds only a run's files (a launch
    stopped before its summary.json: `.hydra/`, or Hydra's files under another
    `hydra.output_subdir`, a job's `.log`, hidden leftovers): never into a dir of other things
    (`hydra.run.dir=.` in a project or beside outputs/, `hydra.sweep.subdir=..`), which it would
    turn into a run dir that every reader takes for one run, hiding the runs inside it, and under
    which every later run would be refused."""
    try:
        entries = list(run_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    other = sorted(p.name for p in entries if not (
        p.name.startswith(".") or p.name in RUN_FILES or (p.suffix == ".log" and p.is_file()) or _hydras(p)))
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise RunRefused(run_dir, f"holds other files ({shown}) and no run: a run is written into a new "
                         "or empty dir", "choose another hydra.run.dir / hydra.sweep.dir")


def write_hydra_files(run_dir: Path, task_cfg, hydra_cfg, overrides, to_yaml=None) -> None:
    """Hydra's `.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml` as `run_job` writes them
    (the task's config unresolved, HydraConfig's node, the job's overrides), atomically, into a
    run dir this process holds (`claim`) that holds no run yet: the launch that makes a run
    writes them, and no other (not a refused job, a skipped finished run, nor a resume, which
    must have the same configuration, see `regablate.training.loop`)."""
    from omegaconf import OmegaConf

    from regablate.rundir.atomic import one_sync, write_atomic

    run_dir = Path(run_dir)
    if (run_dir / "summary.json").exists():
        return
    dump = to_yaml or OmegaConf.to_yaml
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    with one_sync():
        for name, cfg in (("config.yaml", task_cfg), ("hydra.yaml", hydra_cfg), ("overrides.yaml", overrides)):
            text = dump(cfg)
            write_atomic(out / name, lambda f, text=text: f.write(text))


def hydra_subdir(output_dir: str) -> str | None:
    """`hydra.output_subdir` of a job: `.hydra`, or None (Hydra then writes no `.hydra/` files)
    when the job's dir already holds a run. (Not used by conf/config.yaml any more: there Hydra
    writes none at all, see `write_hydra_files`; kept for configs that still name it.) `.hydra/` is written by the launch that makes a run
    and never again: not by a refused job, a skipped finished run, nor a resume (which must
    have the same configuration, see `regablate.training.loop`)."""
    return None if (Path(output_dir) / "summary.json").exists() else ".hydra"


def gpus_for(device: object) -> int | None:
    """`gpus_per_node` of conf/hydra/launcher/cluster.yaml: 1 for trainer.device=cuda or
    cuda:N, else None (no GPU request: auto and cpu runs are given none)."""
    return 1 if str(device).startswith("cuda") else None


def register_resolver() -> None:
    """`${regablate_hydra_subdir:DIR}` and `${regablate_gpus:DEVICE}` for conf/; registered by
    regablate's Hydra plugins on discovery, so any app composing conf/ resolves them."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("regablate_hydra_subdir"):
        OmegaConf.register_new_resolver("regablate_hydra_subdir", hydra_subdir)
    if not OmegaConf.has_resolver("regablate_gpus"):
        OmegaConf.register_new_resolver("regablate_gpus", gpus_for)
