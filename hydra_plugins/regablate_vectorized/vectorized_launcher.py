"""`hydra/launcher=vectorized`: a sweep's compatible jobs train as one stacked model.

    regablate run -m hydra/launcher=vectorized +reg=none,dropout,batchnorm seed=0,1,2,3,4

A shell: Hydra imports every plugin on every command, so the launcher lives in
`regablate.sweep.vectorized_launch` (which says what it does) and is imported when the
launcher is made for a sweep; torch and the trainer only when a sweep is launched. The
settings are in `config.py`.
"""

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.regablate_vectorized.config import VectorizedLauncherConf  # noqa: F401  registers it


class VectorizedLauncher(Launcher):
    def __init__(self, max_members: int | None = None, memory_fraction: float = 0.5,
                 single: str = "auto", executor: str = "local", slurm: Any = None) -> None:
        from regablate.sweep.vectorized_launch import VectorizedLaunch

        super().__init__()
        self.launcher = VectorizedLaunch(max_members=max_members, memory_fraction=memory_fraction,
                                         single=single, executor=executor, slurm=slurm)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def composes_every_job_first(self, batch: Sequence[Sequence[str]]) -> bool:
        """Whether `launch` composes every job of the batch before it runs any, so the
        sweeper's validation of the batch would only compose it twice (regablate's sweeper asks)."""
        return self.launcher.composes_every_job_first(batch)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.launcher.launch(job_overrides, initial_job_idx)
