"""Hydra's basic sweeper, ending a sweep that had refused jobs with one line that counts them.

A job is refused when its run dir already holds a run or another process is writing it
(`regablate.claim`); a refused job touches nothing. Hydra's basic sweeper would re-raise the
first failed job's error and say nothing of the others: this one counts the refusals in every
batch (from the JobReturns, so it works under any launcher: basic, joblib, submitit,
vectorized) and raises one UsageError after the batch, which `regablate run` prints as one
line with exit code 2. `multirun.yaml` stays as the launch that made the sweep dir wrote it
(a refused or resuming launch does not relabel the sweep). A sweep that ran writes its TensorBoard HParams experiment at its root
(`regablate.tb_view.describe_sweep`); a refused one writes nothing.

Hydra executes this module without an entry in sys.modules: no `from __future__ import
annotations` here (dataclasses would fail).
"""

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus

from regablate.claim import register_resolver

register_resolver()


@dataclass
class RefusingSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.regablate_sweeper.refusing_sweeper.RefusingSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="regablate", node=RefusingSweeperConf,
                             provider="regablate")


def refusals(results: Sequence[JobReturn]) -> list:
    """The RunRefused errors among a batch's results."""
    from regablate.claim import RunRefused

    return [r._return_value for r in results
            if r.status == JobStatus.FAILED and isinstance(r._return_value, RunRefused)]


def refused_message(refused: list, n_jobs: int) -> str:
    """'2 of 4 jobs refused: ...' with each reason, the dirs, and the ways on."""
    by_why: dict[str, list[str]] = {}
    for e in refused:
        by_why.setdefault(e.why, []).append(str(e.run_dir))
    reasons = "; ".join(f"{why}: {', '.join(dirs[:3])}{f' and {len(dirs) - 3} more' if len(dirs) > 3 else ''}"
                        for why, dirs in by_why.items())
    from regablate.claim import WAYS_ON

    own = [e.ways_on for e in refused if not e.busy and e.ways_on != WAYS_ON]  # e.g. another config
    ways = ("wait for them, or choose another hydra.sweep.dir" if all(e.busy for e in refused) else
            "; ".join(dict.fromkeys(own)) if own else
            "continue them with trainer.resume=auto, or choose another hydra.sweep.dir")
    return f"{len(refused)} of {n_jobs} jobs refused, their run dirs untouched ({reasons}); {ways}"


class RefusingSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Hydra composes every job of a batch here to report a composition error before any
        job runs; a launcher whose `composes_every_job_first(batch)` is true does that itself
        (the vectorized one, for regablate's own jobs), so the batch is not composed twice."""
        composes_first = getattr(self.launcher, "composes_every_job_first", None)
        if composes_first is None or not composes_first(batch):
            super().validate_batch_is_legal(batch)

    def sweep(self, arguments: list[str]) -> object:
        from regablate.atomic import write_atomic
        from regablate.errors import UsageError
        from regablate.tb_view import describe_sweep

        launch, refused_any = self.launcher.launch, []

        def launch_and_count(job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            results = launch(job_overrides, initial_job_idx)
            refused = refusals(results)
            refused_any.extend(refused)
            if refused:
                raise UsageError(refused_message(refused, len(results)))
            failed = [r for r in results if r.status == JobStatus.FAILED]
            if failed:  # recorded in their summary.json; the first error, as one line (Hydra's
                raise failed[0]._return_value  # own access would print its job-list line first)
            return results

        self.launcher.launch = launch_and_count
        sweep_file = Path(str(self.config.hydra.sweep.dir)) / "multirun.yaml"
        first = sweep_file.read_bytes() if sweep_file.exists() else None
        try:
            return super().sweep(arguments)
        finally:
            if first is not None:  # the launch that made the sweep dir wrote it; later ones leave it
                write_atomic(sweep_file, lambda f: f.write(first), mode="wb")
            if not refused_any:  # best effort: the sweep's outcome is already decided
                try:
                    describe_sweep(Path(str(self.config.hydra.sweep.dir)))
                except Exception as e:
                    print(f"regablate: warning: no TensorBoard experiment written for the sweep: {e}",
                          file=sys.stderr)
