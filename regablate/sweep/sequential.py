"""Sequential seeds: run seeds in rounds and stop each arm once the data decide it.

    s = Settings(reference="none", metric="val_acc", delta=0.005)
    state = SequentialState(s, arms=["dropout", "l2"])
    while (todo := plan_next_round(state)):          # {label: [new seeds]}
        run(todo)                                    # the sweeper's job
        add_look(state, read_values())               # {label: {seed: value}}, reference included
    state.save(sweep_dir / "sequential.json")

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
  arm stops; an arm undecided at max_seeds stays `undecided`.
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

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from regablate.report.paired import MIN_SEEDS, equal_reason
from regablate.sweep.boundaries import critical, look_levels, repeated_p, spend, t_boundaries

__all__ = ["Settings", "ArmLook", "SequentialState", "plan_next_round", "add_look", "decide",
           "spend", "look_levels", "simulate", "DECISIONS", "FILE"]

FILE = "sequential.json"
DECISIONS = ("better", "worse", "equivalent", "undecided")
SCHEMA = 1


@dataclass(frozen=True)
class Settings:
    """What the sweeper was asked: the reference arm's label, the metric compared (a summary
    key such as "val_acc"), its direction, the seed rounds, the family-wise α and an optional
    equivalence margin δ (same units as the metric)."""

    reference: str
    metric: str = "val_acc"
    higher_is_better: bool = True
    min_seeds: int = 3
    max_seeds: int = 20
    step: int = 2
    alpha: float = 0.05
    delta: float | None = None

    def __post_init__(self):
        def bad(what: str):
            raise ValueError(f"sequential settings: {what}")

        if not isinstance(self.reference, str) or not self.reference:
            bad("reference must name the reference arm")
        for k in ("min_seeds", "max_seeds", "step"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool):
                bad(f"{k}={v!r} is not an integer")
        if self.min_seeds < MIN_SEEDS:
            bad(f"min_seeds={self.min_seeds}: at least {MIN_SEEDS} (no test below 3 seeds)")
        if self.max_seeds < self.min_seeds:
            bad(f"max_seeds={self.max_seeds} is below min_seeds={self.min_seeds}")
        if self.step < 1:
            bad(f"step={self.step}: at least 1")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 1):
            bad(f"alpha={self.alpha!r}: a number in (0, 1)")
        if self.delta is not None and not (isinstance(self.delta, (int, float))
                                           and math.isfinite(self.delta) and self.delta > 0):
            bad(f"delta={self.delta!r}: a positive number, or None")

    @property
    def schedule(self) -> list[int]:
        """Seeds per arm at each planned look."""
        return [*range(self.min_seeds, self.max_seeds, self.step), self.max_seeds]


@dataclass
class ArmLook:
    """One arm at one look: n pairs, estimate d̄ (arm − reference) and its interval at the
    look's boundary [lo, hi] (family-wise 1 − α), T, the boundary c_k and TOST's c'_k, the level
    Δ_k spent, the repeated p so far, the decision, and why there is no statistic."""

    label: str
    n: int
    estimate: float | None
    lo: float | None
    hi: float | None
    statistic: float | None
    boundary: float | None
    tost_boundary: float | None
    level: float
    p: float | None
    decision: str = "undecided"
    reason: str | None = None
    ci95: list = field(default_factory=lambda: [None, None])


@dataclass
class SequentialState:
    """Settings, the arms (labels, the reference excluded) and every look so far: a list of
    {"round", "n", "arms": {label: ArmLook}}; `save`/`load` keep it in sequential.json."""

    settings: Settings
    arms: list
    looks: list = field(default_factory=list)

    def __post_init__(self):
        if self.settings.reference in self.arms or len(set(self.arms)) != len(self.arms) \
                or not self.arms:
            raise ValueError("sequential state: arms must be distinct labels other than the "
                             "reference, at least one")

    def decisions(self) -> dict:
        return decide(self.looks, self.arms)

    def history(self, label: str) -> list[ArmLook]:
        return [lk["arms"][label] for lk in self.looks if label in lk["arms"]]

    def summary(self) -> list[dict]:
        """Per arm: label, n, decision, delta (estimate, arm − reference), ci95 (repeated 95%
        interval), p (repeated p-value), from its last look."""
        out = []
        for label in self.arms:
            h = self.history(label)
            last = h[-1] if h else None
            out.append({"label": label, "n": last.n if last else 0,
                        "decision": decide(self.looks, [label])[label],
                        "delta": last.estimate if last else None,
                        "ci95": list(last.ci95) if last else [None, None],
                        "p": last.p if last else None,
                        "reason": last.reason if last else None})
        return out

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "settings": asdict(self.settings),
                "schedule": self.settings.schedule, "reference": self.settings.reference,
                "looks": [{"round": lk["round"], "n": lk["n"],
                           "arms": {k: _clean(asdict(v)) for k, v in lk["arms"].items()}}
                          for lk in self.looks],
                "arms": [_clean(a) for a in self.summary()]}

    def save(self, path) -> None:
        """Atomically (regablate.rundir.atomic.write_atomic), strict JSON (no NaN)."""
        from regablate.rundir.atomic import write_atomic

        text = json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n"
        write_atomic(Path(path), lambda f: f.write(text))

    @classmethod
    def from_json(cls, tree) -> SequentialState:
        """Checked: a ValueError with a one-line reason for anything not as `to_json` writes."""
        def need(ok: bool, what: str):
            if not ok:
                raise ValueError(f"{FILE}: {what}")

        need(isinstance(tree, dict) and tree.get("schema") == SCHEMA, f"not schema {SCHEMA}")
        raw = tree.get("settings")
        need(isinstance(raw, dict) and set(raw) <= set(Settings.__dataclass_fields__),
             "settings missing or with unknown keys")
        try:
            settings = Settings(**raw)
        except TypeError as e:
            raise ValueError(f"{FILE}: settings: {e}") from None
        arms = tree.get("arms")
        need(isinstance(arms, list) and all(isinstance(a, dict) and isinstance(a.get("label"), str)
                                            for a in arms), "arms must be a list of {label,...}")
        looks = tree.get("looks")
        need(isinstance(looks, list), "looks must be a list")
        names = {f.name: f for f in ArmLook.__dataclass_fields__.values()}
        out = []
        for i, lk in enumerate(looks):
            need(isinstance(lk, dict) and isinstance(lk.get("arms"), dict)
                 and _int(lk.get("round")) and _int(lk.get("n")), f"look {i} malformed")
            arm_looks = {}
            for label, a in lk["arms"].items():
                need(isinstance(a, dict) and set(a) == set(names) and a["label"] == label
                     and a["decision"] in DECISIONS and _int(a["n"])
                     and all(_num(a[k]) for k in ("estimate", "lo", "hi", "statistic",
                                                  "boundary", "tost_boundary", "level", "p"))
                     and isinstance(a["ci95"], list) and len(a["ci95"]) == 2
                     and all(_num(x) for x in a["ci95"])
                     and (a["reason"] is None or isinstance(a["reason"], str)),
                     f"look {i}, arm {label[:40]!r} malformed")
                arm_looks[label] = ArmLook(**{k: _inf(v) for k, v in a.items()})
            out.append({"round": lk["round"], "n": lk["n"], "arms": arm_looks})
        return cls(settings, [a["label"] for a in arms], out)

    @classmethod
    def load(cls, path) -> SequentialState:
        """Read back through regablate.rundir.untrusted (bounded, regular file, sane numbers)."""
        from regablate.rundir.untrusted import SMALL_CAP, load_json_safe, read_bounded

        return cls.from_json(load_json_safe(read_bounded(path, SMALL_CAP)))


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _num(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) or x in (
        "inf", "-inf")


def _clean(d: dict) -> dict:
    """JSON-safe: NaN -> None, ±inf -> "inf"/"-inf" (a boundary is infinite when Δ_k = 0)."""
    def one(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, list):
            return [one(x) for x in v]
        return v
    return {k: one(v) for k, v in d.items()}


def _inf(v):
    if v in ("inf", "-inf"):
        return float(v)
    return [_inf(x) for x in v] if isinstance(v, list) else v


def decide(looks: list, arms: list | None = None) -> dict:
    """{label: decision}: an arm's first look that is not `undecided` decides it."""
    labels = arms if arms is not None else list(dict.fromkeys(k for lk in looks for k in lk["arms"]))
    out = {}
    for label in labels:
        found = [lk["arms"][label].decision for lk in looks if label in lk["arms"]
                 and lk["arms"][label].decision != "undecided"]
        out[label] = found[0] if found else "undecided"
    return out


