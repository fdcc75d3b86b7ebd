"""The report as data: columns (header, kind, direction) and rows, per group or per run.

Rows hold raw values (numbers, `Stat`s); render.py turns them into text. A group row averages
its completed runs only; `--metric` picks the split compared with the baseline.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass

from regablate.report.collect import SPLITS, STATUSES, Run
from regablate.report.select import Group, config_columns
from regablate.report.stats import Stat, compare, describe, holm

LOWER_IS_BETTER = {"loss", "mse", "mae", "nll", "ece", "brier", "gap"}


@dataclass(frozen=True)
class Column:
    """key: row key; head: header, two lines split by a newline; kind: how to format;
    better: "metric" (the row's direction), "lower", "higher" or None; drop: the higher,
    the sooner the column is hidden on a narrow terminal (0: never)."""

    key: str
    head: str
    kind: str = "text"
    better: str | None = None
    drop: int = 0


@dataclass
class Report:
    columns: list
    rows: list
    footer: list
    doc: dict  # json fields beside the rows (each row carries its own json under "doc")


def _config_cols(keys: list[str]) -> list[Column]:
    return [Column(k, "\n".join(k.rsplit(".", 1)) if "." in k else f"\n{k}", "text", drop=7)
            for k in keys]


def _split_cols(metric: str, kind: str) -> list[Column]:
    return [Column(s, f"{s}\n{metric}", kind, "metric", drop=0 if s == "val" else 3) for s in SPLITS]


def _metric_name(runs: list[Run]) -> str:
    metrics = {r.metric for r in runs if r.metric}
    return metrics.pop() if len(metrics) == 1 else "metric"


def _task(g: Group) -> Run:
    """The run that says the group's metric (a job that failed early may not know it)."""
    return next((r for r in g.runs if r.metric), g.runs[0])


def _pairs(runs: list[Run], split: str) -> list:
    return [((r.summary.get("seed"), r.summary.get("data_seed")), r.value(split)) for r in runs]


def _stat_json(s: Stat) -> dict:
    return {"n": s.n, "mean": s.mean, "std": s.std, "ci95": [s.lo, s.hi]}


def _numeric_keys(runs: list[Run], split: str) -> list[str]:
    keys = dict.fromkeys(k for r in runs for k, v in (r.summary.get(split) or {}).items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool))
    return list(keys)


def _group_row(g: Group, keys: list[str]) -> dict:
    done = g.done
    statuses = Counter(r.status for r in g.runs)
    ids = {w.get("id") or w.get("message") for r in g.runs for w in r.summary.get("warnings") or []
           if isinstance(w, dict)}
    epochs = [float(r.summary["best_epoch"]) for r in done
              if isinstance(r.summary.get("best_epoch"), (int, float))]
    nonfinite = sum(bool(r.nonfinite) for r in g.runs if r.status == "completed")
    row = {"name": g.name, "group": g.id, "reg": list(g.stack), "metric": _task(g).metric,
           "higher_is_better": bool(_task(g).summary["higher_is_better"]), "n": len(done),
           **{s: describe(r.value(s) for r in done) for s in (*SPLITS, "gap")},
           "best_epoch": sum(epochs) / len(epochs) if epochs else math.nan,
           "warnings": len(ids),
           "not_averaged": ", ".join([f"{statuses[s]} {s}" for s in STATUSES[1:] if statuses[s]]
                                     + ([f"{nonfinite} non-finite"] if nonfinite else [])),
           "baseline": g.baseline.name if g.baseline else None}
    row["gap_ci"] = row["gap"]
    row.update({k: g.config.get(k) for k in keys})
    return row


