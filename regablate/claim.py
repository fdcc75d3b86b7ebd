"""Who may write a run dir: one process at a time, and never over a run that is already there.

`claim(run_dir, resume)` takes an exclusive lock on the directory itself (`flock`, released
by the kernel when the process ends, even on SIGKILL) and then checks it: a dir that holds a
`summary.json` is refused unless `trainer.resume=auto`. A refused job touches nothing, Hydra's `.hydra/` files included (`hydra_subdir`).
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


@contextmanager
def claim(run_dir: Path, resume: str = "never") -> Iterator[None]:
    """Hold `run_dir` for this process while the body writes it (see the module docstring)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunRefused(run_dir, "is being written by another process",
                             "wait for it, or choose another hydra.run.dir / hydra.sweep.dir", busy=True) from None
        if resume != "auto" and (run_dir / "summary.json").exists():
            raise RunRefused(run_dir, "already holds a run (summary.json)")
        yield
    finally:
        os.close(fd)  # releases the lock


def hydra_subdir(output_dir: str) -> str | None:
    """`hydra.output_subdir` of a job: `.hydra`, or None (Hydra then writes no `.hydra/` files)
    when the job's dir already holds a run. `.hydra/` is written by the launch that makes a run
    and never again: not by a refused job, a skipped finished run, nor a resume (which must
    have the same configuration, see `regablate.train`)."""
    return None if (Path(output_dir) / "summary.json").exists() else ".hydra"


def register_resolver() -> None:
    """`${regablate_hydra_subdir:DIR}` for conf/config.yaml; registered by regablate's Hydra
    plugins on discovery, so any app composing conf/ resolves it."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("regablate_hydra_subdir"):
        OmegaConf.register_new_resolver("regablate_hydra_subdir", hydra_subdir)
