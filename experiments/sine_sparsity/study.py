"""sine_sparsity: L2 vs L1 over lam on a noisy sine: fit, distance to the truth, sparsity.

STUDY: its sweeps (the overrides after `+experiment=sine_sparsity`) and its reports.
extras(out): weights.md and plots/lam_sweep.png, and the facts and checked claims its README uses.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from studylib import (
    Report,
    Study,
    Sweep,
    ci,
    claims,
    errorbar,
    fmt,
    groups,
    md_table,
    plt,
    save_figure,
    stat,
    summaries,
)

STUDY = Study(
    sweeps=[Sweep(smoke=("++reg={},{l2:{lam:1e-3}},{l1:{lam:1e-4}}",))],
    reports=[Report("", ("--metric", "test"), plots=False)])


def _lam_of(s: dict) -> tuple[str, float]:
    for name in ("l1", "l2"):
        if f"reg.{name}.lam" in s["_cfg"]:
            return name, float(s["_cfg"][f"reg.{name}.lam"])
    return "none", 0.0


def extras(out: Path) -> dict:
    runs = summaries(out)
    cells = defaultdict(list)
    for s in runs:
        cells[_lam_of(s)].append(s)
    rows, table = {}, []
    for (kind, lam), ss in sorted(cells.items()):
        rows[(kind, lam)] = {
            "train": stat(s["train"]["mse"] for s in ss), "val": stat(s["val"]["mse"] for s in ss),
            "test": stat(s["test"]["mse"] for s in ss),
            "sparsity": stat(s["weights"]["sparsity"] for s in ss),
            "l1": stat(s["weights"]["l1"] for s in ss)}
        r = rows[(kind, lam)]
        table.append([kind, fmt(lam, 5) if lam else "–", str(r["train"]["n"]), ci(r["train"], 4),
                      ci(r["test"], 4), ci(r["sparsity"], 4), ci(r["l1"], 1)])
    md = md_table(["reg", "lam", "n", "train mse", "test mse (clean sin)",
                   "sparsity (share of weights with abs < 1e-3)", "sum of abs weights"], table)
    (out / "weights.md").write_text(md)
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    base = rows.get(("none", 0.0))
    for ax, key, title in zip(axes, ("train", "test", "sparsity"),
                              ("train MSE (noisy points)", "test MSE (clean sin x)",
                               "weight sparsity (abs < 1e-3)"), strict=True):
        for kind, color in (("l2", "tab:blue"), ("l1", "tab:red")):
            pts = sorted((lam, r[key]) for (k, lam), r in rows.items() if k == kind)
            if pts:
                errorbar(ax, [p[0] for p in pts], [p[1] for p in pts], label=kind, color=color)
        if base:
            ax.axhline(base[key]["mean"], color="gray", ls="--", label="none (mean)")
        ax.set(xscale="log", xlabel="lam", title=title + ", mean and 95% CI")
        if key != "sparsity":
            ax.set_yscale("log")
    save_figure(pyplot, fig, axes, f"sine_sparsity: MLP 128-128, 80 noisy points, "
                f"{base['train']['n'] if base else '?'} seeds", out / "plots" / "lam_sweep.png")
    facts = {}
    for (kind, lam), r in rows.items():
        k = f"{kind}{'_' + format(lam, 'g') if lam else ''}"
        for m in ("train", "test", "sparsity"):
            facts[f"{k}.{m}"] = ci(r[m], 4)
    best = min(rows.items(), key=lambda kv: kv[1]["test"]["mean"])
    facts["best_test.name"] = f"{best[0][0]} lam={format(best[0][1], 'g')}" if best[0][1] else "none"
    facts["best_test"] = ci(best[1]["test"], 4)
    significant = []
    for g in groups(out):  # the report's own comparison (--metric test): Δ test mse, Holm p
        vs = g["vs_baseline"]
        if not vs:
            continue
        kind = g["reg"][0]
        k = f"{kind}_{format(float(g['config'][f'reg.{kind}.lam']), 'g')}"
        facts[f"{k}.dtest"] = fmt(vs["test_mse"]["delta"], 4)
        facts[f"{k}.ptest"] = fmt(vs["test_mse"]["p_holm"])
        if (vs["test_mse"]["p_holm"] or 1.0) < 0.05 and vs["test_mse"]["delta"] < 0:
            significant.append(g["name"])
    facts["better_significant"] = ", ".join(significant) or "none of them"

    def sp(kind, lam):
        return rows.get((kind, lam), {}).get("sparsity", {"lo": math.nan, "hi": math.nan, "mean": math.nan})

    facts["_claims"] = claims(lambda: [
        ("no lam improves test mse significantly after Holm", not significant),
        ("l2 1e-4 already makes far more weights small than none (CI above 0.3 vs below 0.05)",
         sp("l2", 1e-4)["lo"] > 0.3 and sp("none", 0.0)["hi"] < 0.05),
        ("l1 is sparser than l2 at the same lam (1e-4, 1e-3, 1e-2: CIs apart)",
         all(sp("l1", lam)["lo"] > sp("l2", lam)["hi"] for lam in (1e-4, 1e-3, 1e-2))),
        ("the largest lam of each penalty hurts test mse", all(
            rows[(k, lam)]["test"]["lo"] > rows[("none", 0.0)]["test"]["hi"]
            for k, lam in (("l1", 1e-2), ("l2", 1e-1)) if (k, lam) in rows)),
    ])
    return facts
