"""`trainer.objective`: the one number a run is judged by when a sweeper tunes it.

    val_loss            the val loss at the best epoch (minimised; the default)
    val_metric          the task's primary val metric: acc is maximised, mse minimised
    gap                 the train-val gap of the primary metric (minimised; alone it rewards
                        underfitting: a model that learns nothing has no gap, lint RA008)
    val_loss+0.5*gap    a weighted sum of val_loss and gap terms (minimised)

Read from a run's summary.json only, so the sweeper, `regablate report` and `hydra_main`'s return
value agree whatever launcher ran the job.
"""

from __future__ import annotations

import math
import re

SINGLE = ("val_loss", "val_metric", "gap")
_TERM = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(val_loss|gap)\s*$")


def terms(objective: str) -> list[tuple[float, str]] | None:
    """(weight, name) terms of a valid objective, else None."""
    if not isinstance(objective, str):
        return None
    if objective.strip() in SINGLE:
        return [(1.0, objective.strip())]
    out = []
    for part in objective.split("+"):
        m = _TERM.match(part)
        if m is None:
            return None
        out.append((float(m.group(1) or 1.0), m.group(2)))
    return out


def is_valid(objective: str) -> bool:
    return terms(objective) is not None


def maximised(objective: str, higher_is_better: bool | None) -> bool:
    """Whether a higher value is better: only val_metric of a task whose metric is (acc)."""
    return objective.strip() == "val_metric" and bool(higher_is_better)


def value(summary: dict, objective: str) -> float | None:
    """The objective of a completed run, or None (not completed, or a value is missing/NaN)."""
    parts = terms(objective)
    if parts is None or summary.get("status") != "completed":
        return None
    total = 0.0
    for w, name in parts:
        if name == "val_loss":
            v = (summary.get("val") or {}).get("loss")
        elif name == "val_metric":
            v = (summary.get("val") or {}).get(summary.get("metric"))
        else:
            v = summary.get("gap")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return None
        total += w * float(v)
    return total
