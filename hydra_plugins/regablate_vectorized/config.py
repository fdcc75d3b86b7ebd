"""`hydra/launcher=vectorized`: the launcher's settings and their ConfigStore entry.

Hydra executes this module without an entry in sys.modules: no `from __future__ import
annotations` here (dataclasses would fail).
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class VectorizedLauncherConf:
    _target_: str = "hydra_plugins.regablate_vectorized.vectorized_launcher.VectorizedLauncher"
    # OmegaConf reads this dataclass: Optional, not `int | None`
    max_members: Optional[int] = None  # noqa: UP045  members per chunk; null = as many as fit in memory
    memory_fraction: float = 0.5  # share of free memory the default max_members may plan for
    # a chunk of one member: auto trains a conv member on a GPU the ordinary way (its stacked
    # form is slower there at K = 1) and stacks the rest; stacked / ordinary: always that way
    single: str = "auto"
    # local: chunks train in this process; slurm: each chunk is one SLURM job, through submitit
    executor: str = "local"
    # submitit's settings of those jobs: partition, timeout_min, cpus_per_task, mem_gb,
    # gpus_per_node, and any other of submitit's SlurmExecutor (account, qos, constraint, ...)
    # (hydra.launcher.slurm.partition=gpu, or +hydra.launcher.slurm.qos=high for one not listed)
    slurm: dict[str, Any] = field(default_factory=lambda: {
        "partition": None, "timeout_min": 60, "cpus_per_task": None, "mem_gb": None,
        "gpus_per_node": None})


ConfigStore.instance().store(group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf,
                             provider="regablate")
