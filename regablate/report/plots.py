"""PNG figures (matplotlib, Agg): learning curves per group and the gap per group.

File names are `<kind>_<stack>_<group id>.png` (e.g. curves_dropout_l2_0123456789ab.png): short
and stable whatever the labels, which grow with the settings that tell groups apart.

curves_*.png: loss and metric per epoch, train and val, the mean over completed seeds
with a ±1 std band, and the median best epoch marked. gap.png: each group's mean gap with
its t-based 95% interval, sorted, the baseline's mean as a reference line. val_curves.png:
every group's mean validation curve (primary metric) on the same axes, ±1 std band each.
effects.png (a design sweep: regablate.report.effects): a forest plot, each component's Δ
per kind with its 95% interval and zero marked, intervals that exclude 0 drawn solid.
reliability_*.png (classification runs with calibration in their summary): accuracy
against confidence per bin on the test split, bins pooled over seeds (count-weighted), with
the diagonal of perfect calibration and the mean ECE.

Labels from run dirs are drawn as plain text (no mathtext, control characters escaped); an
infinite value in a curve is left out like a missing one; a reliability table whose lists do
not fit together is not drawn.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from regablate.errors import escape_control
from regablate.report.select import Group, stack_name
from regablate.report.stats import describe
from regablate.rundir.untrusted import is_sane_number


def _mean_curve(runs, column: str):
    """Epochs and the per-epoch mean and std over the runs that reached each epoch."""
    epochs = sorted({e for r in runs for e in r.curves.get("epoch", [])})
    index = {e: i for i, e in enumerate(epochs)}
    grid = np.full((len(runs), len(epochs)), np.nan)
    for j, r in enumerate(runs):
        if column in r.curves:
            for e, v in zip(r.curves["epoch"], r.curves[column], strict=True):
                grid[j, index[e]] = v
    grid[~np.isfinite(grid)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # epochs only some seeds reached
        std = np.nanstd(grid, axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(epochs))
        return np.array(epochs), np.nanmean(grid, axis=0), np.nan_to_num(std)


def file_name(kind: str, g: Group) -> str:
    """`<kind>_<stack>_<id>.png`, in [A-Za-z0-9_.-] and at most 100 characters."""
    return f"{kind}_{_safe(f'{stack_name(g.stack)[:48]}_{g.id[:32]}').strip('_.')}.png"


def file_prefix(kind: str, stack: str) -> str:
    """What `file_name(kind, g)` of a group whose stack is named `stack` holds before its id."""
    return f"{kind}_{_safe(stack[:48]).lstrip('_.')}_"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text)


def _curves(plt, g: Group, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    runs = g.done
    metric = runs[0].metric
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    best = [r.summary["best_epoch"] for r in runs if isinstance(r.summary.get("best_epoch"), int)]
    for ax, what in zip(axes, ("loss", metric), strict=True):
        for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
            column = f"{split}_{what}"
            if not any(column in r.curves for r in runs):
                continue
            x, mean, std = _mean_curve(runs, column)
            ax.plot(x, mean, color=color, label=f"{split} (mean)")
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2,
                            label=f"{split} ±1 std" if len(runs) > 1 else None)
        if best:
            ax.axvline(float(np.median(best)), color="gray", linestyle="--",
                       label="best epoch (median)")
        ax.set(xlabel="epoch", ylabel=what, title=f"{what}: train vs val")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(escape_control(f"{g.name} — {runs[0].summary.get('dataset') or ''} / "
                                f"{runs[0].summary.get('model') or ''}, {len(runs)} seed(s)"))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _gap(plt, groups: list[Group], path: Path) -> None:
    rows = [(g, describe(r.value("gap") for r in g.done)) for g in groups]
    rows = sorted(((g, s) for g, s in rows if s.n), key=lambda gs: gs[1].mean)
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.45 * len(rows)), constrained_layout=True)
    y = np.arange(len(rows))
    mean = np.array([s.mean for _, s in rows])
    err = np.array([[s.mean - s.lo, s.hi - s.mean] for _, s in rows]).T
    ax.errorbar(mean, y, xerr=np.nan_to_num(err), fmt="o", capsize=4, color="tab:blue",
                label="mean gap, 95% CI (t)")
    bases = {g.baseline.id: g.baseline for g, _ in rows if g.baseline}
    for b in bases.values():
        ax.axvline(describe(r.value("gap") for r in b.done).mean, color="tab:red",
                   linestyle="--", label=escape_control(f"baseline: {b.name}"))
    ax.axvline(0, color="black", linewidth=0.8, label="no gap")
    ax.set_yticks(y, [escape_control(f"{g.name} (n={s.n})") for g, s in rows])
    ax.invert_yaxis()  # smallest gap on top
    metrics = sorted({g.done[0].metric for g, _ in rows})
    ax.set(xlabel=escape_control(f"train–val gap ({', '.join(metrics)}; positive = overfit)"),
           title="Generalisation gap per group, smallest first")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _overlay(plt, groups: list[Group], path: Path) -> None:
    """Every group's mean val curve of its metric on one axes, each with its ±1 std band."""
    from matplotlib.ticker import MaxNLocator

    many = len(groups) > 8  # the legend goes beside the axes, not over the curves
    fig, ax = plt.subplots(figsize=(11 if many else 8, 5), constrained_layout=True)
    metrics = []
    for i, g in enumerate(groups):
        runs = [r for r in g.done if r.curves.get("epoch")]
        column = f"val_{runs[0].metric}" if runs else ""
        if not any(column in r.curves for r in runs):
            continue
        metrics.append(runs[0].metric)
        x, mean, std = _mean_curve(runs, column)
        color = f"C{i % 10}"  # past 10 groups the colours come round again with another line style
        ax.plot(x, mean, color=color, linestyle=("-", "--", ":", "-.")[i // 10 % 4],
                label=escape_control(f"{g.name} (n={len(runs)})"))
        if len(runs) > 1:
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)
    what = escape_control(", ".join(sorted(set(metrics))))
    ax.set(xlabel="epoch", ylabel=f"val {what}",
           title=f"Validation {what} per group: mean over completed seeds, ±1 std band")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize="small", loc="best")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pooled_reliability(runs, split: str) -> dict | None:
    """Per-bin confidence and accuracy pooled over runs, weighted by each bin's count."""
    tables = [r.summary.get("reliability") for r in runs]
    tables = [t.get(split) for t in tables if isinstance(t, dict)]
    tables = [t for t in tables if _fits(t)]
    n_bins = len(tables[0]["count"]) if tables else 0
    tables = [t for t in tables if len(t["count"]) == n_bins]
    if not tables:
        return None
    count = np.zeros(n_bins)
    conf = np.zeros(n_bins)
    acc = np.zeros(n_bins)
    for t in tables:
        c = np.asarray(t["count"], dtype=float)
        count += c
        conf += c * np.nan_to_num(np.asarray(t["confidence"], dtype=float))
        acc += c * np.nan_to_num(np.asarray(t["accuracy"], dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": np.asarray(tables[0]["edges"]), "count": count,
                "confidence": conf / count, "accuracy": acc / count, "runs": len(tables)}


def _fits(table) -> bool:
    """A reliability table of n bins: count, confidence, accuracy (n numbers or nulls each,
    counts finite) and edges (n + 1 finite numbers)."""
    if not isinstance(table, dict) or not isinstance(table.get("count"), list):
        return False
    n = len(table["count"])
    lists = [table.get(k) for k in ("count", "confidence", "accuracy", "edges")]
    if not n or not all(isinstance(x, list) for x in lists) or \
            [len(x) for x in lists] != [n, n, n, n + 1]:
        return False
    return all(map(is_sane_number, table["count"] + table["edges"])) and all(
        x is None or is_sane_number(x) or isinstance(x, float)
        for x in table["confidence"] + table["accuracy"])


def _reliability(plt, g: Group, split: str, table: dict, path: Path) -> None:
    edges, width = table["edges"], np.diff(table["edges"])
    fig, ax = plt.subplots(figsize=(5, 5), constrained_layout=True)
    filled = table["count"] > 0
    ax.bar(edges[:-1][filled], table["accuracy"][filled], width=width[filled], align="edge",
           color="tab:blue", edgecolor="white", alpha=0.8, label="accuracy per bin")
    ax.plot(table["confidence"][filled], table["accuracy"][filled], "o", color="tab:orange",
            markersize=4, label="(mean confidence, accuracy)")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    eces = [r.value(split, "ece") for r in g.done]
    eces = [e for e in eces if not np.isnan(e)]
    ece = f", ECE {np.mean(eces):.3f}" + (f" ± {np.std(eces, ddof=1):.3f}" if len(eces) > 1 else "")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title=escape_control(f"{g.name}: reliability on {split}") +
           f"\n{table['runs']} seed(s){ece}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(groups: list[Group], out: Path) -> list[Path]:
    """Write the figures for `groups` (completed runs only) into `out`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"text.parse_math": False}):  # a "$" in a label is a "$"
        return _write_plots(plt, groups, out)


def _write_plots(plt, groups: list[Group], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for g in groups:
        if g.done and any(r.curves.get("epoch") for r in g.done):
            written.append(out / file_name("curves", g))
            _curves(plt, g, written[-1])
        for split in ("test", "val"):
            table = pooled_reliability(g.done, split)
            if table is not None:
                written.append(out / file_name("reliability", g))
                _reliability(plt, g, split, table, written[-1])
                break
    if any(g.done for g in groups):
        written.append(out / "gap.png")
        _gap(plt, groups, written[-1])
    if any(r.curves.get("epoch") for g in groups for r in g.done):
        written.append(out / "val_curves.png")
        _overlay(plt, groups, written[-1])
    return written


KIND_STYLE = {"leave_one_out": ("leave-one-out", "tab:blue"),
              "add_one_in": ("add-one-in", "tab:orange"),
              "main": ("main effect", "tab:green"),
              "interaction": ("interaction", "tab:purple"),
              "shapley": ("Shapley φ", "tab:red")}


def write_effects_plot(frame, out: Path) -> Path:
    """effects.png: a forest plot of a `regablate.effects` frame, one row per component and
    kind (grouped by component, cells one after the other), each Δ with its 95% interval, zero
    marked; an interval that excludes 0 over at least 3 seeds is drawn solid with a filled
    marker, any other (it includes 0, has none, or rests on fewer than 3 seeds, from which the
    report gives no p) faded with an open marker. The legend sits below the axes, off the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / "effects.png"
    with matplotlib.rc_context({"text.parse_math": False}):  # a "$" in a label is a "$"
        _effects(plt, frame, path)
    return path


def _effects(plt, frame, path: Path) -> None:
    from matplotlib.lines import Line2D

    from regablate.report.paired import MIN_SEEDS
    from regablate.report.table import effect_records, effect_settings

    settings = effect_settings(frame)
    records = effect_records(frame)
    order: dict = {}  # (cell, component) -> its rows, in the frame's order
    for rec in records:
        cell = " ".join(f"{c}={rec[c]}" for c in settings)
        order.setdefault((cell, rec["component"]), []).append(rec)
    rows, labels, y, pos, separators = [], [], [], 0.0, []
    for (cell, component), recs in order.items():
        if rows:
            separators.append(pos - 0.55)
        for rec in recs:
            rows.append(rec)
            what = KIND_STYLE[rec["kind"]][0]
            labels.append(escape_control(f"{cell + ' | ' if cell else ''}{component} · {what} "
                                         f"(n={rec['n']})"))
            y.append(pos)
            pos += 1.0
        pos += 0.5
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.32 * len(rows)), constrained_layout=True)
    for yi, rec in zip(y, rows, strict=True):
        color = KIND_STYLE[rec["kind"]][1]
        d, lo, hi = (float(rec[k]) if rec[k] is not None else np.nan for k in ("delta", "lo", "hi"))
        clear = np.isfinite(lo) and (lo > 0 or hi < 0) and (rec["n"] or 0) >= MIN_SEEDS
        if np.isfinite(lo):
            ax.hlines(yi, lo, hi, color=color, linewidth=2.4 if clear else 1.2,
                      alpha=1.0 if clear else 0.45)
            ax.vlines([lo, hi], yi - 0.18, yi + 0.18, color=color,
                      linewidth=1.2, alpha=1.0 if clear else 0.45)
        if np.isfinite(d):
            ax.plot(d, yi, "o", color=color, markersize=7 if clear else 6,
                    markerfacecolor=color if clear else "white", markeredgewidth=1.5)
    for s in separators:
        ax.axhline(s, color="0.85", linewidth=0.8)
    ax.axvline(0, color="black", linewidth=1.0, linestyle="--")
    ax.set_yticks(y, labels)
    ax.set_ylim(pos - 1.0 + 0.6, -0.6)  # the first component on top
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    handles = [Line2D([], [], color=KIND_STYLE[k][1], marker="o", linewidth=2,
                      label=KIND_STYLE[k][0]) for k in kinds]
    handles += [Line2D([], [], color="0.3", marker="o", linewidth=2.4,
                       label=f"95% CI excludes 0 (n ≥ {MIN_SEEDS})"),
                Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linewidth=1.2,
                       alpha=0.6, label=f"95% CI includes 0, or n < {MIN_SEEDS}"),
                Line2D([], [], color="black", linewidth=1.0, linestyle="--",
                       label="0: no effect")]
    fig.legend(handles=handles, fontsize="small", loc="outside lower center", ncol=4)
    metrics = ", ".join(sorted({str(r["metric"]) for r in rows}))
    better = {"higher" if r["higher_is_better"] else "lower" for r in rows}
    ax.set(xlabel=escape_control(f"Δ {metrics}, mean over seeds with its 95% t interval "
                                 f"({' / '.join(sorted(better))} is better)"),
           title=escape_control("Which component does the work: "
                                f"{' / '.join(sorted({str(r['design']) for r in rows}))} design, "
                                "paired over seeds"))
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # long labels: keep the title whole
    plt.close(fig)
