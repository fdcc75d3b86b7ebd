"""adam_vs_adamw: coupled vs decoupled weight decay vs the L2 penalty, over lr x lam.

STUDY: its sweeps (the overrides after `+experiment=adam_vs_adamw`) and its reports.
extras(out): grid.md and plots/heatmap.png, and the facts and checked claims its README uses.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from studylib import (
    Report,
    Study,
    Sweep,
    ci,
    claims,
    md_table,
    plt,
    stat,
    summaries,
)

LAMS = "1e-4,1e-3,1e-2,1e-1,1"
STUDY = Study(
    sweeps=[Sweep("coupled", ("optim=adam", f"optim.weight_decay=0,{LAMS}"),
                  ("optim.lr=3e-3", "optim.weight_decay=0,1e-2")),
            Sweep("decoupled", ("optim=adamw", "+reg=weight_decay", f"reg.weight_decay.lam={LAMS}"),
                  ("optim.lr=3e-3", "reg.weight_decay.lam=1e-2")),
            Sweep("l2", ("optim=adam", "+reg=l2", f"reg.l2.lam={LAMS}"),
                  ("optim.lr=3e-3", "reg.l2.lam=1e-2"))],
    reports=[Report(f"lr{lr}", ("--metric", "test", "--filter", f"optim.lr={lr}", "--sort", "test"),
                    baseline={"optim.name": "adam", "optim.lr": lr, "optim.weight_decay": 0,
                              "reg": {}})
             for lr in ("3e-4", "3e-3")])


def extras(out: Path) -> dict:
    import numpy as np

    runs = summaries(out)
    method_of = {"coupled": "coupled (Adam weight_decay)", "decoupled": "decoupled (AdamW + reg=weight_decay)",
                 "l2": "L2 penalty (Adam + reg=l2)"}
    cells = defaultdict(list)
    for s in runs:
        method = s["_dir"].parent.name
        c = s["_cfg"]
        lam = float({"coupled": c.get("optim.weight_decay", 0.0),
                     "decoupled": c.get("reg.weight_decay.lam", 0.0),
                     "l2": c.get("reg.l2.lam", 0.0)}[method])
        cells[(method, float(c["optim.lr"]), lam)].append(s)
    base = {lr: {s["seed"]: s["test"]["acc"] for s in ss}
            for (m, lr, lam), ss in cells.items() if lam == 0.0}
    lrs = sorted({k[1] for k in cells})
    lams = sorted({k[2] for k in cells if k[2] > 0})
    stats, table = {}, []
    for (m, lr, lam), ss in sorted(cells.items()):
        test = stat(s["test"]["acc"] for s in ss)
        diffs = stat(s["test"]["acc"] - base[lr][s["seed"]] for s in ss if s["seed"] in base.get(lr, {}))
        stats[(m, lr, lam)] = (test, diffs)
        if lam > 0:
            table.append([m, format(lr, "g"), format(lam, "g"), str(test["n"]), ci(test), ci(diffs, signed=True)])
    md = md_table(["method", "lr", "lam", "n", "test acc, mean [95% CI]",
                   "test acc − Adam (lam 0, same lr, same seed), mean [95% CI]"], table)
    (out / "grid.md").write_text(md)
    pyplot = plt()
    methods = [m for m in method_of if any(k[0] == m for k in cells)]
    fig, axes = pyplot.subplots(1, len(methods), figsize=(5 * len(methods), 4.2), constrained_layout=True,
                                squeeze=False)
    vmax = 0.05  # colour clipped at ±0.05: the gains are a few points, the collapses tens of points
    for ax, m in zip(axes[0], methods, strict=True):
        grid = np.full((len(lams), len(lrs)), np.nan)
        for i, lam in enumerate(lams):
            for j, lr in enumerate(lrs):
                if (m, lr, lam) in stats:
                    t, d = stats[(m, lr, lam)]
                    grid[i, j] = d["mean"]
                    sig = d["n"] > 1 and (d["lo"] > 0 or d["hi"] < 0)
                    ax.text(j, i, f"{t['mean']:.3f}\n{d['mean'] + 0.0:+.3f}{'*' if sig else ''}",
                            ha="center", va="center", fontsize=9,
                            color="white" if abs(d["mean"]) > 0.7 * vmax else "black")
        im = ax.imshow(grid, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(lrs)), [format(x, "g") for x in lrs])
        ax.set_yticks(range(len(lams)), [format(x, "g") for x in lams])
        ax.set(xlabel="lr", ylabel="lam", title=method_of[m])
    fig.colorbar(im, ax=axes[0].tolist(), label="test acc − plain Adam at the same lr (clipped at ±0.05)")
    n = min((t["n"] for t, _ in stats.values()), default=0)
    fig.suptitle(f"adam_vs_adamw: mean test acc (top) and its difference from lam = 0 (bottom; "
                 f"* = paired 95% CI excludes 0), {n} seeds")
    (out / "plots").mkdir(exist_ok=True)
    fig.savefig(out / "plots" / "heatmap.png", dpi=100)
    pyplot.close(fig)
    facts = {}
    for (m, lr, lam), (t, d) in stats.items():
        facts[f"{m}.{format(lr, 'g')}.{format(lam, 'g')}"] = ci(t)
        facts[f"{m}.{format(lr, 'g')}.{format(lam, 'g')}.d"] = ci(d, signed=True)
    def cell(m, lr, lam):
        return stats.get((m, lr, lam), (None, None))

    shared = [(lr, lam) for lr in lrs for lam in lams]
    facts["_claims"] = claims(lambda: [
        ("coupled and l2 test-acc intervals overlap in every cell", all(
            cell("coupled", lr, lam)[0]["lo"] <= cell("l2", lr, lam)[0]["hi"]
            and cell("l2", lr, lam)[0]["lo"] <= cell("coupled", lr, lam)[0]["hi"] for lr, lam in shared)),
        ("decoupled never significantly below plain Adam", all(
            cell("decoupled", lr, lam)[1]["hi"] >= 0 for lr, lam in shared)),
        ("decoupled changes test acc by less than 0.02 on average in every cell", all(
            abs(cell("decoupled", lr, lam)[1]["mean"]) < 0.02 for lr, lam in shared)),
        ("coupled and l2 collapse at lam >= 0.1 (difference CI below -0.03) at every lr", all(
            cell(m, lr, lam)[1]["hi"] < -0.03 for m in ("coupled", "l2") for lr in lrs for lam in lams
            if lam >= 0.1)),
        ("coupled and l2 at lr 3e-4, lam 1e-2 beat plain Adam (CI above 0)", all(
            cell(m, 3e-4, 1e-2)[1]["lo"] > 0 for m in ("coupled", "l2"))),
        ("at lr 3e-3, coupled and l2 at lam 1e-2 are not significantly better", all(
            cell(m, 3e-3, 1e-2)[1]["lo"] <= 0 for m in ("coupled", "l2"))),
    ])
    for m in methods:
        best = max(((k, v) for k, v in stats.items() if k[0] == m and k[2] > 0), key=lambda kv: kv[1][0]["mean"])
        facts[f"{m}.best"] = (f"lr {format(best[0][1], 'g')}, lam {format(best[0][2], 'g')}: test acc "
                              f"{ci(best[1][0])}, vs Adam {ci(best[1][1], signed=True)}")
    return facts
