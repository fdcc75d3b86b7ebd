"""`hydra/sweeper=optuna`: the sweeper's settings and their ConfigStore entry.

Registers regablate's resolvers (`regablate.rundir.claim.register_resolver`) on Hydra's
plugin discovery. Hydra executes this module without an entry in sys.modules: no `from
__future__ import annotations` here (dataclasses would fail).
"""

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from regablate.rundir.claim import register_resolver

register_resolver()


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.regablate_optuna.optuna_sweeper.OptunaSweeper"
    n_trials: int = 20  # the study's total number of trials (a resumed study runs only the missing ones)
    seeds_per_trial: int = 3  # each trial's objective is the mean over seeds 0..n-1 (same seeds for every trial)
    seeds: Optional[list[int]] = None  # noqa: UP045  explicit seeds instead of 0..seeds_per_trial-1
    n_jobs: int = 2  # trials asked at once: one launcher batch is n_jobs x seeds jobs
    sampler: str = "tpe"  # tpe | random | cmaes | qmc | gp | grid | bruteforce | nsga2 (optuna.samplers)
    sampler_seed: Optional[int] = None  # noqa: UP045  the sampler's seed, for a reproducible search
    direction: str = "auto"  # auto (from trainer.objective and the task) | minimize | maximize
    storage: Optional[str] = None  # noqa: UP045  null: in memory; sqlite:///study.db: resumable
    study_name: Optional[str] = None  # noqa: UP045  the study in `storage` (null: a new name)
    params: Optional[dict[str, str]] = field(default=None)  # noqa: UP045  search space, as overrides
    design: Optional[str] = None  # noqa: UP045  refused: an ablation design runs on the default sweeper


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf,
                             provider="regablate")
