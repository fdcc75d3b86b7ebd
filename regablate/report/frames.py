"""Results as pandas DataFrames: the one data model of run dirs, for notebooks and the report.

    import regablate
    runs = regablate.load_runs("multirun")            # one row per run
    curves = regablate.load_curves("multirun")        # one row per run and epoch
    table = regablate.summarize(runs, metric="val")   # the report's table, one row per group

`load_runs` and `load_curves` read run dirs with the report's reader (regablate.report.collect:
the same discovery, and corrupt, partial or unsafe dirs — a FIFO, a link out of the run dir, a
file over its size cap, a YAML alias, a number out of range, a field of the wrong type — skipped
with one warning each, its control characters escaped); groups and their
labels come from the report's grouping (regablate.report.select); `summarize` runs the report's
statistics (regablate.report.table / stats) on the frame's rows, so a notebook and
`regablate report` get the same numbers from the same code.

This module imports only the standard library at import time; pandas, scipy and the report are
imported when a function is called, so `import regablate` stays light.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from pathlib import Path

__all__ = ["load_runs", "load_curves", "summarize", "effects", "SkippedRunWarning"]

COMPLETED = ("completed",)
SPLITS = ("train", "val", "test")
CATEGORIES = ("status", "group", "label", "dataset", "model", "reg", "task", "metric", "device")
INTEGERS = ("seed", "data_seed", "trial", "best_epoch", "epochs_run", "n_params")
BOOLEANS = ("higher_is_better", "stopped_early")
NOT_METRICS = {"reliability", "warnings", "reg", "train", "val", "test"}  # dicts not flattened


class SkippedRunWarning(UserWarning):
    """A run dir that could not be read (corrupt, partial or unsafe); it is left out of the
    frame. The message names the dir and the reason."""


def _collect(paths) -> tuple[list, list]:
    """Every readable run under `paths` (default ./multirun and ./outputs) and a warning for
    each skipped dir."""
    from regablate.report.collect import collect

    roots = [Path(p) for p in paths] or [Path(d) for d in ("multirun", "outputs")
                                         if Path(d).is_dir()]
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or directory")
    from regablate.errors import escape_control

    runs, skipped = collect(roots)
    for path, reason in skipped:
        warnings.warn(escape_control(f"skipped {path}: {reason}"), SkippedRunWarning,
                      stacklevel=3)
    return runs, skipped


def _statuses(status) -> set | None:
    if status is None:
        return None
    return {status} if isinstance(status, str) else set(status)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _numbers(tree: dict, prefix: str, out: dict) -> None:
    """Numeric leaves of a summary dict as `<prefix>_<key>` (nested keys joined with `_`)."""
    for key, value in tree.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, dict):
            _numbers(value, name, out)
        elif _is_number(value):
            out[name] = float(value)


def _metrics(summary: dict) -> dict:
    out: dict = {}
    for split in SPLITS:
        _numbers(summary.get(split) or {}, split, out)
    gap = summary.get("gap")
    out["gap"] = float(gap) if _is_number(gap) else math.nan
    for key, value in summary.items():
        if isinstance(value, dict) and key not in NOT_METRICS:
            _numbers(value, key, out)
    return out


def _labels(runs: list, groups: list | None = None) -> tuple[dict, list]:
    """Run id -> (label, stack name), and the groups (made as the report makes them unless
    given) in the report's order."""
    from regablate.report.select import make_groups, stack_name

    groups = make_groups(runs) if groups is None else groups
    return {id(r): (g.name, stack_name(g.stack)) for g in groups for r in g.runs}, groups


