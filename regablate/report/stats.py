"""Statistics over seeds: mean, sample std, t-based 95% interval, tests (regablate.report.paired),
Holm's correction.

NaNs (a metric a run did not report) and infinities are dropped before anything is computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from regablate.report.paired import MIN_SEEDS, NAMES, TESTS, paired_values, welch_test

LEVEL = 0.95
WELCH, PAIRED = NAMES["welch"], NAMES["t"]


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
    """`delta` = mean(values) − mean(baseline), or over `pairs` seeds the mean paired difference;
    two-sided p (NaN: none); the test that gave it (None: no test was run, fewer than 3 seeds);
    `reason`: why there is no p; `floor`: the smallest p the test can give at this n (None for
    the t-tests); `pairs`: where the groups ran different seeds, how many both ran (the
    comparison was paired over those alone), else None."""

    delta: float
    p: float
    test: str | None
    reason: str | None = None
    floor: float | None = None
    pairs: int | None = None

    @property
    def at_floor(self) -> bool:
        """p is the smallest the test could give at this n: more seeds could make it smaller."""
        return self.floor is not None and not math.isnan(self.p) and \
            self.p <= self.floor * (1 + 1e-9)


def compare(values: list, baseline: list, paired: bool = True, test: str = "t") -> Comparison:
    """values and baseline are (pairing key, number) lists, the key being (seed, data_seed).

    Paired (regablate.report.paired.paired_values, with `test`: "t", "signflip" or "wilcoxon")
    when allowed and each side holds a key once: over every seed when both ran the same ones,
    else over the seeds both ran when there are at least 3 of them (a seeds=auto arm stopped
    before its reference, a run that failed on one side: the pairing, data_seed included, is
    kept and Δ is the mean paired difference over those seeds, `pairs` of them). Otherwise
    Welch's unequal-variance t-test over all the values, which only `test="t"` falls back to (a
    sign-flip or Wilcoxon test needs pairs: no p, with the reason). No p (NaN, with `reason`)
    below 3 seeds, whatever the test (then `test` is None: no test was run), nor from paired
    differences, or groups, whose spread is float rounding (regablate.report.paired).
    """
    if test not in TESTS:
        raise ValueError(f"test {test!r}: allowed: {', '.join(TESTS)}")
    a = [(k, v) for k, v in values if math.isfinite(v)]
    b = [(k, v) for k, v in baseline if math.isfinite(v)]
    if not a or not b:
        return Comparison(math.nan, math.nan, None)
    delta = float(np.mean([v for _, v in a]) - np.mean([v for _, v in b]))
    ka, kb = [k for k, _ in a], [k for k, _ in b]
    once = len(set(ka)) == len(ka) and len(set(kb)) == len(kb)
    common = set(ka) & set(kb)
    pairs = None
    if paired and once and set(ka) == set(kb):
        r = paired_values(dict(a), dict(b), test)
    elif paired and once and len(common) >= MIN_SEEDS:
        r = paired_values({k: v for k, v in a if k in common}, {k: v for k, v in b if k in common}, test)
        delta, pairs = r.estimate, r.n
    elif test == "t":
        r = welch_test([v for _, v in a], [v for _, v in b])
    else:
        why = "--unpaired" if not paired else f"{len(common)} seeds in common"
        return Comparison(delta, math.nan, None,
                          f"the {NAMES[test]} needs at least {MIN_SEEDS} of the baseline's seeds ({why}); "
                          "the t-test falls back to Welch's", None)
    if r.n < MIN_SEEDS:
        return Comparison(delta, math.nan, None, r.reason, None, pairs)
    return Comparison(delta, math.nan if r.p is None else r.p, r.name, r.reason, r.floor, pairs)


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaNs stay NaN and do not count as tests)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    out, running = [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        out[i] = running
    return out
