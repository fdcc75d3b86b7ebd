"""dropout_batchnorm: dropout before vs after BatchNorm, and the variance shift measured from
each run's final weights.

STUDY: its sweeps (the overrides after `+experiment=dropout_batchnorm`) and its reports.
extras(out): variance_shift.md and plots/dropout_vs_bn.png, and the facts and checked claims its
README uses.
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
    paired_delta,
    plt,
    save_figure,
    stat,
    summaries,
)

STUDY = Study(
    sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.3}}", "model.norm=batch"))],
    reports=[Report("", plots=False), Report("test", ("--metric", "test"))])


def variance_shift(run_dir: Path) -> list[float]:
    """Per BatchNorm layer: mean over channels of Var_eval(input) / running_var, where Var_eval is
    the variance of the layer's input over the val split with the model in eval mode (no dropout)
    and running_var is what BN estimated in training (with dropout). 1 = no shift."""
    import torch
    from omegaconf import OmegaConf
    from torch import nn

    from regablate.training.experiment import build_experiment
    from regablate.training.settings import load_settings

    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True)
    cfg["trainer"]["device"] = "cpu"
    x = build_experiment(load_settings(cfg))
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    x.model.load_state_dict(state["model"])
    x.model.eval()
    bns = [m for m in x.model.modules() if isinstance(m, nn.BatchNorm1d)]
    seen: dict = {}
    hooks = [m.register_forward_hook(lambda mod, inp, _o: seen.__setitem__(mod, inp[0].detach()))
             for m in bns]
    with torch.no_grad():
        x.model(x.data.prepare(x.data.val.x))
    for h in hooks:
        h.remove()
    return [float((seen[m].var(0, unbiased=False) / (m.running_var + m.eps)).mean()) for m in bns]


def _arrangement(g: dict) -> str:
    c = g["config"]
    if c.get("model.norm") == "batch":
        return f"BN, dropout {c.get('model.dropout_at')}"
    return f"no BN, dropout {c.get('model.dropout_at')}"


def extras(out: Path) -> dict:
    gs = groups(out)
    runs = summaries(out)
    shifts = defaultdict(list)  # (arrangement, p) -> [ratio of the last BN layer]
    shift_all = defaultdict(lambda: defaultdict(list))
    for s in runs:
        c = s["_cfg"]
        if c.get("model.norm") != "batch" or not (s["_dir"] / "checkpoints" / "last.pt").exists():
            continue
        ratios = variance_shift(s["_dir"])
        p = float(c.get("reg.dropout.p", 0.0))
        key = (f"BN, dropout {c.get('model.dropout_at')}", p)
        for i, r in enumerate(ratios):
            shift_all[key][i].append(r)
    arr = defaultdict(list)
    for g in gs:
        arr[_arrangement(g)].append(g)
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colors = {"no BN, dropout after_act": "tab:gray", "no BN, dropout before_norm": "tab:olive",
              "BN, dropout after_act": "tab:blue", "BN, dropout before_norm": "tab:red"}
    for name, gg in sorted(arr.items()):
        gg.sort(key=p_of)
        errorbar(axes[0], [p_of(g) for g in gg],
                 [{**g["test"]["acc"], "lo": g["test"]["acc"]["ci95"][0], "hi": g["test"]["acc"]["ci95"][1]}
                  for g in gg], label=name, color=colors.get(name),
                 ls="--" if name.startswith("no BN, dropout before") else "-")
    axes[0].set(xlabel="dropout p", ylabel="test accuracy", title="test accuracy, mean and 95% CI")
    table = []
    for (name, p), layers in sorted(shift_all.items()):
        for i, vals in sorted(layers.items()):
            shifts[(name, i)].append((p, stat(vals)))
            table.append([name, format(p, "g"), f"BN {i + 1}", str(len(vals)), ci(stat(vals))])
    for (name, i), pts in sorted(shifts.items()):
        pts.sort()
        errorbar(axes[1], [p for p, _ in pts], [s for _, s in pts], label=f"{name}, BN layer {i + 1}",
                 color=colors.get(name), ls="-" if i == 0 else ":")
    axes[1].axhline(1, color="gray", lw=0.8)
    axes[1].set(xlabel="dropout p", ylabel="Var_eval(BN input) / running_var",
                title="variance shift at each BatchNorm (1 = none)")
    save_figure(pyplot, fig, axes, f"dropout_batchnorm: MLP 128-64 on sparse-synthetic, {gs[0]['n']} seeds", out / "plots" / "dropout_vs_bn.png")
    md = md_table(["arrangement", "p", "layer", "n", "Var_eval / running_var, mean [95% CI]"], table)
    (out / "variance_shift.md").write_text(md)
    facts = {}
    for g in gs:
        k = f"{_arrangement(g)}|{format(p_of(g), 'g')}"
        facts[f"{k}.test"] = ci(g["test"]["acc"])
        facts[f"{k}.val"] = ci(g["val"]["acc"])
        if g["vs_baseline"]:
            facts[f"{k}.dval"] = f"{g['vs_baseline']['val_acc']['delta']:+.3f}"
    for (name, i), pts in shifts.items():
        for p, s in pts:
            facts[f"shift|{name}|{format(p, 'g')}|{i + 1}"] = ci(s)
    tg = groups(out, "test")
    for g in tg:
        if g["vs_baseline"]:
            k = f"{_arrangement(g)}|{format(p_of(g), 'g')}"
            facts[f"{k}.dtest"] = f"{g['vs_baseline']['test_acc']['delta']:+.3f}"
            facts[f"{k}.ptest"] = fmt(g["vs_baseline"]["test_acc"]["p_holm"])
    names = {(_arrangement(g), p_of(g)): g["name"] for g in gs}
    ps = sorted({p_of(g) for g in gs if p_of(g) > 0})
    pairs = {p: paired_delta(out, names[("BN, dropout before_norm", p)], names[("BN, dropout after_act", p)],
                             "test") for p in ps
             if ("BN, dropout before_norm", p) in names and ("BN, dropout after_act", p) in names}
    for p, d in pairs.items():
        facts[f"before_minus_after|{format(p, 'g')}"] = ci(d, signed=True)
    nobn = {p: paired_delta(out, names[("BN, dropout before_norm", p)], names[("no BN, dropout after_act", p)],
                            "test") for p in ps
            if ("BN, dropout before_norm", p) in names and ("no BN, dropout after_act", p) in names}
    for p, d in nobn.items():
        facts[f"bn_minus_nobn|{format(p, 'g')}"] = ci(d, signed=True)

    def shift(name, p, layer):
        vals = dict(shifts.get((name, layer - 1), []))
        return vals.get(p)

    pmax = max(ps) if ps else 0.0
    facts["pmax"] = format(pmax, "g")
    facts["_claims"] = claims(lambda: [
        ("before_norm: shift at BN 1 falls with p (each p's CI below the previous mean)", all(
            shift("BN, dropout before_norm", b, 1)["hi"] < shift("BN, dropout before_norm", a, 1)["mean"]
            for a, b in zip([0.0, *ps], ps))),
        ("after_act: BN 1 unshifted at every p (CI contains 1)", all(
            shift("BN, dropout after_act", p, 1)["lo"] <= 1 <= shift("BN, dropout after_act", p, 1)["hi"]
            for p in [0.0, *ps])),
        ("before_norm is not worse than after_act in test acc at any p (paired CI not below 0)",
         all(d["hi"] >= 0 for d in pairs.values())),
        ("with BN, every p improves test acc over BN without dropout", all(
            g["vs_baseline"]["test_acc"]["delta"] > 0 for g in tg
            if g["vs_baseline"] and _arrangement(g).startswith("BN"))),
        ("with BN before_norm, the test-acc gain grows with p", all(
            float(facts[f"BN, dropout before_norm|{format(a, 'g')}.dtest"])
            < float(facts[f"BN, dropout before_norm|{format(b, 'g')}.dtest"]) for a, b in zip(ps, ps[1:]))),
        ("at the largest p, BN before_norm is level with no BN (paired CI contains 0)",
         nobn[pmax]["lo"] <= 0 <= nobn[pmax]["hi"]),
        ("at the smallest p, BN before_norm is behind no BN (paired CI below 0)", nobn[ps[0]]["hi"] < 0),
        ("without BN, |test-acc change| < 0.01 at every p", all(
            abs(g["vs_baseline"]["test_acc"]["delta"]) < 0.01 for g in tg
            if g["vs_baseline"] and _arrangement(g).startswith("no BN"))),
        ("without BN the two placements give identical numbers", all(
            by_name(gs)[names[("no BN, dropout after_act", p)]]["test"]["acc"]["mean"]
            == by_name(gs)[names[("no BN, dropout before_norm", p)]]["test"]["acc"]["mean"]
            for p in ps)),
    ])
    return facts