def _typed(pd, frame, order: dict):
    """Proper dtypes: names as categories (in the report's order for label and reg), counts as
    nullable integers, flags as nullable booleans, numbers as floats; config columns typed by
    their values (ints with a gap -> Int64, bools -> boolean, mixed numbers -> float)."""
    for col in frame.columns:
        s = frame[col]
        if col in CATEGORIES:
            present = set(s.dropna().unique().tolist())
            cats = order.get(col) or sorted(map(str, present))
            frame[col] = pd.Categorical(s, categories=[c for c in cats if c in present])
            continue
        if col not in INTEGERS and col not in BOOLEANS and "." not in col:
            continue
        values = s.tolist()
        known = [v for v in values if not _missing(v)]
        if col in INTEGERS or (known and all(isinstance(v, int) and not isinstance(v, bool)
                                             for v in known)):
            try:
                frame[col] = pd.to_numeric(s, errors="raise").astype("Int64")
            except (TypeError, ValueError):  # not whole numbers after all
                pass
        elif col in BOOLEANS or (known and all(isinstance(v, bool) for v in known)):
            frame[col] = pd.array([None if _missing(v) else bool(v) for v in values],
                                  dtype="boolean")
        elif known and all(_is_number(v) for v in known):
            frame[col] = s.astype(float)
    return frame


def _frame_name(name: str, columns) -> str:
    """A metrics.csv column under the frames' one convention: `weights/sparsity` ->
    `weights_sparsity`, as load_runs flattens summary.json's `weights` (unless the file has that
    name too)."""
    flat = name.replace("/", "_")
    return name if flat != name and flat in columns else flat


class _Studies:
    """An Optuna sweep's trial and objective for each of its runs (trial_<n>/seed_<s>, with
    optuna_study.json in the sweep dir, as the report reads them: regablate.report.study)."""

    def __init__(self):
        self.found: dict = {}

    def study(self, run) -> dict | None:
        if not re.fullmatch(r"trial_\d+", run.path.parent.name):
            return None
        sweep = run.path.parent.parent
        if sweep not in self.found:
            from regablate.report.study import find_study

            self.found[sweep] = find_study([sweep])
        return self.found[sweep]

    def row(self, run) -> dict:
        """{"trial": n, "objective": value (NaN unless completed)} of a study's run, else {}."""
        study = self.study(run)
        if study is None:
            return {}
        from regablate.config.objective import value

        x = value(run.summary, study["objective"]) if run.status == "completed" else None
        return {"trial": int(run.path.parent.name[6:]),
                "objective": math.nan if x is None else float(x)}

    def head(self) -> list:
        return ["trial", "objective"] if any(s is not None for s in self.found.values()) else []


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def runs_frame(runs: list, status=COMPLETED, groups: list | None = None):
    """The `load_runs` frame of Run records (regablate.report.collect) already read; labels
    from `groups` (regablate.report.select.Group) when given."""
    import pandas as pd

    labels, groups = _labels(runs, groups)
    wanted = _statuses(status)
    rows, config_keys, studies = [], {}, _Studies()
    for r in runs:
        if wanted is not None and r.status not in wanted:
            continue
        s = r.summary
        label, reg = labels[id(r)]
        config = {k: copy.deepcopy(r.lists[k]) if k in r.lists else v
                  for k, v in r.config.items() if "." in k}
        config_keys.update(dict.fromkeys(config))
        rows.append({
            "run_dir": str(r.path), "status": r.status, "group": r.group, "label": label,
            "seed": s.get("seed"), "data_seed": s.get("data_seed"), "dataset": s.get("dataset"),
            "model": s.get("model"), "reg": reg, "task": s.get("task"), "metric": r.metric,
            "higher_is_better": s.get("higher_is_better"), **config, **_metrics(s),
            **{k: s.get(k) for k in ("best_epoch", "epochs_run", "stopped_early",
                                     "wall_time_s", "n_params", "device")},
            "warnings": ",".join(str(w.get("id") or w.get("message")) for w in
                                 s.get("warnings") or [] if isinstance(w, dict)),
            "error": s.get("error"), "summary_group": s.get("group"), **studies.row(r)})
    head = ["run_dir", "status", "group", "label", *studies.head(), "seed", "data_seed",
            "dataset", "model", "reg", "task", "metric", "higher_is_better", *config_keys]
    frame = pd.DataFrame(rows, columns=None if rows else head)
    if rows:
        rest = [c for c in frame.columns if c not in head]
        frame = frame[head + rest]
    if "wall_time_s" in frame:
        frame["wall_time_s"] = frame["wall_time_s"].astype(float)
    order = {"label": [g.name for g in groups],
             "reg": list(dict.fromkeys(labels[id(g.runs[0])][1] for g in groups)),
             "status": ["completed", "running", "diverged", "failed", "interrupted"]}
    return _typed(pd, frame, order)


