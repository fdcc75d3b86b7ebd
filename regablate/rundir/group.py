"""Group identity: a stable id of the science a run computes, without seeds.

Runs that differ only by seed, or only by an operational setting, share one group id; the
runner writes it into summary.json and the report recomputes it from `.hydra/config.yaml`.
An operational setting changes how a run is shown, saved or resumed, or where it runs, never
what it computes (up to float rounding), so it is in no group id and in no report label.

Kept in the id because they change the numbers: `trainer.amp` (bf16 numerics),
`trainer.restore_best` and `trainer.early_stopping.*` (which epoch is reported),
`eval.calibration_bins` (defines the ECE; bins are pooled per group) and `dataset.n_ood`
(defines the out-of-distribution set). Stdlib only: the report imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

SEEDS = ("seed", "data_seed")

OPERATIONAL = {
    "dataset.root": "where the prepared cache lives; the same bytes wherever it is",
    "trainer.device": "where the run computes; the same computation up to float rounding",
    "trainer.threads": "torch intra-op threads: speed, and float rounding at most",
    "trainer.eval_batch_size": "chunks of the full-split evaluation (eval mode): memory only",
    "trainer.progress": "how progress is shown",
    "trainer.tensorboard": "whether event files are written",
    "trainer.checkpoint": "whether last.pt is written every epoch (it consumes no randomness)",
    "trainer.checkpoint_every_s": "how often last.pt is written (it consumes no randomness)",
    "trainer.resume": "whether a run continues from last.pt, RNG states restored: the same run",
    "trainer.objective": "the number a tuning sweeper is told; the run computes the same",
    "eval.histogram_every": "TensorBoard weight histograms only",
    "eval.mc_samples": "MC-dropout passes after training: the model and its metrics are untouched",
}
NOT_IN_GROUP = (*SEEDS, *OPERATIONAL)


def override_key(override: str) -> str:
    """The config key a command-line override sets: `+reg.l2.lam=1e-4` -> `reg.l2.lam`."""
    return override.split("=", 1)[0].lstrip("+~")


def is_operational(override: str) -> bool:
    """Whether a command-line override only sets an operational setting (`trainer.resume=auto`,
    `trainer.progress=plain`): the same science with it or without it."""
    return override_key(override) in OPERATIONAL


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; an empty mapping stays as {} under its key."""
    if isinstance(cfg, dict) and cfg:
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: cfg}


def science(cfg: dict) -> dict[str, Any]:
    """The flattened settings that make up the group: seeds and operational ones left out."""
    return {k: v for k, v in flatten(cfg).items() if k not in NOT_IN_GROUP}


def group_id(cfg: dict) -> str:
    """Stable id of the config's science: runs that differ only by seed or operational settings
    share it."""
    flat = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v  # 0 == 0.0
            for k, v in science(cfg).items()}
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stack_name(reg: Iterable[str]) -> str:
    """The readable name of a regulariser stack, its names sorted and joined with `+`: `none`,
    `dropout`, `dropout+weight_decay`. The one definition: TensorBoard's `reg` hparam, the
    report's group names and `reg` column, and `--filter reg=...` all use it."""
    return "+".join(sorted(reg)) or "none"
