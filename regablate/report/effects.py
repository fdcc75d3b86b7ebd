"""Which part of a stack does the work: each regulariser's share, with intervals over seeds.

    runs = regablate.load_runs("multirun/2026-12-07/10-00-00")
    table = regablate.effects(runs, metric="val")   # component, kind, delta, lo, hi, p, p_holm, n

With v(A) the metric of the arm that runs stack A ⊆ S = {c1..ck}, every estimate is a linear
contrast Σ_A w_A v(A), computed per seed (a seed is a block: every arm ran it) and then averaged:

    leave_one_out   v(S) − v(S∖c)
    add_one_in      v({c}) − v(∅)
    main            mean_{A∋c} v(A) − mean_{A∌c} v(A)                       (factorial)
    interaction     mean_{B⊆S∖{c,d}} [v(B∪cd) − v(B∪c) − v(B∪d) + v(B)]   (factorial; "c×d")
    shapley         φ_c = Σ_{A⊆S∖c} |A|!(k−|A|−1)!/k! · (v(A∪c) − v(A)),  Σ_c φ_c = v(S) − v(∅)

A factorial design gives every kind; leave_one_out gives leave_one_out and add_one_in gives
add_one_in, each also giving the other and shapley where k = 2 (their four arms are then all
2^k). A kind the design cannot give is absent (no row), never NaN.

Per estimate: the seeds whose runs of every arm it needs are there (a failed or diverged run
drops its seed from those estimates only, nothing is imputed; `n` says how many were used),
`delta` = mean of the per-seed contrasts, `lo`/`hi` its 95% t interval over seeds (NaN below
two seeds), `p` the two-sided paired test of mean 0 (regablate.report.paired: the one-sample
t-test by default, or the exact sign-flip or Wilcoxon test), NaN below three seeds or where
the per-seed contrasts are equal up to float rounding (max − min ≤ 1e-9 × the largest |v(A)|
used), with `reason` saying why, and `p_holm` Holm's adjustment over the family of that kind
within its cell. Δ is oriented as the report's: the metric's own
difference (for mse, negative is better; `higher_is_better` says which).

Cells: runs that differ in a setting other than which components are stacked (another model,
dataset or learning rate, or another strength of a component: reg.dropout.p=0.3 vs 0.5) are
other cells, each analysed on its own; the arms without that component serve every cell they
fit. The design of a cell comes from `design=`, else from the `ablation.json` of the sweep
root above its run dirs (runs in arms it does not list are ignored), else it is inferred from
the arms present, which must then be exactly one design's.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import stats

from regablate.errors import ConfigError, UsageError
from regablate.report.designs import (
    DESIGNS,
    arms,
    find_ablation_json,
    infer_design,
    read_ablation_json,
)
from regablate.report.paired import MIN_SEEDS, RTOL, TESTS, paired_test

__all__ = ["KINDS", "METRICS", "COLUMNS", "Contrast", "kinds_of", "contrasts", "summarise",
           "effects"]

KINDS = ("leave_one_out", "add_one_in", "main", "interaction", "shapley")
METRICS = ("val", "test", "train", "gap")
COLUMNS = ("component", "kind", "delta", "lo", "hi", "p", "p_holm", "n")
TAIL = ("reason", "design", "metric", "higher_is_better")
LEVEL = 0.95
TIMES = "×"


@dataclass(frozen=True)
class Contrast:
    """One estimate: `weights` maps an arm (frozenset of components) to its w_A."""

    kind: str
    component: str
    weights: dict


def kinds_of(design: str, k: int) -> tuple[str, ...]:
    """The kinds a design over k components gives (see the module doc)."""
    if design == "factorial":
        return KINDS
    if design not in DESIGNS:
        raise ConfigError("design", design, f"allowed: {', '.join(DESIGNS)}")
    if k <= 2:
        return ("leave_one_out", "add_one_in", "shapley")
    return (design,)


def _shapley_weight(size: int, k: int) -> Fraction:
    return Fraction(math.factorial(size) * math.factorial(k - size - 1), math.factorial(k))


def contrasts(design: str, components) -> list[Contrast]:
    """Every estimate the design gives over `components`, in kind order (KINDS), components
    in the order given, pairs as itertools.combinations; weights exact to float rounding."""
    comps = tuple(components)
    k = len(comps)
    every = [frozenset(a) for a in arms("factorial", comps)] if k <= 8 else []
    full, none = frozenset(comps), frozenset()
    out = []
    for kind in kinds_of(design, k):
        if kind == "leave_one_out":
            out += [Contrast(kind, c, {full: 1.0, full - {c}: -1.0}) for c in comps]
        elif kind == "add_one_in":
            out += [Contrast(kind, c, {frozenset({c}): 1.0, none: -1.0}) for c in comps]
        elif kind == "main":
            half = 1.0 / 2 ** (k - 1)
            out += [Contrast(kind, c, {a: half if c in a else -half for a in every})
                    for c in comps]
        elif kind == "interaction":
            quarter = 1.0 / 2 ** (k - 2)
            for c, d in itertools.combinations(comps, 2):
                w = {a: quarter * (1.0 if (c in a) == (d in a) else -1.0) for a in every}
                out.append(Contrast(kind, f"{c}{TIMES}{d}", w))
        else:  # shapley
            for c in comps:
                w: dict = {}
                for a in every:
                    if c not in a:
                        g = _shapley_weight(len(a), k)
                        w[a | {c}] = w.get(a | {c}, 0) + g
                        w[a] = w.get(a, 0) - g
                out.append(Contrast(kind, c, {a: float(x) for a, x in w.items()}))
    return out


def summarise(d, scale=None, level: float = LEVEL) -> dict:
    """Mean of per-seed contrasts `d` (last axis: seeds, all finite; leading axes: independent
    estimates, vectorised), its t interval and two-sided one-sample t-test of mean 0.

    Returns arrays mean, lo, hi, p and the int n. lo/hi are NaN for n < 2; p is NaN for n < 3
    and wherever max d − min d <= RTOL × max(`scale`, max |d|) (pass the largest |v(A)| the
    contrasts were made from), i.e. the spread is float rounding: the rule and the numbers of
    regablate.report.paired.paired_test(d, "t", scale), one estimate at a time."""
    d = np.asarray(d, dtype=float)
    n = d.shape[-1]
    shape = d.shape[:-1]
    nan = np.full(shape, np.nan)
    if n == 0:
        return {"mean": nan, "lo": nan, "hi": nan, "p": nan.copy(), "n": 0}
    mean = d.mean(axis=-1)
    if n < 2:
        return {"mean": mean, "lo": nan, "hi": nan.copy(), "p": nan.copy(), "n": n}
    sd = d.std(axis=-1, ddof=1)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    size = np.abs(d).max(axis=-1)
    if scale is not None:
        size = np.maximum(size, np.asarray(scale, dtype=float))
    flat = d.max(axis=-1) - d.min(axis=-1) <= RTOL * np.maximum(size, np.finfo(float).tiny)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(1.0, 2 * stats.t.sf(np.abs(mean / se), n - 1))
    p = np.where(flat | (n < MIN_SEEDS), np.nan, p)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "p": p, "n": n}


def _holm(pvalues: list) -> list:
    from regablate.report.stats import holm

    return holm([math.nan if p is None else float(p) for p in pvalues])


# ---- from a runs frame to cells ----

def _value(x):
    from regablate.report.collect import plain_value as plain

    return plain(x)


def _norm(v):
    """A setting as a hashable, type-stable key part (0 == 0.0 as in the group id)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    return json.dumps(v, sort_keys=True, default=str)