def load_runs(*paths, status=COMPLETED):
    """One row per run dir under `paths` (run dirs or folders holding them; default ./multirun
    and ./outputs), as a pandas DataFrame.

    Columns: run_dir, status, group (the report's group id), label (the report's readable group
    label, floats to 4 significant digits), for an Optuna sweep's runs trial (its number) and
    objective (the run's value of the study's trainer.objective; NaN unless completed), seed,
    data_seed, dataset, model, reg (the stack, e.g. "dropout+l2" or "none"), task, metric,
    higher_is_better; every resolved config setting as a dotted column (reg.dropout.p, optim.lr,
    ...; a list setting such as model.hidden as a list; NA where a run has no such setting);
    every numeric summary metric flattened with `_` (train_acc, val_loss, test_nll, gap,
    weights_sparsity, mc_val_mean_std, ...); best_epoch, epochs_run, stopped_early, wall_time_s,
    n_params, device, warnings (their ids, comma-joined), error, summary_group (the group id in
    summary.json).

    `status`: the statuses kept (default: completed only); None keeps every run, running,
    diverged and failed ones included. Unreadable dirs are skipped with a SkippedRunWarning each.
    """
    runs, _ = _collect(paths)
    return runs_frame(runs, status)


def load_curves(*paths, status=None):
    """One row per run and epoch: every column of each run's metrics.csv (epoch, lr,
    train_loss, val_acc, gap, train_objective, weights_norm, ...), with run_dir, status, group,
    label, trial (an Optuna sweep's runs), reg, seed and data_seed joined. Names follow
    load_runs: `/` becomes `_` (metrics.csv's `weights/sparsity` is `weights_sparsity`, the
    name load_runs gives summary.json's), and an older file's `objective` is
    `train_objective`. A running run contributes the epochs it has written (a half-written
    last line is dropped). `status` as in `load_runs`, default every run."""
    import pandas as pd

    from regablate.errors import escape_control
    from regablate.report.collect import Unreadable, metric_columns, read_metrics

    runs, _ = _collect(paths)
    labels, groups = _labels(runs)
    wanted = _statuses(status)
    runs = [r for r in runs if wanted is None or r.status in wanted]
    studies = _Studies()
    trials = [studies.row(r).get("trial") for r in runs]
    trial = ("trial",) if studies.head() else ()  # an Optuna sweep's runs
    keys = ("run_dir", "status", "group", "label", *trial, "reg", "seed", "data_seed")
    data: dict = {k: [] for k in keys}
    total = 0
    for r, n_trial in zip(runs, trials, strict=True):
        try:
            header, rows = read_metrics(str(r.path), r.metric, r.status)
            columns = metric_columns(header, rows)
        except (Unreadable, OSError) as e:  # changed since it was read
            warnings.warn(escape_control(f"skipped {r.path}: {e}"), SkippedRunWarning,
                          stacklevel=2)
            continue
        n = len(rows)
        if not n:
            continue
        label, reg = labels[id(r)]
        joined = (str(r.path), r.status, r.group, label, *(n_trial,)[:len(trial)], reg,
                  r.summary.get("seed"), r.summary.get("data_seed"))
        for key, value in zip(keys, joined, strict=True):
            data[key] += [value] * n
        for name, values in columns.items():
            name = _frame_name(name, columns)
            if name not in data:
                data[name] = [math.nan] * total
            data[name].extend(values)
        total += n
        for values in data.values():
            if len(values) < total:
                values.extend([math.nan] * (total - len(values)))
    frame = pd.DataFrame(data)
    if "trial" in frame:
        frame["trial"] = frame["trial"].astype("Int64")
    if "epoch" in frame:
        try:
            frame["epoch"] = frame["epoch"].astype("Int64")
        except (TypeError, ValueError):  # a fractional epoch: keep it as written
            pass
    order = {"label": [g.name for g in groups],
             "reg": list(dict.fromkeys(labels[id(g.runs[0])][1] for g in groups)),
             "status": ["completed", "running", "diverged", "failed", "interrupted"]}
    return _typed(pd, frame, order)


