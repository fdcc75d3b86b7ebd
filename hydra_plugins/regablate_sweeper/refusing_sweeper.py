"""`hydra/sweeper=regablate`: Hydra's basic sweeper, ending a sweep whose jobs did not all
complete with one closing line.

A shell: Hydra imports every plugin on every command, so the sweep itself lives in
`regablate.sweep.refusing` (and `regablate.sweep.submitit_jobs` under the submitit launchers)
and is imported when a sweep starts. The settings are in `config.py`.
"""

from collections.abc import Sequence
from typing import Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from hydra_plugins.regablate_sweeper.config import RefusingSweeperConf  # noqa: F401  registers it


class RefusingSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[dict] = None,  # noqa: UP045
                 design: Optional[str] = None, seeds: Optional[str] = None,  # noqa: UP045
                 reference: Optional[str] = None, **sequential) -> None:  # noqa: UP045
        super().__init__(max_batch_size, params)
        self.design, self.seeds, self.reference, self.sequential = design, seeds, reference, sequential

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Hydra composes every job of a batch here to report a composition error before any
        job runs; a launcher whose `composes_every_job_first(batch)` is true does that itself
        (the vectorized one, for regablate's own jobs), so the batch is not composed twice."""
        composes_first = getattr(self.launcher, "composes_every_job_first", None)
        if composes_first is None or not composes_first(batch):
            super().validate_batch_is_legal(batch)

    def sweep(self, arguments: list[str]) -> object:
        """BasicSweeper.sweep, running every batch and ending with one closing error."""
        from regablate.sweep import refusing

        return refusing.sweep(self, arguments)
