"""Paired tests over seeds that give no p-value the data cannot carry.

    r = paired_test(diffs, test="t")        # or "signflip", "wilcoxon"
    r.p is None and r.reason                # "fewer than 3 seeds (n = 2)", ...

`diffs` are per-seed differences d_i = v_arm(seed i) − v_ref(seed i) (NaN/inf dropped). Every
test reports the mean difference d̄ with its t interval d̄ ± t_{n−1, 0.975}·s/√n (the interval is
the same whichever test gives p; it is NaN below 2 seeds), and a two-sided p:

- `t`: T = d̄ / (s/√n) against t_{n−1} (scipy.stats.ttest_1samp).
- `signflip`: the exact paired permutation test: under H0 each d_i is as likely to be −d_i, so
  p = #{ε ∈ {±1}^n : |Σ ε_i d_i| ≥ |Σ d_i|} / 2^n, over all 2^n sign patterns for n ≤ 16; above,
  over `SIGNFLIP_DRAWS` random patterns (seed `SIGNFLIP_SEED`), p = (1 + #hits)/(1 + draws).
  Its floor, the smallest p it can give, is 2/2^n (the observed pattern and its mirror): 1/16 at
  n = 5 — no result at n = 5 can be "p < 0.05" — so `floor` is reported for the report to show
  when p equals it.
- `wilcoxon`: scipy's signed-rank test on the non-zero d_i (the exact null distribution for small
  n without ties; with ties, the exact permutation of the mid-ranks up to n = 13, the normal
  approximation above). |d_i| equal up to float rounding are ties: one image more is the same
  difference 1/N at every accuracy level, whatever the last bit of v_arm − v_ref. Its floor is
  also 2/2^n', n' the non-zero differences, when exact (none where scipy's normal approximation
  gave a p below it).

No p (None, with `reason`):
- below `MIN_SEEDS` = 3 seeds, whatever the test: one or two seeds estimate no spread worth
  testing against;
- when the differences are equal up to float rounding: max d − min d ≤ RTOL·scale, scale the
  largest |value| involved (the compared metrics when given, else the |d_i|). RTOL = 1e-9:
  float64 rounding of a difference is ≈ 2.2e-16·scale, so 1e-9 leaves six orders of magnitude of
  headroom for rounding accumulated upstream (means over batches, float32 sums stay above this
  only where the values themselves differ), while a real spread of a metric is far larger: an
  accuracy over N examples moves in steps of 1/N ≥ 1e-7 for any N ≤ 10^7. Zero spread makes T
  infinite (or a ratio of rounding errors: 2 seeds at exactly +2/144 each give p = 2.5e-15 from
  ttest_rel), which is no evidence of anything.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["TestResult", "paired_test", "paired_values", "welch_test", "equal_reason",
           "signflip_floor", "TESTS", "MIN_SEEDS", "RTOL", "SIGNFLIP_DRAWS", "SIGNFLIP_SEED",
           "EXACT_MAX_N", "LEVEL"]

TESTS = ("t", "signflip", "wilcoxon")
MIN_SEEDS = 3
RTOL = 1e-9
EXACT_MAX_N = 16          # all 2^n sign patterns up to here (65,536 x 16)
SIGNFLIP_DRAWS = 100_000  # Monte Carlo sign patterns above EXACT_MAX_N (MC SE of p <= 0.0016)
SIGNFLIP_SEED = 0
WILCOXON_EXACT_MAX_N = 50  # scipy's method="auto" uses the exact distribution up to here
LEVEL = 0.95
NAMES = {"t": "paired t-test", "signflip": "paired sign-flip permutation test",
         "wilcoxon": "Wilcoxon signed-rank test", "welch": "Welch's t-test"}


@dataclass(frozen=True)
class TestResult:
    """n seeds; estimate = mean difference with its 95% t interval [lo, hi]; two-sided p or None
    with `reason`; `floor`: the smallest p this test can give at this n (None: no floor that
    matters, as for the t-test); `test`: the test's key."""

    n: int
    estimate: float
    lo: float
    hi: float
    p: float | None
    reason: str | None
    floor: float | None
    test: str

    @property
    def name(self) -> str:
        return NAMES[self.test]

    @property
    def at_floor(self) -> bool:
        """p is the smallest this test could give at this n: more seeds could make it smaller."""
        return self.p is not None and self.floor is not None and self.p <= self.floor * (1 + 1e-9)

    def to_json(self) -> dict:
        f = [None if x is None or not math.isfinite(x) else float(x)
             for x in (self.estimate, self.lo, self.hi)]
        return {"test": self.test, "n": self.n, "estimate": f[0], "ci95": [f[1], f[2]],
                "p": self.p, "reason": self.reason, "floor": self.floor}


def _finite(values) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return x


def equal_reason(values, scale: float = 0.0, what: str = "differences") -> str | None:
    """"<what> equal up to float rounding" when max − min ≤ RTOL·max(scale, max|value|), else
    None. `scale`: the magnitude of the numbers the values were computed from."""
    x = _finite(values)
    if len(x) < 2:
        return None
    size = max(float(scale), float(np.abs(x).max()), np.finfo(float).tiny)
    return f"{what} equal up to float rounding" if x.max() - x.min() <= RTOL * size else None


def signflip_floor(n: int) -> float:
    """Smallest two-sided p of the sign-flip test at n seeds: 2/2^n exact, 1/(draws+1) above."""
    return 2.0 ** (1 - n) if n <= EXACT_MAX_N else max(2.0 ** (1 - n), 1 / (SIGNFLIP_DRAWS + 1))