# ---- the report's statistics on a frame ----

def records(frame) -> list:
    """Run records (regablate.report.collect.Run) of a `load_runs` frame's rows: what the
    report's grouping and statistics read. Config settings come from the dotted columns
    (NA = absent), split metrics from the train_/val_/test_ columns."""
    from regablate.report.collect import Run, plain_value

    need = {"run_dir", "status", "group", "reg", "metric", "seed", "data_seed"}
    if missing := sorted(need - set(frame.columns)):
        raise ValueError(f"summarize: the frame lacks column(s) {', '.join(missing)}; "
                         "pass what regablate.load_runs returns")
    config_cols = [c for c in frame.columns if "." in c]
    split_cols = {s: [c for c in frame.columns if c.startswith(f"{s}_")] for s in SPLITS}
    out = []
    for row in frame.to_dict("records"):
        v = {k: plain_value(x) for k, x in row.items()}
        metric = v["metric"]
        status = v["status"]
        done = status == "completed"
        summary = {
            "status": status, "group": v.get("summary_group") or v["group"], "metric": metric,
            "higher_is_better": metric != "mse" if v.get("higher_is_better") is None
            else v["higher_is_better"],
            "seed": v["seed"], "data_seed": v["data_seed"],
            **{k: v.get(k) for k in ("task", "dataset", "model", "best_epoch", "epochs_run",
                                     "error")},
            "reg": [] if v["reg"] in (None, "none") else sorted(str(v["reg"]).split("+")),
            "gap": v.get("gap"),
            "warnings": [{"id": w} for w in (v.get("warnings") or "").split(",") if w]}
        for split, cols in split_cols.items():
            values = {c[len(split) + 1:]: v[c] for c in cols if v[c] is not None}
            if done and split != "test" and metric and metric not in values:
                values[metric] = math.nan  # NA in a completed run's frame row: NaN in its file
            summary[split] = values or (None if not done else {})
        config = {k: str(v[k]) if isinstance(v[k], list) else v[k]  # as the reader has them
                  for k in config_cols if v[k] is not None}
        out.append(Run(Path(v["run_dir"]), summary, config, [], {}, str(v["group"])))
    return out


STAT_FIELDS = ("mean", "std", "ci_low", "ci_high", "n")


