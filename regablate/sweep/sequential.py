"""Sequential seeds: run seeds in rounds and stop each arm once the data decide it.

    s = Settings(reference="none", metric="val_acc", delta=0.005)
    state = SequentialState(s, arms=["dropout", "l2"])
    while (todo := plan_next_round(state)):          # {label: [new seeds]}
        run(todo)                                    # the sweeper's job
        add_look(state, read_values())               # {label: {seed: value}}, reference included
    state.save(sweep_dir / "sequential.json")

The state (`Settings`, `SequentialState`, each look's `ArmLook`) is regablate.report.sequential_state,
which `regablate report` reads; this module is the rule that takes the looks.

Rounds: round 1 runs seeds 0..min_seeds−1 of every arm and of the reference (paired: seed i of
an arm is compared with seed i of the reference); each later round adds `step` seeds (the last
one up to max_seeds) to the reference and to the arms still undecided. The planned looks are at
n_k = min_seeds, min_seeds+step, ..., max_seeds seeds.

The test at a look. d_i = v_arm(i) − v_ref(i); T = d̄/(s/√n) with n−1 df. Family-wise error α over
the m arms and all looks:
- Bonferroni over arms: each arm gets α/m. Bonferroni, not Holm: it holds under any dependence
  between arms (they share the reference's seeds, so their statistics are correlated) and needs
  no recycling of a decided arm's α into the other arms' boundaries, which in a group-sequential
  design needs graphical procedures (Maurer–Bretz) to stay valid; the price is some power when
  several arms are real effects.
- Alpha spending within an arm (Lan–DeMets, O'Brien–Fleming type), information fraction
  t = n/max_seeds: α*(t) = 2 − 2Φ(z_{1−a/2}/√t), a = α/m; look k spends Δ_k = α*(t_k) − α*(t_{k−1})
  (the final planned look spends what is left, a − α*(t_{k−1})). Early looks spend almost
  nothing (at 3 of 20 seeds, a = 0.05/3: Δ ≈ 6e-10), so an early stop needs an overwhelming effect.
- Boundary: |T_k| ≥ c_k, group-sequential for the t statistic itself: c_k is set so that the
  probability of a first crossing at look k is Δ_k under H0 (normal differences), computed over
  100,000 fixed-seed null paths of the looks' t statistics (their joint law depends only on the
  n_k; regablate.sweep.boundaries), so the total over looks is a up to Monte Carlo error. Looks
  spending too little to calibrate (the first ones) use the marginal quantile
  t_{n_k−1}.ppf(1 − Δ_k/2), which is conservative. Why not the others: the exact boundaries from the multivariate normal of
  the Z statistics (corr √(n_j/n_k)) carried to t at the same nominal level exceed the error
  with few seeds (one arm, α = 0.05: 0.054 at looks 3,5,...,19,20; 0.058 at 3,4,...,10, measured
  over 400,000 paths), and the union bound (c_k the marginal quantile at every look) holds but
  spends half of it (0.023).
- Decisions: `better` / `worse` when the boundary is crossed (oriented by higher_is_better);
  else, with an equivalence margin δ, `equivalent` when both one-sided tests reject at the look's
  level Δ_k (TOST: (d̄+δ)/se ≥ c'_k and (δ−d̄)/se ≥ c'_k, c'_k = t_{n_k−1}.ppf(1 − Δ_k)), whose error
  (calling an arm with |μ| ≥ δ equivalent) is also ≤ Σ Δ_k = a per arm; else `undecided`. A decided
  arm stops; an arm undecided at max_seeds stays `undecided`. Differences equal up to float
  rounding (an arm that trains exactly as the reference) have se = 0: no statistic, and
  `equivalent` where they lie inside ±δ, as TOST's limit gives (and `simulate_decisions`).
- Reported per arm: the repeated p-value (the smallest family-wise α at which the looks taken so
  far would have decided it better/worse: P(p ≤ α) ≤ α), and the repeated 95% confidence
  interval d̄ ± c_k(0.05)·se (simultaneous over looks and arms). Below 3 seeds, or with
  differences equal up to float rounding (regablate.report.paired), a look has no statistic.

Simulation (`simulate`, tests/test_sequential.py; min 3, max 20, step 2, α = 0.05, normal
differences, seeds other than the boundaries' own): one arm, the null, 400,000 experiments: a
better/worse decision in 0.0494 (MC SE 0.0003); 3 arms vs a reference, the null, 100,000
experiments: the family-wise rate is 0.047 (MC SE 0.0007; under α as Bonferroni over correlated arms gives).
With a true difference of 1 sd of the paired differences in every arm, each arm is decided
`better` with power 0.943 after 14.6 seeds on average (the reference runs 16.5: 60 runs in all);
a fixed-n paired t-test at α/3 with the same power needs 19 seeds per arm (76 runs).
"""

