"""`hydra/sweeper=regablate`: Hydra's basic sweeper, ending a sweep whose jobs did not all
complete with one closing line.

A shell: Hydra imports every plugin on every command, so the sweep itself lives in
`regablate.sweep.refusing` (and `regablate.sweep.submitit_jobs` under the submitit launchers)
and is imported when a sweep starts. The settings are in `config.py`.
"""

import dataclasses
from collections.abc import Sequence
from typing import Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from hydra_plugins.regablate_sweeper.config import RefusingSweeperConf  # registers it


class RefusingSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[dict] = None,  # noqa: UP045
                 design: Optional[str] = None, seeds: Optional[str] = None,  # noqa: UP045
                 reference: Optional[str] = None, **sequential) -> None:  # noqa: UP045
        super().__init__(max_batch_size, params)
        self.design, self.seeds, self.reference, self.sequential = design, seeds, reference, sequential
        # a key the sweeper does not know (+hydra.sweeper.seed=auto) is refused when the sweep
        # starts (raised here, it would reach the user wrapped in Hydra's "Error in call to target")
        known = [f.name for f in dataclasses.fields(RefusingSweeperConf) if f.name != "_target_"]
        unknown = [k for k in sequential if k not in known]
        self.refusal = unknown and (f"hydra.sweeper.{unknown[0]}: not a setting of hydra/sweeper=regablate; "
                                    f"its settings: {', '.join(known)}")

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Hydra composes every job of a batch here to report a composition error before any
        job runs; a launcher whose `composes_every_job_first(batch)` is true does that itself
        (the vectorized one, for regablate's own jobs), so the batch is not composed twice."""
        composes_first = getattr(self.launcher, "composes_every_job_first", None)
        if composes_first is None or not composes_first(batch):
            super().validate_batch_is_legal(batch)

    def sweep(self, arguments: list[str]) -> object:
        """BasicSweeper.sweep, running every batch and ending with one closing error."""
        from regablate.errors import UsageError
        from regablate.sweep import refusing

        if self.refusal:
            raise UsageError(self.refusal)
        return refusing.sweep(self, arguments)