def plan_next_round(state: SequentialState) -> dict:
    """{label: [new seeds]} for the next round, the reference included; {} when done (every
    arm decided, or the last planned look taken)."""
    s, r = state.settings, len(state.looks)
    sched = s.schedule
    if r == 0:
        return {label: list(range(s.min_seeds)) for label in (s.reference, *state.arms)}
    open_arms = [a for a, d in state.decisions().items() if d == "undecided"]
    if r >= len(sched) or not open_arms:
        return {}
    seeds = list(range(sched[r - 1], sched[r]))
    return {label: seeds for label in (s.reference, *open_arms)}


def add_look(state: SequentialState, values: dict) -> dict:
    """Take the next look. `values`: {label: {pairing key: metric value}} for the reference and
    the arms (keys: seed, or (seed, data_seed)); each undecided arm is compared with the
    reference over the keys both hold with finite values. Returns {label: ArmLook}."""
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
        scale = max((abs(x) for k in keys for x in (arm[k], ref[k])), default=0.0)
        n = len(d)
        ns = [a.n for a in state.history(label)] + [n]
        level = look_levels(ns, s.max_seeds, s.alpha / m, final)[-1]
        est = float(d.mean()) if n else None
        reason = (f"fewer than {MIN_SEEDS} seeds (n = {n})" if n < MIN_SEEDS
                  else equal_reason(d, scale))
        if reason:
            out[label] = ArmLook(label, n, est, None, None, None, None, None, level, None,
                                 reason=reason)
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
