"""The whole run's settings: the composed config checked against typed schemas."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from regablate.config.objective import is_valid as is_objective
from regablate.config.schema import SEED_LIMIT, check, nonneg, parse, positive
from regablate.data import DATASETS
from regablate.errors import ConfigError
from regablate.models import MODELS
from regablate.regularisers import Stack, build_stack
from regablate.training.optim import OPTIMISERS, SCHEDULES

MAX_THREADS = 1024  # more is no machine's core count (and libgomp fails to make 20,000)
MAX_BINS = 10_000  # far more bins than a validation split fills; 1e12 would not fit in memory


@dataclass
class EarlyStopping:
    patience: int = nonneg(10)  # epochs without val improvement before stopping; 0 disables
    min_delta: float = nonneg(0.0)  # improvement smaller than this does not count
    monitor: Literal["loss", "metric"] = "loss"  # val loss, or the val primary metric


@dataclass
class TrainerSettings:
    max_epochs: int = positive(100)
    batch_size: int = positive(64)
    eval_batch_size: int = positive(4096)  # evaluation runs over full splits in such chunks
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    restore_best: bool = True  # metrics (and best.pt) at the best val epoch
    device: str = check(lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"),
                        "must be auto, cpu, cuda or cuda:N", "auto")
    amp: bool = False  # bf16 autocast (CUDA only; channels_last is used for conv models on CUDA)
    threads: int = check(lambda v: 0 <= v <= MAX_THREADS, f"must be in [0, {MAX_THREADS}] (0: auto)",
                         0)  # torch intra-op threads; 0 = auto (cores shared among parallel jobs)
    progress: Literal["auto", "rich", "plain", "none"] = "auto"  # auto: rich on a terminal
    tensorboard: bool = True  # write tb/ event files
    checkpoint: bool = True  # checkpoints/last.pt by time, at the end and on interrupt (best.pt always)
    checkpoint_every_s: float = nonneg(60.0)  # seconds between checkpoints; 0 = every epoch
    resume: Literal["never", "auto"] = "never"  # auto: skip a finished run, continue from last.pt
    objective: str = check(is_objective, "val_loss, val_metric, gap, or a sum such as val_loss+0.5*gap",
                           "val_loss")  # what a tuning sweeper minimises/maximises (regablate.config.objective)


@dataclass
class EvalSettings:
    mc_samples: int = nonneg(0)  # MC-dropout passes after training; 0 = off
    histogram_every: int = nonneg(10)  # weight histograms in TensorBoard every N epochs; 0 = off
    calibration_bins: int = check(lambda v: 1 <= v <= MAX_BINS, f"must be in [1, {MAX_BINS}]",
                                  15)  # equal-width bins of the ECE and reliability diagram


@dataclass
class Settings:
    seed: int
    data_seed: int
    dataset: Any
    model: Any
    optim: Any
    sched: Any
    trainer: TrainerSettings
    stack: Stack
    eval: EvalSettings = field(default_factory=EvalSettings)


TOP_LEVEL = ("seed", "data_seed", "dataset", "model", "optim", "sched", "trainer", "reg", "eval")


def _by_name(node: Any, key: str, registry: Mapping) -> Any:
    if not isinstance(node, Mapping) or "name" not in node:
        raise ConfigError(key, node, f"must be a mapping with a name; names: {', '.join(registry)}")
    entry = registry.get(node["name"])
    if entry is None:
        raise ConfigError(f"{key}.name", node["name"], "allowed: " + ", ".join(registry))
    cls = entry[0] if isinstance(entry, tuple) else entry
    try:
        return parse(cls, node, key)
    except ConfigError as e:  # `optim.name=sgd` keeps adam's settings: say to choose the group
        leaf = e.key.rsplit(".", 1)[-1]
        others = [n for n, other in registry.items() if n != node["name"] and leaf in
                  {f.name for f in fields(other[0] if isinstance(other, tuple) else other)}]
        if not e.allowed.startswith("unknown key") or not others:
            raise
        raise ConfigError(f"{key}.name", node["name"], f"changes the name, not the group: {e.key} is "
                          f"{others[0]}'s; choose the group, {key}={node['name']}") from None


def load_settings(cfg: Mapping) -> Settings:
    """Check a resolved config (plain dict) and return typed settings, or raise ConfigError."""
    for key in cfg:
        if key not in TOP_LEVEL:
            raise ConfigError(key, cfg[key], "unknown key; allowed: " + ", ".join(TOP_LEVEL))
    for key in ("seed", "data_seed"):
        value = cfg.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < SEED_LIMIT:
            raise ConfigError(key, value, "must be an integer in [0, 2^64)")
    return Settings(
        seed=cfg.get("seed", 0),
        data_seed=cfg.get("data_seed", cfg.get("seed", 0)),
        dataset=_by_name(cfg.get("dataset"), "dataset", DATASETS),
        model=_by_name(cfg.get("model"), "model", MODELS),
        optim=_by_name(cfg.get("optim"), "optim", OPTIMISERS),
        sched=_by_name(cfg.get("sched", {"name": "none"}), "sched", SCHEDULES),
        trainer=parse(TrainerSettings, cfg.get("trainer"), "trainer"),
        stack=build_stack(cfg.get("reg")),
        eval=parse(EvalSettings, cfg.get("eval"), "eval"),
    )