def _stack(reg) -> tuple:
    if reg is None or str(reg) in ("", "none"):
        return ()
    return tuple(str(reg).split("+"))


def _comp_keys(c: str, keys) -> list:
    return [k for k in keys if k == f"reg.{c}" or k.startswith(f"reg.{c}.")]


@dataclass
class _Run:
    stack: frozenset
    block: tuple
    value: float
    base: tuple          # settings outside the stack's components
    comp: dict           # component -> tuple of its settings
    settings: dict       # every setting, for naming cells
    higher: object
    metric: str
    doc: str | None      # ablation.json (as sorted JSON) of its sweep root


def _runs(frame, metric: str) -> list[_Run]:
    from regablate.rundir.group import NOT_IN_GROUP

    need = {"reg", "seed", "metric"}
    if missing := sorted(need - set(frame.columns)):
        raise UsageError(f"effects: the frame lacks column(s) {', '.join(missing)}; pass what "
                         "regablate.load_runs returns")
    dotted = [c for c in frame.columns if "." in c and c not in NOT_IN_GROUP]
    summary_keys = [c for c in ("dataset", "model", "task") if c in frame.columns]
    docs: dict = {}
    out = []
    for row in frame.to_dict("records"):
        r = {k: _value(v) for k, v in row.items()}
        if r.get("status", "completed") != "completed" or r.get("seed") is None:
            continue
        name = r.get("metric")
        col = "gap" if metric == "gap" else f"{metric}_{name}"
        x = r.get(col)
        value = float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan
        stack = _stack(r["reg"])
        comp_cols = {c: _comp_keys(c, dotted) for c in stack}
        in_comp = {k for ks in comp_cols.values() for k in ks}
        settings = {k: r[k] for k in dotted if r.get(k) is not None}
        for k in ("dataset", "model"):  # runs without a config: name cells by the summary's
            if f"{k}.name" not in settings and r.get(k) is not None:
                settings[k] = r[k]
        base = {k: v for k, v in settings.items() if k not in in_comp}
        base.update({f"summary:{k}": r.get(k) for k in summary_keys})
        base["metric"] = name
        out.append(_Run(
            frozenset(stack), (r["seed"], r.get("data_seed")), value,
            tuple(sorted((k, _norm(v)) for k, v in base.items())),
            {c: tuple(sorted((k, _norm(settings[k])) for k in ks if k in settings))
             for c, ks in comp_cols.items()},
            settings, r.get("higher_is_better"), "gap" if metric == "gap" else col,
            _doc_of(r.get("run_dir"), docs)))
    return out


