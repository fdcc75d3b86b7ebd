"""`hydra/sweeper=optuna`: Optuna's ask-and-tell search, each trial the mean over seeds.

    regablate run -m hydra/sweeper=optuna +reg=l2 'reg.l2.lam=tag(log, interval(1e-6, 1e-1))' \\
        hydra.sweeper.n_trials=24 hydra.sweeper.seeds_per_trial=5 trainer.objective=val_loss

A shell: Hydra imports every plugin on every command, so the search lives in
`regablate.sweep.optuna_search` (which says what it does) and is imported when the sweeper is
made for a sweep; Optuna itself only when the sweep starts. The settings are in `config.py`.
"""

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.regablate_optuna.config import OptunaSweeperConf  # noqa: F401  registers it


class OptunaSweeper(Sweeper):
    def __init__(self, n_trials: int = 20, seeds_per_trial: int = 3, seeds: Any = None, n_jobs: int = 2,
                 sampler: str = "tpe", sampler_seed: Any = None, direction: str = "auto",
                 storage: Any = None, study_name: Any = None, params: Any = None, design: Any = None) -> None:
        from regablate.sweep.optuna_search import OptunaSearch

        self.search = OptunaSearch(n_trials=n_trials, seeds_per_trial=seeds_per_trial, seeds=seeds,
                                   n_jobs=n_jobs, sampler=sampler, sampler_seed=sampler_seed,
                                   direction=direction, storage=storage, study_name=study_name,
                                   params=params, design=design)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
