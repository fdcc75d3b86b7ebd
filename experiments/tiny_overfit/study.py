"""tiny_overfit: dropout p on 60 samples and a 72k-parameter MLP.

STUDY: its sweeps (the overrides after `+experiment=tiny_overfit`) and its reports.
extras(out): plots/gap_vs_p.png, and the facts and checked claims its README uses.
"""

from __future__ import annotations

import json
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
    p_of,
    paired_delta,
    plt,
    save_figure,
)

STUDY = Study(
    sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.4}}",))],
    reports=[Report("", plots=False), Report("test", ("--metric", "test"))])


def extras(out: Path) -> dict:
    gs = groups(out)
    gs.sort(key=p_of)
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ps = [p_of(g) for g in gs]
    errorbar(axes[0], ps, [{**g["gap"], "lo": g["gap"]["ci95"][0], "hi": g["gap"]["ci95"][1]}
                           for g in gs], label="gap (train − val acc)")
    axes[0].axhline(0, color="gray", lw=0.8)
    axes[0].set(xlabel="dropout p (0 = no dropout layer)", ylabel="gap", title="train − val accuracy, mean and 95% CI")
    for split, color in (("train", "tab:blue"), ("val", "tab:orange"), ("test", "tab:green")):
        s = [g[split]["acc"] for g in gs]
        errorbar(axes[1], ps, [{**x, "lo": x["ci95"][0], "hi": x["ci95"][1]} for x in s], label=split, color=color)
    axes[1].set(xlabel="dropout p", ylabel="accuracy", title="accuracy by split, mean and 95% CI")
    save_figure(pyplot, fig, axes, f"tiny_overfit: MLP 256-256 on 60 samples, {gs[0]['n']} seeds per p", out / "plots" / "gap_vs_p.png")
    by_p = {p_of(g): g for g in gs}
    base, d4 = by_p[0.0], by_p.get(0.4)
    facts = {"base.gap": ci(base["gap"]), "base.train": ci(base["train"]["acc"]),
             "base.val": ci(base["val"]["acc"]), "base.test": ci(base["test"]["acc"]),
             "n": str(base["n"])}
    if d4:
        facts.update({"p04.gap": ci(d4["gap"]), "p04.test": ci(d4["test"]["acc"]),
                      "p04.train": ci(d4["train"]["acc"]), "p04.val": ci(d4["val"]["acc"]),
                      "p04.dgap": f"{d4['vs_baseline']['gap']['delta']:+.3f}",
                      "p04.pgap": fmt(d4["vs_baseline"]["gap"]["p_holm"])})
    t = by_name(groups(out, "test"))
    best = max((g for g in t.values() if g["n"]), key=lambda g: g["test"]["acc"]["mean"])
    facts["best_test.name"] = best["name"]
    facts["best_test"] = ci(best["test"]["acc"])
    if best["vs_baseline"]:
        facts["best_test.delta"] = f"{best['vs_baseline']['test_acc']['delta']:+.3f}"
        facts["best_test.p"] = fmt(best["vs_baseline"]["test_acc"]["p_holm"])
    smallest = min((g for g in gs if g["n"]), key=lambda g: g["gap"]["mean"])
    facts["min_gap.name"], facts["min_gap"] = smallest["name"], ci(smallest["gap"])
    for g in t.values():
        if g["vs_baseline"]:
            k = f"p{format(p_of(g), 'g')}"
            facts[f"{k}.dtest"] = f"{g['vs_baseline']['test_acc']['delta']:+.3f}"
            facts[f"{k}.ptest"] = fmt(g["vs_baseline"]["test_acc"]["p_holm"])
            facts[f"{k}.dgap"] = f"{g['vs_baseline']['gap']['delta']:+.3f}"
            facts[f"{k}.pgap"] = fmt(g["vs_baseline"]["gap"]["p_holm"])
            facts[f"{k}.gap"] = ci(g["gap"])
            facts[f"{k}.best_epoch"] = f"{g['best_epoch']:.0f}"
    facts["base.best_epoch"] = f"{base['best_epoch']:.0f}"
    for g in gs:
        if g["vs_baseline"]:
            d = paired_delta(out, g["name"], base["name"])
            facts[f"p{format(p_of(g), 'g')}.dgap_ci"] = ci(d, signed=True)
    worst = min((paired_delta(out, g["name"], base["name"]) for g in gs if g["vs_baseline"]),
                key=lambda d: d["lo"])
    facts["dgap_lowest_lo"] = fmt(worst["lo"])
    runs = json.loads((out / "report.json").read_text())["runs"]
    facts["min_train_acc"] = fmt(min(r["train"]["acc"] for r in runs if r["status"] == "completed"))
    dg = [g["vs_baseline"]["gap"] for g in gs if g["vs_baseline"]]
    facts["_claims"] = claims(lambda: [
        ("every run memorises its 60 training samples (train acc 1.0)", facts["min_train_acc"] == "1.000"),
        ("no p reduces the gap significantly (Holm p >= 0.05)", all(not d["p_holm"] < 0.05 for d in dg)),
        ("no p reduces the mean gap by more than 0.03", all(d["delta"] > -0.03 for d in dg)),
        ("test acc gains at p = 0.4 and 0.7 are positive and under 0.01",
         all(0 < float(facts.get(f"p{p}.dtest", "nan")) < 0.01 for p in ("0.4", "0.7"))),
        ("best epoch at p = 0.7 is later than without dropout",
         float(facts.get("p0.7.best_epoch", "nan")) > float(facts["base.best_epoch"])),
    ])
    return facts