def _doc_of(run_dir, cache: dict) -> str | None:
    if not run_dir:
        return None
    parent = str(Path(run_dir).parent)
    if parent not in cache:
        root = find_ablation_json(run_dir)
        doc = read_ablation_json(root) if root is not None else None
        cache[parent] = None if doc is None else json.dumps(
            {"design": doc["design"], "components": doc["components"]}, sort_keys=True)
    return cache[parent]


def _cells(runs: list[_Run]) -> list[tuple[tuple, list[_Run]]]:
    """(cell key, its runs): runs share a cell when their settings outside the stack are equal
    and each component they stack has the cell's settings; a run without a component serves
    every cell that differs only in that component's settings."""
    bases: dict = {}
    for r in runs:
        bases.setdefault(r.base, []).append(r)
    out = []
    for base, members in bases.items():
        variants: dict = {}
        for r in members:
            for c, s in r.comp.items():
                variants.setdefault(c, dict.fromkeys(()))[s] = None
        multi = sorted(c for c, v in variants.items() if len(v) > 1)
        combos = list(itertools.product(*(list(variants[c]) for c in multi)))
        seen = {tuple(r.comp[c] for c in multi) for r in members if set(multi) <= r.stack}
        if seen:
            combos = [x for x in combos if x in seen]
        for combo in combos:
            chosen = dict(zip(multi, combo, strict=True))
            cell = [r for r in members if all(chosen[c] == s for c, s in r.comp.items()
                                              if c in chosen)]
            out.append(((base, tuple(chosen.items())), cell))
    return out


def _design(cell: list[_Run], design, components, where: str):
    """(design, components, the cell's runs in its arms)."""
    if design is not None:
        comps = tuple(components) if components is not None else \
            tuple(sorted(set().union(*(r.stack for r in cell))))
    else:
        docs = {r.doc for r in cell if r.doc is not None}
        if len(docs) > 1:
            raise UsageError(f"effects: the runs of {where} come from sweeps with different "
                             "ablation.json files; pass design= and components=, or fewer runs")
        if docs:
            doc = json.loads(docs.pop())
            design, comps = doc["design"], tuple(doc["components"])
        else:
            comps = tuple(components) if components is not None else \
                tuple(sorted(set().union(*(r.stack for r in cell))))
            design = infer_design({r.stack for r in cell}, comps)
            if design is None and len(comps) < 2:
                raise UsageError(f"effects: the runs of {where} stack fewer than two "
                                 "regularisers; there is no share to split (compare arms with "
                                 "regablate.summarize)")
            if design is None:
                present = sorted("+".join(sorted(a)) or "none" for a in {r.stack for r in cell})
                raise UsageError(
                    f"effects: the arms of {where} ({', '.join(present)}) are no one design's "
                    f"over {'+'.join(comps) or 'none'}; pass design= (factorial, "
                    "leave_one_out or add_one_in), or keep the sweep's ablation.json")
    allowed = {frozenset(a) for a in arms(design, comps)}
    return design, comps, [r for r in cell if r.stack in allowed]


def _where(settings: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items()) or "the runs"