def summarize(runs, metric: str = "val", baseline: str | None = None, paired: bool = True,
              test: str = "t"):
    """The report's group table as a DataFrame: one row per group of `runs` (a `load_runs`
    frame, filtered as you like), in the report's order (baseline first).

    Columns: label, the config settings that tell groups apart, n (completed runs averaged),
    <split>_mean / _std / _ci_low / _ci_high / _n for train, val, test and gap (sample std,
    t-based 95% interval), best_epoch (mean), delta and p (the `metric` split minus the
    baseline's, Holm-adjusted p) and p_raw, method (the test; paired when `paired` and both
    groups ran the same seeds, or at least 3 in common: then over those alone, their number in
    `pairs`, else NaN; otherwise Welch's), delta_gap, p_gap, p_gap_raw, method_gap, pairs_gap, p_reason
    and p_gap_reason (why p is NaN: fewer than 3 seeds, no significance test, method None; or a spread
    that is float rounding), p_floor and p_gap_floor (the smallest p the sign-flip or Wilcoxon
    test can give at that n, else NaN), warnings (distinct ids), not_averaged (runs of other
    statuses), group, reg, metric, baseline, is_baseline. The same numbers as
    `regablate report --format csv` (`--test`).

    `metric`: "val", "train" or "test". `baseline`: a group's label or id; default: the group
    with an empty stack (matched by settings outside reg.* when there are several). `test`:
    "t" (paired t-test, Welch's where unpaired), "signflip" (exact paired sign-flip
    permutation test, p >= 2/2^n) or "wilcoxon" (signed-rank); the last two need `paired`.
    """
    from regablate.report.select import choose
    from regablate.report.table import group_report

    if metric not in SPLITS:
        raise ValueError(f"summarize: metric={metric!r}; allowed: {', '.join(SPLITS)}")
    from regablate.report.paired import TESTS

    if test not in TESTS:
        raise ValueError(f"summarize: test={test!r}; allowed: {', '.join(TESTS)}")
    if test != "t" and not paired:
        raise ValueError(f"summarize: test={test!r} is a paired test: it needs paired=True "
                         "(paired=False is Welch's t-test)")
    groups = choose(records(runs), [], baseline)
    if not groups:
        raise ValueError("summarize: no runs in the frame")
    return report_frame(group_report(groups, metric, paired, test), groups)


def report_frame(report, groups: list):
    """A group Report (regablate.report.table.group_report) as the `summarize` DataFrame."""
    import pandas as pd

    from regablate.report.select import stack_name

    keys = [c.key for c in report.columns if c.kind != "ci"]
    by_id = {g.id: g for g in groups}
    rows = []
    for row in report.rows:
        g = by_id[row["group"]]
        flat = {"label": row["name"]}
        for key in keys[1:]:
            v = row.get(key)
            if hasattr(v, "mean") and hasattr(v, "lo"):  # a Stat
                flat.update(zip((f"{key}_{f}" for f in STAT_FIELDS),
                                (v.mean, v.std, v.lo, v.hi, v.n), strict=True))
            else:
                flat[key] = v
        flat.setdefault("not_averaged", row["not_averaged"])
        flat.update({"p_raw": row["p_raw"], "p_gap_raw": row["p_gap_raw"],
                     "method": row["method"], "method_gap": row["method_gap"],
                     **{k: row[k] for k in ("p_reason", "p_gap_reason")},
                     **{k: math.nan if row[k] is None else row[k] for k in ("pairs", "pairs_gap")},
                     **{k: math.nan if row[k] is None else row[k]
                        for k in ("p_floor", "p_gap_floor")},
                     "group": g.id, "reg": stack_name(g.stack), "metric": row["metric"],
                     "baseline": row["baseline"], "is_baseline": row["is_baseline"]})
        rows.append(flat)
    frame = pd.DataFrame(rows)
    for col in ("p", "p_raw", "p_gap", "p_gap_raw", "p_floor", "p_gap_floor", "delta",
                "delta_gap", "best_epoch"):
        frame[col] = frame[col].astype(float)
    frame["not_averaged"] = frame["not_averaged"].fillna("")
    frame["is_baseline"] = frame["is_baseline"].astype(bool)
    return frame


def effects(runs, metric: str = "val", design: str | None = None, components=None,
            test: str = "t"):
    """Each regulariser's share of a stack's effect on `metric`, with t intervals over seeds:
    one row per estimate (component, kind, delta, lo, hi, p, p_holm, n, then the settings that
    tell cells apart, reason, design, metric, higher_is_better); `test`: "t", "signflip" or
    "wilcoxon" for p. `runs`: a frame of `load_runs`, or run-dir paths. See regablate.report.effects."""
    from regablate.report.effects import effects as compute

    if not hasattr(runs, "columns"):
        runs = load_runs(*([runs] if isinstance(runs, (str, Path)) else list(runs)))
    return compute(runs, metric=metric, design=design, components=components, test=test)