from __future__ import annotations

import math

import numpy as np

from regablate.report.paired import MIN_SEEDS, equal_reason
from regablate.report.sequential_state import ArmLook, SequentialState, Settings
from regablate.sweep.boundaries import critical, look_levels, repeated_p, spend, t_boundaries

__all__ = ["plan_next_round", "add_look", "spend", "look_levels", "simulate"]


def plan_next_round(state: SequentialState) -> dict:
    """{label: [new seeds]} for the next round, the reference included; {} when done (every
    arm decided, or the last planned look taken): `SequentialState.next_round`."""
    return state.next_round()


def add_look(state: SequentialState, values: dict, scale: float | None = None) -> dict:
    """Take the next look. `values`: {label: {pairing key: metric value}} for the reference and
    the arms (keys: seed, or (seed, data_seed)); each undecided arm is compared with the
    reference over the keys both hold with finite values. `scale`: the size of the values the
    differences come from, for telling them equal up to float rounding (default: the largest
    of the two arms'). Returns {label: ArmLook}."""
    s = state.settings
    m = len(state.arms)
    r = len(state.looks)
    if r >= len(s.schedule):
        raise ValueError(f"sequential: all {len(s.schedule)} planned looks already taken")
    final = r == len(s.schedule) - 1
    ref = values.get(s.reference) or {}
    done = state.decisions()
    sign = 1.0 if s.higher_is_better else -1.0
    out = {}
    for label in state.arms:
        if done[label] != "undecided":
            continue
        arm = values.get(label) or {}
        keys = [k for k in arm if k in ref and _finite(arm[k]) and _finite(ref[k])]
        d = np.asarray([arm[k] - ref[k] for k in keys], dtype=float)
        size = scale if scale is not None else max((abs(x) for k in keys for x in (arm[k], ref[k])), default=0.0)
        n = len(d)
        ns = [a.n for a in state.history(label)] + [n]
        level = look_levels(ns, s.max_seeds, s.alpha / m, final)[-1]
        est = float(d.mean()) if n else None
        reason = (f"fewer than {MIN_SEEDS} seeds (n = {n})" if n < MIN_SEEDS
                  else equal_reason(d, size))
        if reason:  # no statistic; equal differences inside ±δ are equivalent (TOST's se is 0)
            same = n >= MIN_SEEDS and s.delta is not None and abs(est) < s.delta
            out[label] = ArmLook(label, n, est, None, None, None, None, None, level, None,
                                 "equivalent" if same else "undecided",
                                 reason + (f", inside ±{s.delta:g}: equivalent without a test" if same else ""))
            continue
        se = float(d.std(ddof=1)) / math.sqrt(n)
        tstat = est / se
        c2, c1 = t_boundaries(ns, s.max_seeds, s.alpha / m, final)[-1], critical(level, n - 1, 1)
        decision = "undecided"
        if abs(tstat) >= c2:
            decision = "better" if sign * tstat > 0 else "worse"
        elif s.delta is not None and (est + s.delta) / se >= c1 and (s.delta - est) / se >= c1:
            decision = "equivalent"
        ts = [None if a.statistic is None else abs(a.statistic) for a in state.history(label)]
        p = repeated_p([*ts, abs(tstat)], ns, s.max_seeds, m, final)
        c95 = t_boundaries(ns, s.max_seeds, 0.05 / m, final)[-1]
        out[label] = ArmLook(label, n, est, est - c2 * se, est + c2 * se, tstat, c2, c1, level,
                             p, decision, None, [est - c95 * se, est + c95 * se])
    state.looks.append({"round": r + 1, "n": max((a.n for a in out.values()), default=0),
                        "arms": out})
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


