"""`regablate.effects` at the package level, light at import: numpy, scipy and pandas are
imported on the first call (the statistics live in regablate.report.effects)."""

from __future__ import annotations

__all__ = ["effects"]


def effects(runs, metric: str = "val", design: str | None = None, components=None,
            test: str = "t"):
    """Each regulariser's share of a stack's effect on `metric`, with t intervals over seeds:
    one row per estimate (component, kind, delta, lo, hi, p, p_holm, n, then the settings that
    tell cells apart, reason, design, metric, higher_is_better); `test`: "t", "signflip" or
    "wilcoxon" for p. See regablate.report.effects."""
    from regablate.report.effects import effects as compute

    return compute(runs, metric=metric, design=design, components=components, test=test)
