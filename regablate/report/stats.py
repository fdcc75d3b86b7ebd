"""Statistics over seeds: mean, sample std, t-based 95% interval, tests, Holm's correction.

NaNs (a metric a run did not report) and infinities are dropped before anything is computed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
WELCH, PAIRED = "Welch's t-test", "paired t-test"


@dataclass(frozen=True)
class Stat:
    """n values summarised; std (ddof=1) and the interval are NaN below two values."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float


def describe(values) -> Stat:
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Stat(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Stat(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * std / math.sqrt(n)
    return Stat(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    """`delta` = mean(values) − mean(baseline); two-sided p; the test that gave it (or None)."""

    delta: float
    p: float
    test: str | None


def compare(values: list, baseline: list, paired: bool = True) -> Comparison:
    """values and baseline are (pairing key, number) lists, the key being (seed, data_seed).

    A paired t-test when allowed and both sides hold the same >= 2 keys, once each; else
    Welch's unequal-variance t-test when each side has >= 2 values; else no p-value.
    """
    a = [(k, v) for k, v in values if math.isfinite(v)]
    b = [(k, v) for k, v in baseline if math.isfinite(v)]
    if not a or not b:
        return Comparison(math.nan, math.nan, None)
    delta = float(np.mean([v for _, v in a]) - np.mean([v for _, v in b]))
    ka, kb = [k for k, _ in a], [k for k, _ in b]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: p is NaN, said as "-"
        if paired and len(a) >= 2 and len(set(ka)) == len(ka) and set(ka) == set(kb) \
                and len(kb) == len(ka):
            xb = dict(b)
            p = stats.ttest_rel([v for _, v in a], [xb[k] for k, _ in a]).pvalue
            return Comparison(delta, float(p), PAIRED)
        if len(a) >= 2 and len(b) >= 2:
            p = stats.ttest_ind([v for _, v in a], [v for _, v in b], equal_var=False).pvalue
            return Comparison(delta, float(p), WELCH)
    return Comparison(delta, math.nan, None)


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaNs stay NaN and do not count as tests)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    out, running = [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        out[i] = running
    return out
