"""vit_dropout_sites: where a small ViT's dropout goes (attention, projection, DropPath, both).

STUDY: its sweeps (the overrides after `+experiment=vit_dropout_sites`) and its reports.
extras(out): plots/acc_by_arm.png, and the facts and checked claims its README uses.
"""

from __future__ import annotations

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
    paired_delta,
    plt,
    save_figure,
)

STUDY = Study(  # needs the CIFAR-10 cache: regablate data cifar10 --from ...
    sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.0,attn:0.1,proj:0.1},droppath:{p:0.1}}",
                         "dataset.n_train=null", "hydra.launcher.n_jobs=1"))],
    reports=[Report("", plots=True), Report("test", ("--metric", "test"))])


VIT_ARMS = ("none", "attn", "proj", "droppath", "both")


def vit_arm(cfg: dict) -> str:
    """The arm of a vit_dropout_sites group from its config (report.json `config`)."""
    def on(key: str) -> bool:
        return cfg.get(key) not in (None, "–", 0, 0.0)

    dp, attn, proj = on("reg.droppath.p"), on("reg.dropout.attn"), on("reg.dropout.proj")
    return "both" if dp and (attn or proj) else "droppath" if dp else "attn" if attn else \
        "proj" if proj else "none"


def extras(out: Path) -> dict:
    """Per arm: train/val/test accuracy and gap with CIs, paired test Δ vs none; one figure."""
    facts: dict = {}
    gs = {vit_arm(g["config"]): g for g in groups(out, "test")}
    val = {vit_arm(g["config"]): g for g in groups(out)}
    base, deltas = gs.get("none"), {}
    for arm, g in gs.items():
        facts[f"{arm}.n"] = str(g["n"])
        for split in ("train", "test"):
            facts[f"{arm}.{split}"] = ci(g[split]["acc"])
        facts[f"{arm}.gap"] = ci(g["gap"])
        if base is not None and arm != "none":
            deltas[arm] = paired_delta(out, g["name"], base["name"], "test", "test")
            facts[f"{arm}.dtest"] = ci(deltas[arm], signed=True)
            facts[f"{arm}.dtrain"] = ci(paired_delta(out, g["name"], base["name"], "train", "test"),
                                        signed=True)
            facts[f"{arm}.p"] = fmt(g["vs_baseline"]["test_acc"]["p_holm"])
            facts[f"{arm}.dgap"] = f"{g['vs_baseline']['gap']['delta']:+.3f}"
            facts[f"{arm}.pgap"] = fmt(g["vs_baseline"]["gap"]["p_holm"])
    for arm, g in val.items():
        facts[f"{arm}.val"] = ci(g["val"]["acc"])
    arms = [a for a in VIT_ARMS if a in gs]
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for split, color, dx in (("train", "tab:blue", -0.15), ("val", "tab:orange", 0.0),
                             ("test", "tab:green", 0.15)):
        src = val if split == "val" else gs
        errorbar(axes[0], [i + dx for i in range(len(arms))],
                 [{**src[a][split]["acc"], "lo": src[a][split]["acc"]["ci95"][0],
                   "hi": src[a][split]["acc"]["ci95"][1]} for a in arms], label=split, color=color, ls="none")
    axes[0].set_xticks(range(len(arms)), arms)
    axes[0].set(ylabel="accuracy", title="accuracy by arm: mean and 95% CI")
    darms = [a for a in arms if a in deltas]
    if darms:
        errorbar(axes[1], range(len(darms)), [deltas[a] for a in darms], label="test acc − none, paired by seed",
                 color="tab:green", ls="none")
        axes[1].axhline(0, color="k", lw=0.8)
        axes[1].set_xticks(range(len(darms)), darms)
    axes[1].set(ylabel="Δ test accuracy", title="against no regularisation: mean and 95% CI")
    save_figure(pyplot, fig, axes, "vit_dropout_sites: tiny ViT (4 blocks, width 64) on 2,000 CIFAR-10 images",
                out / "plots" / "acc_by_arm.png")
    facts["_claims"] = claims(lambda: [
        ("no arm raises test accuracy significantly (no paired 95% CI above 0)",
         all(not d["lo"] > 0 for d in deltas.values())),
        ("the baseline's train-test gap is below 0.1 (it underfits rather than overfits)",
         base["gap"]["mean"] < 0.1),
        ("every regularised arm has lower mean train accuracy than none",
         all(gs[a]["train"]["acc"]["mean"] < base["train"]["acc"]["mean"] for a in deltas)),
        ("the full recipe (both) lowers test accuracy (paired 95% CI below 0)", deltas["both"]["hi"] < 0),
        ("projection dropout and DropPath each lower test accuracy (paired 95% CIs below 0)",
         deltas["proj"]["hi"] < 0 and deltas["droppath"]["hi"] < 0),
        ("attention dropout's paired test interval contains 0", deltas["attn"]["lo"] <= 0 <= deltas["attn"]["hi"]),
        ("the full recipe's gap change is not significant (Holm p >= 0.05)",
         not gs["both"]["vs_baseline"]["gap"]["p_holm"] < 0.05),
    ])
    return facts