CODES = {"undecided": 0, "better": 1, "worse": 2, "equivalent": 3}


def simulate_decisions(s: Settings, diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The looks of `add_look`, vectorised: diffs (experiments, arms, max_seeds) of arm −
    reference per seed → (decision codes (experiments, arms), seeds each arm ran)."""
    R, m, N = diffs.shape
    assert N == s.max_seeds
    sched = s.schedule
    levels = look_levels(sched, s.max_seeds, s.alpha / m, True)
    bounds = t_boundaries(sched, s.max_seeds, s.alpha / m, True)
    s1, s2 = np.cumsum(diffs, -1), np.cumsum(diffs ** 2, -1)
    code = np.zeros((R, m), dtype=np.int8)
    used = np.zeros((R, m), dtype=np.int32)
    sign = 1.0 if s.higher_is_better else -1.0
    for n, level, c2 in zip(sched, levels, bounds, strict=True):
        open_ = code == 0
        used[open_] = n
        mean = s1[..., n - 1] / n
        var = np.maximum(s2[..., n - 1] - n * mean ** 2, 0.0) / (n - 1)
        se = np.sqrt(var / n)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = mean / se
            c1 = critical(level, n - 1, 1)
            cross = open_ & (np.abs(t) >= c2)
            code[cross & (sign * t > 0)] = CODES["better"]
            code[cross & (sign * t < 0)] = CODES["worse"]
            if s.delta is not None:
                eq = open_ & ~cross & ((mean + s.delta) / se >= c1) & ((s.delta - mean) / se >= c1)
                code[eq] = CODES["equivalent"]
    return code, used


def simulate(s: Settings, arms: int = 3, effect: float = 0.0, experiments: int = 20_000,
             seed: int = 0) -> dict:
    """Monte Carlo of the procedure: per seed, reference and arm values ~ N(·, 1/2) (paired
    differences then have sd 1 and correlation 1/2 between arms), every arm `effect` sd better.
    Returns the family-wise rate of a better/worse decision (its MC SE), the per-arm power
    (share decided better), mean seeds per arm and for the reference, and the fixed-n seeds of
    a paired t-test at α/arms with the same power."""
    from regablate.report.plan import n_needed

    rng = np.random.default_rng(seed)
    sd = math.sqrt(0.5)
    ref = rng.normal(0.0, sd, (experiments, 1, s.max_seeds))
    arm = rng.normal(effect if s.higher_is_better else -effect, sd,
                     (experiments, arms, s.max_seeds))
    code, used = simulate_decisions(s, arm - ref)
    wrong = (code == CODES["better"]) | (code == CODES["worse"])
    fwer = float(np.mean(wrong.any(axis=1)))
    power = float(np.mean(code == CODES["better"]))
    out = {"experiments": experiments, "arms": arms, "effect_sd": effect,
           "any_better_or_worse": fwer,
           "mc_se": math.sqrt(max(fwer * (1 - fwer), 1e-12) / experiments),
           "power": power, "equivalent": float(np.mean(code == CODES["equivalent"])),
           "mean_seeds_per_arm": float(used.mean()),
           "mean_seeds_reference": float(used.max(axis=1).mean())}
    if effect > 0 and 0 < power < 1:
        out["fixed_n_same_power"] = n_needed(1.0, effect, power, s.alpha / arms)
    return out