def group_report(groups: list[Group], split: str, paired: bool, test: str = "t") -> Report:
    """One row per group, compared on `split` and on the gap with its baseline by `test` ("t":
    paired t-test, or Welch's when the seeds differ or not `paired`; "signflip", "wilcoxon")."""
    runs = [r for g in groups for r in g.runs]
    keys = config_columns(groups, per_run=False)
    rows, docs = [], []
    baseline_ids = {g.baseline.id for g in groups if g.baseline}
    for g in groups:
        row = _group_row(g, keys)
        row["is_baseline"] = g.id in baseline_ids
        for name, src in (("", split), ("_gap", "gap")):
            c = compare(_pairs(g.done, src), _pairs(g.baseline.done, src), paired, test) \
                if g.baseline else compare([], [])
            row.update({f"delta{name}": c.delta, f"p{name}_raw": c.p, f"method{name}": c.test,
                        f"p{name}_reason": c.reason, f"p{name}_floor": c.floor,
                        f"p{name}_at_floor": c.at_floor, f"pairs{name}": c.pairs})
        rows.append(row)
        docs.append({
            **{k: row[k] for k in ("name", "group", "reg", "metric", "higher_is_better", "n")},
            "statuses": dict(Counter(r.status for r in g.runs)), "low_n": row["n"] < 3,
            **{s: {k: _stat_json(describe(r.value(s, k) for r in g.done))
                   for k in _numeric_keys(g.done, s)} for s in SPLITS},
            "gap": _stat_json(row["gap"]), "best_epoch": row["best_epoch"],
            "warnings": row["warnings"], "config": {k: row[k] for k in keys},
            "baseline": row["baseline"], "is_baseline": row["is_baseline"]})
        if bad := [str(r.path) for r in g.runs if r.status == "completed" and r.nonfinite]:
            docs[-1]["non_finite"] = bad  # completed, not averaged
        row["doc"] = docs[-1]
    for name in ("", "_gap"):
        for row, p in zip(rows, holm([r[f"p{name}_raw"] for r in rows]), strict=True):
            row[f"p{name}"] = p
    for row, doc in zip(rows, docs, strict=True):
        doc["vs_baseline"] = None if row["baseline"] is None else {
            f"{split}_{row['metric']}": _vs_json(row, ""), "gap": _vs_json(row, "_gap")}
    m = _metric_name(runs)
    columns = [Column("name", "\ngroup"), *_config_cols(keys), Column("n", "\nn", "n"),
               *_split_cols(m, "stat"), Column("gap", "gap\nmean ± std", "stat", "lower"),
               Column("gap_ci", "gap\n95% CI", "ci", drop=2),
               Column("best_epoch", "best\nepoch", "epoch", drop=5),
               Column("delta", f"Δ {split}\n{m}", "delta", "metric", drop=1),
               Column("p", "p\n(Holm)", "p", drop=1),
               Column("delta_gap", "Δ\ngap", "delta", "lower", drop=2),
               Column("p_gap", "p gap\n(Holm)", "p", drop=2),
               Column("warnings", "warn-\nings", "int", drop=6)]
    if any(r["not_averaged"] for r in rows):
        columns.append(Column("not_averaged", "not\naveraged", drop=4))
    footer = (_counts(runs, " (only completed runs are averaged)") + _nonfinite_note(runs)
              + _final_model_note(runs) + _test_note(rows, split) + _no_p_note(rows, split)
              + _pairs_note(rows) + _floor_note(rows) + _seed_note(rows))
    return Report(columns, rows, footer, {"metric_split": split})


def _vs_json(row: dict, name: str) -> dict:
    """One comparison of a group with its baseline; "reason" (why p is null) and "floor" (the
    smallest p the test can give, sign-flip and Wilcoxon only) only where they apply."""
    out = {"delta": row[f"delta{name}"], "p": row[f"p{name}_raw"], "p_holm": row[f"p{name}"],
           "test": row[f"method{name}"]}
    if row[f"p{name}_reason"]:
        out["reason"] = row[f"p{name}_reason"]
    if row[f"p{name}_floor"] is not None:
        out["floor"] = row[f"p{name}_floor"]
    if row[f"pairs{name}"] is not None:
        out["pairs"] = row[f"pairs{name}"]
    return out