def _interval(d: np.ndarray) -> tuple[float, float, float]:
    n, mean = len(d), float(d.mean()) if len(d) else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def _signflip_p(d: np.ndarray, scale: float) -> float:
    """Two-sided sign-flip p of sum(d); ties within rounding (RTOL·scale·n) count as hits."""
    n = len(d)
    obs = abs(float(d.sum()))
    tol = RTOL * max(scale, float(np.abs(d).max())) * n
    if n <= EXACT_MAX_N:
        codes = np.arange(2 ** n, dtype=np.int64)[:, None]
        signs = 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)          # 2^n x n, every pattern
        return float(np.mean(np.abs(signs @ d) >= obs - tol))
    rng = np.random.default_rng(SIGNFLIP_SEED)
    hits = 0
    for start in range(0, SIGNFLIP_DRAWS, 10_000):                  # 10,000 x n at a time
        signs = rng.choice((-1.0, 1.0), size=(min(10_000, SIGNFLIP_DRAWS - start), n))
        hits += int(np.sum(np.abs(signs @ d) >= obs - tol))
    return (1 + hits) / (1 + SIGNFLIP_DRAWS)


def _rounding_ties(d: np.ndarray, tol: float) -> np.ndarray:
    """The differences with |d_i| that differ by no more than `tol` made exactly equal (the
    smallest of each run of such values, signs kept) and |d_i| <= tol made 0: one image more in
    either arm is the same difference 1/N whatever the accuracies around it, but float rounding
    of v_arm − v_ref gives it a different last bit at each level, and the signed-rank test would
    rank those ties one above another instead of giving them their mid-rank."""
    size = np.abs(d)
    order = np.argsort(size, kind="stable")
    snapped = size.copy()
    first = 0.0  # each run of near-equal sizes takes its first (smallest) value
    for i, j in enumerate(order):
        if i == 0 or size[j] - first > tol:
            first = size[j]
        snapped[j] = 0.0 if first <= tol else first
    return np.sign(d) * snapped


def paired_test(diffs, test: str = "t", scale: float = 0.0) -> TestResult:
    """Two-sided test of mean difference 0 over seeds (see the module doc). `scale`: the
    magnitude of the compared values (for the float-rounding rule); `paired_values` sets it."""
    if test not in TESTS:
        raise ValueError(f"test {test!r}: allowed: {', '.join(TESTS)}")
    d = _finite(diffs)
    n = len(d)
    est, lo, hi = _interval(d)
    floor = signflip_floor(n) if test == "signflip" and n else None

    def none(reason: str) -> TestResult:
        return TestResult(n, est, lo, hi, None, reason, floor, test)

    if n < MIN_SEEDS:
        return none(f"fewer than {MIN_SEEDS} seeds (n = {n})")
    if reason := equal_reason(d, scale):
        return none(reason)
    if test == "t":
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    elif test == "signflip":
        p = _signflip_p(d, scale)
    else:
        d = _rounding_ties(d, RTOL * max(scale, float(np.abs(d).max())))
        nonzero = int(np.count_nonzero(d))  # differences that are rounding count as zero
        if nonzero < MIN_SEEDS:
            return none(f"fewer than {MIN_SEEDS} non-zero differences (n = {nonzero})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's "exact p not possible with ties" notes
            p = float(stats.wilcoxon(d).pvalue)
        floor = 2.0 ** (1 - nonzero) if nonzero <= WILCOXON_EXACT_MAX_N else None
        if floor is not None and p < floor * (1 - 1e-9):
            floor = None  # scipy's normal approximation (ties, larger n): no such floor
    return TestResult(n, est, lo, hi, min(1.0, p), None, floor, test)


def paired_values(values: dict, baseline: dict, test: str = "t") -> TestResult:
    """`paired_test` on {pairing key: value} dicts (key: (seed, data_seed)), over the keys both
    hold with finite values; the float-rounding scale is the largest |value| compared."""
    keys = [k for k in values if k in baseline and _ok(values[k]) and _ok(baseline[k])]
    a = np.asarray([values[k] for k in keys], dtype=float)
    b = np.asarray([baseline[k] for k in keys], dtype=float)
    scale = float(max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0)))
    return paired_test(a - b, test, scale)


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def welch_test(values, baseline) -> TestResult:
    """Welch's unequal-variance t-test of mean(values) − mean(baseline), for unpaired groups.
    No p below 3 values in either group, nor when both groups' values are each equal up to float
    rounding (no spread to test against: T would be infinite, or a ratio of rounding errors).
    One constant group and one with spread is an ordinary case: T = (ā − b̄) / √(s²/n) of the
    other group, with its n − 1 degrees of freedom (a group whose spread is rounding counts as
    exactly constant). Interval: Welch–Satterthwaite."""
    a, b = _finite(values), _finite(baseline)
    n = min(len(a), len(b))
    est = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    scale = float(max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0)))
    # a group whose spread is rounding has no variance: its values are its mean
    a, b = (np.full(len(x), x.mean()) if equal_reason(x, scale) else x for x in (a, b))
    lo = hi = math.nan
    if len(a) >= 2 and len(b) >= 2:
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = math.sqrt(va + vb)
        if se > 0:
            df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
            half = float(stats.t.ppf(0.5 + LEVEL / 2, df)) * se
            lo, hi = est - half, est + half
    if n < MIN_SEEDS:
        return TestResult(n, est, lo, hi, None, f"fewer than {MIN_SEEDS} seeds (n = {n})", None,
                          "welch")
    if a.min() == a.max() and b.min() == b.max():
        return TestResult(n, est, lo, hi, None,
                          "values equal up to float rounding within each group", None, "welch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's precision notes on a constant group
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return TestResult(n, est, lo, hi, p, None, None, "welch")
