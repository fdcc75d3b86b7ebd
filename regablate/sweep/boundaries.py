"""Group-sequential boundaries of the seeds=auto sweep (regablate.sweep.sequential, whose module
doc gives the procedure and its error rate): Lan–DeMets O'Brien–Fleming-type alpha spending
(`spend`, `look_levels`), the boundaries c_k for the paired t statistic at each look, calibrated
on MC_PATHS fixed-seed null paths (`t_boundaries`), and the repeated p-value read off those
boundaries over a grid of family-wise levels (`repeated_p`). Deterministic and cached.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats


def spend(t: float, a: float) -> float:
    """Lan–DeMets O'Brien–Fleming-type spending: α*(t) = 2 − 2Φ(z_{1−a/2}/√t); α*(1) = a."""
    if t <= 0:
        return 0.0
    return float(2 * stats.norm.sf(stats.norm.isf(a / 2) / math.sqrt(min(t, 1.0))))


def look_levels(ns: list[int], max_seeds: int, a: float, final: bool) -> list[float]:
    """Δ_k spent at looks with ns[k] seeds (`final`: the last of ns is the final look)."""
    out, before = [], 0.0
    for k, n in enumerate(ns):
        now = a if final and k == len(ns) - 1 else spend(n / max_seeds, a)
        out.append(max(now - before, 0.0))
        before = max(before, now)
    return out


def critical(level: float, df: int, sides: int) -> float:
    """The t quantile c with P(T_df ≥ c) = level/sides (sides: 1 or 2); inf at level 0."""
    return float(stats.t.isf(level / sides, df)) if level > 0 else math.inf


MC_PATHS = 100_000       # null paths that calibrate the t boundaries
MC_SEED = 27             # fixed: the boundaries are the same on every machine and every call
MC_MIN_HITS = 100        # a look that spends less than this many paths uses the marginal quantile


@functools.lru_cache(maxsize=8)
def _null_paths(max_seeds: int) -> tuple:
    """Cumulative Σd and Σd² of MC_PATHS null paths of max_seeds N(0, 1) differences (float32);
    T is scale-free, so these serve every σ and every look schedule up to max_seeds."""
    rng = np.random.default_rng(MC_SEED)
    s1 = np.empty((MC_PATHS, max_seeds), np.float32)
    s2 = np.empty((MC_PATHS, max_seeds), np.float32)
    a1 = np.zeros(MC_PATHS)
    a2 = np.zeros(MC_PATHS)
    for i in range(max_seeds):
        z = rng.standard_normal(MC_PATHS)
        a1 += z
        a2 += z * z
        s1[:, i], s2[:, i] = a1, a2
    return s1, s2


@functools.lru_cache(maxsize=256)
def _null_t(ns: tuple, max_seeds: int) -> np.ndarray:
    """|T_k| of the null paths at looks of ns seeds, (MC_PATHS, len(ns))."""
    s1, s2 = _null_paths(max_seeds)
    out = np.empty((MC_PATHS, len(ns)), np.float32)
    for k, n in enumerate(ns):
        m = s1[:, n - 1].astype(float) / n
        var = np.maximum(s2[:, n - 1] - n * m * m, 1e-300) / (n - 1)
        out[:, k] = np.abs(m) / np.sqrt(var / n)
    return out


@functools.lru_cache(maxsize=4096)
def _t_boundaries(ns: tuple, max_seeds: int, a: float, final: bool) -> tuple:
    levels = look_levels(list(ns), max_seeds, a, final)
    t = _null_t(ns, max_seeds)
    alive = np.ones(MC_PATHS, bool)
    out = []
    for k, (n, level) in enumerate(zip(ns, levels, strict=True)):
        c = critical(level, n - 1, 2)                   # the marginal quantile: P(|T_k| ≥ c) = Δ_k
        allowed = int(level * MC_PATHS)
        if allowed >= MC_MIN_HITS:                   # crossings first at look k: Δ_k of paths
            x = t[alive, k]
            if allowed >= len(x):
                c = 0.0
            else:
                kth = np.partition(x, len(x) - allowed - 1)[len(x) - allowed - 1]
                c = min(c, float(np.nextafter(np.float32(kth), np.float32(np.inf))))
        out.append(c)
        alive &= t[:, k] < c
    return tuple(out)


def t_boundaries(ns: list, max_seeds: int, a: float, final: bool) -> list:
    """Group-sequential boundaries c_k for |T_k| at looks with ns seeds: c_k is set so that, over
    MC_PATHS null paths (normal differences; T's null law depends on nothing else), the paths
    that first cross at look k are a share Δ_k of all — P(first crossing at k) = Δ_k, so the
    total is a up to Monte Carlo error (≈ √(a/MC_PATHS)). Where Δ_k·MC_PATHS < MC_MIN_HITS (the
    first looks under O'Brien–Fleming spending) c_k is the marginal t quantile
    t_{n_k−1}.ppf(1 − Δ_k/2), which is conservative. Deterministic (fixed MC_SEED), cached."""
    return list(_t_boundaries(tuple(min(n, max_seeds) for n in ns), max_seeds, float(a), final))


ALPHAS = np.geomspace(1e-10, 0.5, 61)


@functools.lru_cache(maxsize=1024)
def _boundary_table(ns: tuple, max_seeds: int, m: int, final: bool) -> np.ndarray:
    """t boundaries per look (columns) at the family-wise levels ALPHAS (rows)."""
    return np.asarray([t_boundaries(list(ns), max_seeds, float(a) / m, final) for a in ALPHAS])


def repeated_p(stats_: list, ns: list, max_seeds: int, m: int, final: bool) -> float:
    """Smallest family-wise α (over the grid ALPHAS, then linear in log α between its points)
    at which a look so far crosses its boundary (m arms, looks at ns seeds of max_seeds); `stats_`: each look's |T|, None where it had
    none. Below 1e-10 reported as 1e-10, above 0.5 as 1 (no crossing at α = 0.5)."""
    table = _boundary_table(tuple(ns), max_seeds, m, final)
    best = 1.0
    for k, t in enumerate(stats_):
        if t is None:
            continue
        col = table[:, k]                       # falls as α grows
        hit = np.nonzero(col <= t)[0]
        if not len(hit):
            continue
        i = int(hit[0])
        if i == 0:
            return float(ALPHAS[0])
        lo, hi = col[i - 1], col[i]           # col[i-1] > t >= col[i]
        frac = 1.0 if not math.isfinite(lo) else (lo - t) / (lo - hi)
        la, lb = math.log(ALPHAS[i - 1]), math.log(ALPHAS[i])
        best = min(best, math.exp(la + frac * (lb - la)))
    return best