def _rel(path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def run_report(groups: list[Group]) -> Report:
    """One row per run, every status included, with extra numeric keys carried through."""
    runs = [r for g in groups for r in g.runs]
    keys = config_columns(groups, per_run=True)
    extra = [(s, k) for s in SPLITS for k in _numeric_keys(runs, s)
             if k not in {r.metric for r in runs}]
    rows = []
    for g in groups:
        for r in sorted(g.runs, key=lambda r: (str(r.summary.get("seed")), str(r.path))):
            s = r.summary
            row = {"run": _rel(r.path), "status": r.status, "name": g.name, "group": g.id,
                   "seed": s.get("seed"), "data_seed": s.get("data_seed"), "metric": r.metric,
                   "higher_is_better": bool(s["higher_is_better"]),
                   **{k: r.config.get(k) for k in keys},
                   **{sp: r.value(sp) for sp in (*SPLITS, "gap")},
                   "best_epoch": s.get("best_epoch"), "epochs_run": s.get("epochs_run"),
                   "warnings": len(s.get("warnings") or []),
                   **{f"{sp}_{k}": r.value(sp, k) for sp, k in extra}}
            row["doc"] = _run_json(r, g, keys)
            rows.append(row)
    m = _metric_name(runs)
    columns = [Column("run", "run\ndir", drop=0), Column("status", "\nstatus"),
               Column("name", "\ngroup"), Column("seed", "\nseed", "int"),
               Column("data_seed", "data\nseed", "int", drop=4), *_config_cols(keys),
               *_split_cols(m, "num"), Column("gap", "\ngap", "num", "lower"),
               Column("best_epoch", "best\nepoch", "int", drop=4),
               Column("epochs_run", "epochs\nrun", "int", drop=4),
               Column("warnings", "warn-\nings", "int", drop=5),
               *[Column(f"{s}_{k}", f"{s}\n{k}", "num", _direction(k), drop=7) for s, k in extra]]
    return Report(columns, rows, _counts(runs) + _nonfinite_note(runs, "not averaged") + _final_model_note(runs), {})


def _direction(key: str) -> str | None:
    return "lower" if key in LOWER_IS_BETTER else "higher" if key in {"acc", "auc", "f1"} else None


def _run_json(r: Run, g: Group, keys: list[str]) -> dict:
    s = r.summary
    fields = ("status", "seed", "data_seed", "task", "metric", "higher_is_better", "reg", "train",
              "val", "test", "gap", "best_epoch", "epochs_run", "stopped_early", "wall_time_s",
              "device", "n_params", "warnings", "error")
    return {"dir": str(r.path), "name": g.name, "group": g.id, **{k: s.get(k) for k in fields},
            "config": {k: r.config.get(k) for k in keys}, "overrides": r.overrides}


def no_negative_zero(text: str, signed: bool) -> str:
    """A number's text without the minus of a value that rounds to zero: float noise such as
    -1e-17 prints '-0.000', shown '+0.000' (signed) or '0.000'."""
    if text.startswith("-") and float(text) == 0:
        return ("+" if signed else "") + text[1:]
    return text


def _counts(runs: list[Run], note: str = "") -> list[str]:
    c = Counter(r.status for r in runs)
    shown = [f"{c[s]} {s}" for s in STATUSES if s != "interrupted" or c[s]]
    return ["runs: " + " · ".join(shown) + note]


def _nonfinite_note(runs: list[Run], what: str = "left out") -> list[str]:
    """One line naming the completed runs whose metric or gap is NaN or infinite."""
    bad = [r for r in runs if r.status == "completed" and r.nonfinite]
    if not bad:
        return []
    return [f"{len(bad)} run{'s' * (len(bad) != 1)} with non-finite metrics {what}: "
            + ", ".join(f"{_rel(r.path)} ({', '.join(r.nonfinite)})" for r in bad)]


def _final_model_note(runs: list[Run]) -> list[str]:
    """A line where completed runs were scored at an epoch other than their best val epoch
    (trainer.restore_best=false: the final model), so 'best epoch' is not the epoch scored."""
    later = [r for r in runs if r.status == "completed" and isinstance(r.summary.get("metrics_epoch"), int)
             and r.summary["metrics_epoch"] != r.summary.get("best_epoch")]
    if not later:
        return []
    return [f"{len(later)} run{'s' * (len(later) != 1)} scored at a later epoch than the best (the final model, "
            "trainer.restore_best=false): their metrics are the final epoch's, 'best epoch' their best val epoch"]


def _test_note(rows: list[dict], split: str) -> list[str]:
    bases = sorted({r["baseline"] for r in rows if r["baseline"]})
    if not bases and rows and not any(r["reg"] for r in rows):
        return ["only the baseline (empty stack) here: nothing to compare the baseline with; "
                "run a regulariser too (e.g. +reg=none,dropout)"]
    if not bases:
        return ["no baseline group (empty stack) to compare with; name one with --baseline"]
    tests = sorted({r[k] for r in rows for k in ("method", "method_gap") if r[k]})
    m = sum(not math.isnan(r["p_raw"]) for r in rows)
    lines = [f"Δ, p: {split} metric and gap minus baseline {', '.join(map(repr, bases))}; "
             f"{' / '.join(tests) + ', two-sided' if tests else 'no significance test'}"
             + (f", Holm-adjusted over {m} comparison{'s' * (m != 1)}" if m else "")]
    orphans = [r["name"] for r in rows if not r["baseline"] and not r["is_baseline"]]
    if orphans:
        lines.append(f"no unique baseline for {', '.join(orphans)}; name one with --baseline")
    return lines


def _no_p_note(rows: list[dict], split: str) -> list[str]:
    """One line per reason a comparison has no p: "no p for <groups>: <reason>" (a group
    named with "(Δ <split>)" or "(Δ gap)" when only that comparison has none)."""
    by_reason: dict = {}
    for r in rows:
        if not r["baseline"]:
            continue
        for name, what in (("", f"Δ {split}"), ("_gap", "Δ gap")):
            if reason := r[f"p{name}_reason"]:
                by_reason.setdefault(reason, {}).setdefault(r["name"], []).append(what)
    return [f"no p for {', '.join(g if len(w) == 2 else f'{g} ({w[0]})' for g, w in groups.items())}"
            f": {reason}" for reason, groups in by_reason.items()]


def _pairs_note(rows: list[dict]) -> list[str]:
    """A line naming the groups compared over only the seeds they and their baseline both ran."""
    n = {r["name"]: r["n"] for r in rows}
    some = [f"{r['name']} ({r['pairs']} of its {r['n']}, {r['baseline']}'s {n.get(r['baseline'], '?')})"
            for r in rows if r["pairs"] is not None]
    return [f"Δ and p over the seeds both ran, paired: {', '.join(some)}"] if some else []


def _floor_note(rows: list[dict]) -> list[str]:
    """A line per test whose raw p sits at its floor, the smallest p it can give with the seeds
    there are (2/2^n for the sign-flip test: 1/16 at n = 5): a p no smaller data could give."""
    at: dict = {}
    for r in rows:
        for name in ("", "_gap"):
            if r[f"p{name}_at_floor"]:
                key = (r[f"method{name}"], r[f"p{name}_floor"])
                at.setdefault(key, {}).setdefault(r["name"], None)
    lines = []
    for (test, floor), groups in at.items():
        inv = 1 / floor
        shown = f"1/{round(inv)} = {floor:.4g}" if abs(inv - round(inv)) < 1e-6 * inv \
            else f"{floor:.4g}"
        n = "n the seeds whose difference is not 0" if "Wilcoxon" in test else "at n seeds"
        lines.append(f"p at its floor for {', '.join(groups)}: the {test} cannot give a two-sided "
                     f"p below {shown} with these seeds (2/2^n, {n}); more seeds can")
    return lines


def _seed_note(rows: list[dict]) -> list[str]:
    if any(r["n"] < 3 for r in rows):
        return ["* fewer than 3 completed seeds; at least 5 seeds per group are recommended"]
    if any(r["n"] < 5 for r in rows):
        return [f"at least 5 seeds per group are recommended (fewest here: "
                f"{min(r['n'] for r in rows)})"]
    return []


# ---- the components table of a design sweep (regablate.report.effects) ----

EFFECT_GROUPS = (("leave_one_out", "leave-one-out"), ("add_one_in", "add-one-in"),
                 ("main", "factorial"), ("shapley", "Shapley φ"))
EFFECT_LEGEND = {
    "leave_one_out": "leave-one-out Δ = v(S) − v(S∖c)",
    "add_one_in": "add-one-in Δ = v({c}) − v(∅)",
    "main": "factorial Δ = main effect, mean over the arms with c minus those without "
            "(rows c×d: the interaction v(B∪cd) − v(B∪c) − v(B∪d) + v(B), averaged over the other "
            "components' subsets B: the ±½-coded regression coefficient, twice Yates' interaction effect)",
    "shapley": "Shapley φ_c = c's share of the full gain v(S) − v(∅) (Σ_c φ_c = v(S) − v(∅) "
               "per seed); share = φ_c / Σφ"}


def effect_settings(frame) -> list[str]:
    """The columns of an `effects` frame that tell its cells apart (dotted config keys)."""
    from regablate.report.effects import COLUMNS, TAIL

    return [c for c in frame.columns if c not in COLUMNS and c not in TAIL]


def effect_records(frame) -> list[dict]:
    """The rows of an `effects` frame as plain Python values (NaN and pandas' NA as None, as
    JSON writes them), columns as in the frame."""
    from regablate.report.collect import plain_value as _value

    return [{k: _value(v) for k, v in rec.items()} for rec in frame.to_dict("records")]


def effects_report(frame) -> Report:
    """The components table of an `effects` frame: per cell, one row per component (then one
    per c×d pair), each kind's Δ, 95% CI and Holm p side by side (interactions in the factorial
    columns), each component's Shapley φ with its share of the full gain, and the seeds used.
    The footer names the design, the test and why a p is missing where it is."""
    from regablate.report.paired import NAMES

    settings = effect_settings(frame)
    cells: dict = {}
    for rec in effect_records(frame):
        rec.update({k: math.nan if rec[k] is None else float(rec[k])
                    for k in ("delta", "lo", "hi", "p", "p_holm")})
        key = (tuple(repr(rec[c]) for c in settings), rec["metric"], rec["design"])
        cell = cells.setdefault(key, {"rec": rec, "rows": {}})
        group = "main" if rec["kind"] == "interaction" else rec["kind"]
        cell["rows"].setdefault(rec["component"], {})[group] = rec
    present = {g for cell in cells.values() for row in cell["rows"].values() for g in row}
    rows, sums = [], []
    totals = {tuple(repr(t["where"].get(c)) for c in settings): t for t in frame.attrs.get("totals", [])}
    for key, cell in cells.items():
        first = cell["rec"]
        whole = totals.get(key[0])
        name = str(first["metric"])
        phi = [r["shapley"]["delta"] for r in cell["rows"].values() if "shapley" in r]
        total = math.fsum(phi) if phi and all(map(math.isfinite, phi)) else math.nan
        scale = max((abs(x) for x in phi), default=0.0)
        if "shapley" in present:
            against = [c for c, r in cell["rows"].items() if "shapley" in r and math.isfinite(total)
                       and (r["shapley"]["hi"] < 0 if total > 0 else r["shapley"]["lo"] > 0)]  # its CI off 0
            sums.append((first, total, whole, against))
        for component, kinds in cell["rows"].items():
            ns = [r["n"] for r in kinds.values()]
            row = {**{c: first[c] for c in settings}, "component": component,
                   "metric": name.split("_", 1)[-1], "effect_metric": name,
                   "higher_is_better": bool(first["higher_is_better"]),
                   "design": first["design"], "n": (min(ns), max(ns))}
            for g, r in kinds.items():
                row.update({f"{g}_delta": r["delta"], f"{g}_ci": (r["lo"], r["hi"]),
                            f"{g}_p": r["p_holm"], f"{g}_kind": r["kind"]})
            if "shapley" in kinds:
                d = kinds["shapley"]["delta"]
                row["share"] = d / total if math.isfinite(total) and abs(total) > RTOL_SHARE * scale \
                    and _excludes_zero(whole) else math.nan
            rows.append(row)
    columns = [Column(c, "\n".join(c.rsplit(".", 1)) if "." in c else f"\n{c}") for c in settings]
    columns += [Column("component", "\ncomponent"), Column("n", "\nn", "seeds")]
    for g, label in EFFECT_GROUPS:
        if g not in present:
            continue
        columns += [Column(f"{g}_delta", f"{label}\nΔ", "delta"),
                    Column(f"{g}_ci", f"{label}\n95% CI", "interval", drop=3)]
        if g == "shapley":
            columns.append(Column("share", "share of\nfull − none", "share", drop=1))
        columns.append(Column(f"{g}_p", f"{label}\np (Holm)", "p", drop=2))
    test = NAMES.get(frame.attrs.get("test", "t"), str(frame.attrs.get("test")))
    return Report(columns, rows, _effects_footer(frame, rows, present, sums, settings, test),
                  {"test": frame.attrs.get("test", "t"), "level": frame.attrs.get("level")})


RTOL_SHARE = 1e-9  # Σφ no larger than this × the largest |φ| is rounding: no share is shown


def _excludes_zero(whole) -> bool:
    """Whether full − none's 95% interval excludes 0: a share of a gain that may be nothing (or
    of the other sign) is no share at all, so none is shown then. Without the interval (an
    effects frame from elsewhere), shares are shown as before."""
    if whole is None:
        return True
    lo, hi = whole.get("lo"), whole.get("hi")
    return lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def _effects_footer(frame, rows, present, sums, settings, test) -> list[str]:
    designs = sorted({r["design"] for r in rows})
    metrics = sorted({r["effect_metric"] for r in rows})
    lower = sorted({r["effect_metric"] for r in rows if not r["higher_is_better"]})
    lines = [f"components: {', '.join(metrics)} of the arms of the {' / '.join(designs)} design "
             "(v(A): the arm that stacks A, S: the full stack), paired over seeds; "
             f"Δ: mean of the per-seed contrasts with its 95% t interval; p: {test}, "
             "two-sided, Holm-adjusted within each kind"
             + (" and cell" if settings else "")
             + (f"; lower {', '.join(lower)} is better" if lower else "")]
    lines.append("; ".join(EFFECT_LEGEND[g] for g, _ in EFFECT_GROUPS if g in present))
    hidden, opposed = False, []
    for rec, total, whole, against in sums:
        where = " ".join(f"{c}={rec[c]}" for c in settings)
        number = ((lambda x: no_negative_zero(f"{x:+.3f}", True)) if rec["metric"].endswith("_acc")
                  else (lambda x: no_negative_zero(f"{x:+#.4g}", True)))
        ci = (f" [{number(whole['lo'])}, {number(whole['hi'])}], n={whole['n']}"
              if whole is not None and whole.get("lo") is not None and math.isfinite(whole["lo"]) else "")
        lines.append(f"full − none (Σφ){' at ' + where if where else ''}: "
                     + ("–" if not math.isfinite(total) else number(total) + ci))
        hidden |= math.isfinite(total) and not _excludes_zero(whole)
        if against and _excludes_zero(whole):
            opposed.append(", ".join(against) + (f" at {where}" if where else ""))
    if opposed:
        lines.append(f"share: {'; '.join(opposed)} worked against the whole effect (φ of the other sign, its "
                     "95% CI off 0): a negative share, and the others' add up to more than 100%; read φ itself")
    if hidden:
        lines.append("share: not shown where full − none's 95% CI includes 0 (a share of a whole "
                     "gain that may be zero, or of the other sign, means nothing)")
    missing: dict = {}
    for rec in effect_records(frame):
        p = rec["p"]
        if p is None or (isinstance(p, float) and math.isnan(p)):
            reason = rec["reason"] or "no test"
            missing.setdefault(reason, []).append(
                f"{rec['component']} ({rec['kind'].replace('_', '-')})")
    for reason, which in missing.items():
        shown = ", ".join(which[:6]) + (f" and {len(which) - 6} more" if len(which) > 6 else "")
        lines.append(f"no p for {len(which)} estimate{'s' * (len(which) != 1)}: {reason}: "
                     f"{shown}")
    if any(r["n"][0] < 3 for r in rows):
        lines.append("n: seeds used by the row's estimates (a range where a missing run drops "
                     "a seed from some); * fewer than 3 seeds")
    else:
        lines.append("n: seeds used by the row's estimates (a range where a missing run drops "
                     "a seed from some)")
    return lines
