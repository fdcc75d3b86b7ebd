"""penguins: dropout, L2 and weight decay on the penguins table, all 206 rows and 40.

STUDY: its sweeps (the overrides after `+experiment=penguins`) and its reports.
extras(out): plots/mse_by_arm.png, and the facts and checked claims its README uses.
"""

from __future__ import annotations

import math
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
    paired_delta,
    plt,
    save_figure,
)

STUDY = Study(  # needs palmerpenguins (pip install 'regablate[studies]')
    sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.5}}",))],
    reports=[Report("", ("--filter", "dataset.n_train=None"), plots=True),
             Report("small", ("--filter", "dataset.n_train=40"))])


def extras(out: Path) -> dict:
    """Per arm and data size: val/test mse and gap with CIs, Δ vs none; one gap figure for both."""
    facts, sizes = {}, {"full": "", "small": "small"}
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for i, (size, key) in enumerate(sizes.items()):
        gs = groups(out, key)
        for g in gs:
            k = f"{size}.{g['name'].split(' ')[0]}"
            facts[f"{k}.n"] = str(g["n"])
            for split in ("train", "val", "test"):
                facts[f"{k}.{split}"] = ci(g[split]["mse"])
            facts[f"{k}.gap"] = ci(g["gap"])
            facts[f"{k}.best_epoch"] = f"{g['best_epoch']:.0f}"  # mean best-val-loss epoch
            if g["vs_baseline"]:
                vs = g["vs_baseline"]
                facts[f"{k}.dval"] = f"{vs['val_mse']['delta']:+.3f}"
                facts[f"{k}.pval"] = fmt(vs["val_mse"]["p_holm"])
                facts[f"{k}.dtest"] = ci(paired_delta(out, g["name"], "none", "test", key), signed=True)
        names = [g["name"] for g in gs]
        for split, color, dx in (("val", "tab:orange", -0.1), ("test", "tab:green", 0.1)):
            errorbar(axes[i], [j + dx for j in range(len(gs))],
                     [{**g[split]["mse"], "lo": g[split]["mse"]["ci95"][0],
                       "hi": g[split]["mse"]["ci95"][1]} for g in gs], label=split, color=color, ls="none")
        axes[i].set_xticks(range(len(gs)), names, rotation=20)
        axes[i].set(ylabel="mse (units of the training target's variance)",
                    title=f"{'all 206' if size == 'full' else '40'} training rows: mean and 95% CI")
    save_figure(pyplot, fig, axes, "penguins: body mass from the other columns, MLP 12-128-64-1",
                out / "plots" / "mse_by_arm.png")
    full, small = by_name(groups(out)), by_name(groups(out, "small"))
    arms = ("dropout", "l2", "weight_decay")

    def p_val(gs: dict, name: str) -> float:
        return gs[name]["vs_baseline"]["val_mse"]["p_holm"] if name in gs else math.nan

    def d_test(name: str, key: str) -> dict:
        return paired_delta(out, name, "none", "test", key)

    facts["_claims"] = claims(lambda: [
        ("all 206 rows: each regulariser lowers val mse significantly (Holm p < 0.05)",
         all(p_val(full, a) < 0.05 and full[a]["vs_baseline"]["val_mse"]["delta"] < 0 for a in arms)),
        ("all 206 rows: each lowers test mse (paired 95% CI below 0)",
         all(d_test(a, "")["hi"] < 0 for a in arms)),
        ("40 rows: dropout's val change is not significant (Holm p >= 0.05)",
         not p_val(small, arms[0]) < 0.05),
        ("40 rows: the paired test-mse CIs of dropout and l2 contain 0",
         all(d_test(a, "small")["lo"] <= 0 <= d_test(a, "small")["hi"] for a in arms[:2])),
        ("40 rows: the baseline's gap is larger than with 206 rows",
         small["none"]["gap"]["mean"] > full["none"]["gap"]["mean"]),
    ])
    return facts