def effects(runs, metric: str = "val", design: str | None = None, components=None,
            test: str = "t"):
    """Each regulariser's effect on `metric` with its interval over seeds, one row per
    estimate (see the module doc for the maths).

    runs: a `regablate.load_runs` frame (`regablate.effects` also takes run dirs). metric: "val",
    "test", "train" (the task's acc or mse on that split) or "gap". design: "factorial",
    "leave_one_out" or "add_one_in" for every cell (runs in other arms ignored), over
    `components` (default: every component present); default: each cell's ablation.json,
    else inferred from its arms. test: "t" (default), "signflip" or "wilcoxon" for p (the
    interval is the t interval whichever gives p).

    Returns a DataFrame with columns component, kind, delta, lo, hi, p, p_holm, n, then the
    settings that tell cells apart (dotted config keys, e.g. model.name, reg.dropout.p; only
    where there are several cells), then reason (why p is NaN, else None), design, metric
    (e.g. val_acc) and higher_is_better. Rows: cells in the order their runs come, kinds in
    KINDS order, components in the stack's order. Only completed runs with a finite value are
    used. `frame.attrs`: level (0.95) and test."""
    import pandas as pd

    if metric not in METRICS:
        raise ConfigError("metric", metric, f"allowed: {', '.join(METRICS)}")
    if test not in TESTS:
        raise ConfigError("test", test, f"allowed: {', '.join(TESTS)}")
    if design is not None and design not in DESIGNS:
        raise ConfigError("design", design, f"allowed: {', '.join(DESIGNS)}")
    cells = _cells(_runs(runs, metric))
    named = []
    for _, cell in cells:
        settings: dict = {}
        for r in cell:
            for k, v in r.settings.items():
                settings.setdefault(k, v)
        named.append((settings, cell))
    differ = [k for k in dict.fromkeys(k for s, _ in named for k in s)
              if len({repr(s.get(k)) for s, _ in named}) > 1]
    rows, dup, totals = [], 0, []
    for settings, cell in named:
        where = _where({k: settings.get(k) for k in differ})
        kind_design, comps, used = _design(cell, design, components, where)
        blocks = sorted({r.block for r in used}, key=repr)
        index = {b: i for i, b in enumerate(blocks)}
        arm_list = [frozenset(a) for a in arms(kind_design, comps)]
        col = {a: j for j, a in enumerate(arm_list)}
        total = np.zeros((len(blocks), len(arm_list)))
        count = np.zeros_like(total)
        for r in used:
            if math.isfinite(r.value):
                total[index[r.block], col[r.stack]] += r.value
                count[index[r.block], col[r.stack]] += 1
        dup += int((count > 1).sum())
        with np.errstate(invalid="ignore"):
            values = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        higher = next((r.higher for r in used if r.higher is not None), None)
        name = next((r.metric for r in used), metric)
        if higher is None:
            higher = not name.endswith("mse")
        full, none = values[:, col[frozenset(comps)]], values[:, col[frozenset()]]
        cons = contrasts(kind_design, comps)
        # full − none over the seeds the φ use (every arm's: Σφ = full − none on each), so its interval is Σφ's
        ok = (np.isfinite(values).all(axis=1) if any(c.kind == "shapley" for c in cons)
              else np.isfinite(full) & np.isfinite(none))
        whole = paired_test(full[ok] - none[ok], test, scale=float(np.abs(np.r_[full[ok], none[ok]]).max(
            initial=0.0)))
        totals.append({"where": {k: settings.get(k) for k in differ}, "delta": whole.estimate,
                       "lo": whole.lo, "hi": whole.hi, "n": whole.n})
        out = []
        for con in cons:
            need = [col[a] for a, w in con.weights.items() if w != 0]
            w = np.array([con.weights[arm_list[j]] for j in need])
            sub = values[:, need]
            ok = np.isfinite(sub).all(axis=1)
            sub = sub[ok]
            t = paired_test(sub @ w, test, scale=float(np.abs(sub).max()) if len(sub) else 0.0)
            out.append({"component": con.component, "kind": con.kind, "delta": t.estimate,
                        "lo": t.lo, "hi": t.hi, "p": math.nan if t.p is None else t.p,
                        "n": t.n, "reason": t.reason})
        for kind in dict.fromkeys(o["kind"] for o in out):
            family = [o for o in out if o["kind"] == kind]
            for o, q in zip(family, _holm([o["p"] for o in family]), strict=True):
                o["p_holm"] = q
        for o in out:
            rows.append({**{c: o[c] for c in COLUMNS}, **{k: settings.get(k) for k in differ},
                         "reason": o["reason"], "design": kind_design, "metric": name,
                         "higher_is_better": bool(higher)})
    if dup:
        warnings.warn(f"effects: {dup} arm(s) ran a seed more than once; their values were "
                      "averaged", stacklevel=2)
    frame = pd.DataFrame(rows, columns=[*COLUMNS, *differ, *TAIL])
    for c in ("delta", "lo", "hi", "p", "p_holm"):
        frame[c] = frame[c].astype(float)
    frame["n"] = frame["n"].astype(int)
    frame.attrs.update(level=LEVEL, test=test, totals=totals)  # totals: v(S) − v(∅) per cell
    return frame
