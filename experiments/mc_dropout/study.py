"""mc_dropout: MC-dropout spread in and out of distribution, over dropout p.

STUDY: its sweeps (the overrides after `+experiment=mc_dropout`) and its reports.
extras(out): spread.md and plots/spread_vs_p.png, and the facts and checked claims its README uses.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from studylib import (
    Report,
    Study,
    Sweep,
    by_name,
    ci,
    claims,
    errorbar,
    fmt,
    groups,
    md_table,
    p_of,
    plt,
    save_figure,
    stat,
    summaries,
)

STUDY = Study(
    sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.3}}",))],
    reports=[Report("", plots=False)])


def extras(out: Path) -> dict:
    runs = summaries(out)
    cells = defaultdict(list)
    for s in runs:
        cells[float(s["_cfg"].get("reg.dropout.p", 0.0))].append(s)
    rows, table = {}, []
    for p, ss in sorted(cells.items()):
        val = stat(s["mc"]["val_mean_std"] for s in ss)
        ood = stat(s["mc"]["ood_mean_std"] for s in ss)
        ratio = stat(s["mc"]["ood_mean_std"] / s["mc"]["val_mean_std"] for s in ss
                     if s["mc"]["val_mean_std"] > 0)
        acc = stat(s["mc"]["val_acc"] for s in ss)
        det = stat(s["val"]["acc"] for s in ss)
        rows[p] = {"val": val, "ood": ood, "ratio": ratio, "mc_acc": acc, "det_acc": det}
        table.append([format(p, "g"), str(val["n"]), ci(val, 4), ci(ood, 4), ci(ratio, 2) if ratio["n"] else "–",
                      ci(det), ci(acc)])
    md = md_table(["p", "n", "spread on val", "spread on OOD (inputs x5)", "OOD / val spread",
                   "val acc (eval mode)", "val acc (MC mean of 50)"], table)
    (out / "spread.md").write_text(md)
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ps = sorted(rows)
    errorbar(axes[0], ps, [rows[p]["val"] for p in ps], label="val (in distribution)", color="tab:blue")
    errorbar(axes[0], ps, [rows[p]["ood"] for p in ps], label="OOD (inputs x5)", color="tab:red")
    axes[0].set(xlabel="dropout p", ylabel="mean predictive std of class probabilities",
                title="MC-dropout spread (50 passes), mean and 95% CI")
    errorbar(axes[1], ps, [rows[p]["det_acc"] for p in ps], label="eval mode (dropout off)", color="tab:gray")
    errorbar(axes[1], ps, [rows[p]["mc_acc"] for p in ps], label="MC mean of 50 passes", color="tab:green")
    axes[1].set(xlabel="dropout p", ylabel="val accuracy", title="val accuracy, mean and 95% CI")
    save_figure(pyplot, fig, axes, f"mc_dropout: MLP 128-64 on sparse-synthetic, {rows[ps[0]]['val']['n']} seeds", out / "plots" / "spread_vs_p.png")
    facts = {}
    for p, r in rows.items():
        for k in ("val", "ood"):
            facts[f"{format(p, 'g')}.{k}"] = ci(r[k], 4)
        if r["ratio"]["n"]:
            facts[f"{format(p, 'g')}.ratio"] = ci(r["ratio"], 2)
    above = [p for p, r in rows.items() if r["ratio"]["n"] and r["ratio"]["lo"] > 1]
    below = [p for p, r in rows.items() if r["ratio"]["n"] and r["ratio"]["hi"] < 1]
    facts["ood_higher_at"] = ", ".join(format(p, "g") for p in sorted(above)) or "no p"
    facts["ood_lower_at"] = ", ".join(format(p, "g") for p in sorted(below)) or "no p"
    drop = [p for p in ps if p > 0]
    ratios = [rows[p]["ratio"] for p in drop]
    facts["ratio_min"] = fmt(min(r["mean"] for r in ratios), 2)
    facts["ratio_max"] = fmt(max(r["mean"] for r in ratios), 2)
    facts["p_max"] = format(max(drop), "g")
    facts["_claims"] = claims(lambda: [
        ("OOD spread is above val spread (ratio CI above 1) at every p > 0", set(above) == set(drop)),
        ("the OOD / val ratio stays below 1.5 at every p", all(r["hi"] < 1.5 for r in ratios)),
        ("both spreads grow with p", all(rows[a][k]["mean"] < rows[b][k]["mean"]
                                         for a, b in zip(ps, ps[1:]) for k in ("val", "ood"))),
        ("the ratio does not grow with p (largest p's ratio within the smallest p's CI)",
         rows[drop[0]]["ratio"]["lo"] <= rows[drop[-1]]["ratio"]["mean"] <= rows[drop[0]]["ratio"]["hi"]),
        ("p = 0 has zero spread", rows[0.0]["val"]["mean"] == 0 and rows[0.0]["ood"]["mean"] == 0),
    ])
    gs = by_name(groups(out))
    facts["_claims"] += claims(lambda: [
        ("MC-mean val acc within 0.01 of eval-mode val acc at every p",
         all(abs(r["mc_acc"]["mean"] - r["det_acc"]["mean"]) < 0.01 for r in rows.values())),
        ("no p lowers val acc significantly", not any(
            g["vs_baseline"] and g["vs_baseline"]["val_acc"]["delta"] < 0
            and g["vs_baseline"]["val_acc"]["p_holm"] < 0.05 for g in gs.values())),
    ])
    for g in gs.values():
        if g["vs_baseline"]:
            k = format(p_of(g), "g")
            facts[f"{k}.dval"] = f"{g['vs_baseline']['val_acc']['delta']:+.3f}"
            facts[f"{k}.pval"] = fmt(g["vs_baseline"]["val_acc"]["p_holm"])
    return facts
