"""A seeds=auto sweep's state, as its root's sequential.json holds it: what the sweeper was asked
(`Settings`), every look at every arm (`ArmLook`: n, estimate, interval, statistic, boundary,
repeated p, decision) and each arm's decision (`decide`: its first look that is not undecided).

The sweeper takes the looks (regablate.sweep.sequential, the stopping rule) and saves the state
after each; `regablate report` loads it, read as data from someone else, and shows each arm's
decision under the table.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from regablate.report.paired import MIN_SEEDS

__all__ = ["Settings", "ArmLook", "SequentialState", "decide", "DECISIONS", "FILE"]

FILE = "sequential.json"
DECISIONS = ("better", "worse", "equivalent", "undecided")
CONTRASTS = ("arm", "main_effect")
SCHEMA = 1


@dataclass(frozen=True)
class Settings:
    """What the sweeper was asked: the reference arm's label, the metric compared (a summary
    key such as "val_acc"), its direction, the seed rounds, the family-wise α, an optional
    equivalence margin δ (same units as the metric) and what is compared: each arm with the
    reference, or (a factorial design) each component's main effect, its "arms" then the
    components."""

    reference: str
    metric: str = "val_acc"
    higher_is_better: bool = True
    min_seeds: int = 3
    max_seeds: int = 20
    step: int = 2
    alpha: float = 0.05
    delta: float | None = None
    contrast: str = "arm"  # "arm": each arm − the reference; "main_effect": a factorial's components

    def __post_init__(self):
        def bad(what: str):
            raise ValueError(f"sequential settings: {what}")

        if self.contrast not in CONTRASTS:
            bad(f"contrast={self.contrast!r}: one of {', '.join(CONTRASTS)}")

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

    def next_round(self) -> dict:
        """{label: [new seeds]} for the next round, the reference included; {} when done (every
        arm decided, or the last planned look taken). Round 1 runs seeds 0..min_seeds−1 of every
        arm; round r adds the seeds up to the r-th planned look to the arms still undecided."""
        s, r = self.settings, len(self.looks)
        sched = s.schedule
        if r == 0:
            return {label: list(range(s.min_seeds)) for label in (s.reference, *self.arms)}
        open_arms = [a for a, d in self.decisions().items() if d == "undecided"]
        if r >= len(sched) or not open_arms:
            return {}
        seeds = list(range(sched[r - 1], sched[r]))
        return {label: seeds for label in (s.reference, *open_arms)}

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
