"""`hydra/sweeper=regablate`: the sweeper's settings and their ConfigStore entry.

Registers regablate's resolvers (`regablate.rundir.claim.register_resolver`) on Hydra's
plugin discovery, so any app composing conf/ resolves them. Hydra executes this module
without an entry in sys.modules: no `from __future__ import annotations` here (dataclasses
would fail).
"""

from dataclasses import dataclass
from typing import Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeperConf
from hydra.core.config_store import ConfigStore

from regablate.rundir.claim import register_resolver

register_resolver()


@dataclass
class RefusingSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.regablate_sweeper.refusing_sweeper.RefusingSweeper"
    # an ablation design over the +reg=[...] stack: factorial | leave_one_out | add_one_in
    design: Optional[str] = None  # noqa: UP045
    # auto: add seeds in rounds until each arm is decided against the reference (regablate.sweep.seed_rounds)
    seeds: Optional[str] = None  # noqa: UP045
    min_seeds: int = 3  # seeds of every arm in round 1
    max_seeds: int = 20  # no arm runs more
    step: int = 2  # seeds added per round to the undecided arms and the reference
    alpha: float = 0.05  # family-wise error over arms and looks
    delta: Optional[float] = None  # noqa: UP045  a difference smaller than this counts as none (equivalent)
    reference: Optional[str] = None  # noqa: UP045  an arm's label; default: the arm without a regulariser
    metric: str = "val"  # val | test | gap


ConfigStore.instance().store(group="hydra/sweeper", name="regablate", node=RefusingSweeperConf,
                             provider="regablate")
