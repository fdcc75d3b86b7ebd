"""rnn_dropout: naive vs variational dropout vs weight drop for an LSTM.

STUDY: its sweeps (the overrides after `+experiment=rnn_dropout`) and its reports.
extras(out): arms.md and plots/arms.png, and the facts and checked claims its README uses.
"""

from __future__ import annotations

import math
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
    paired_delta,
    plt,
    save_figure,
)

STUDY = Study(
    sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.25}},{variational_dropout:{p_in:0.25,p_hidden:0.25,"
                         "p_out:0.25}},{weight_drop:{p:0.5}}",))],
    reports=[Report("", plots=True), Report("test", ("--metric", "test"))])


RNN_ARMS = ("none", "naive", "variational", "variational_h", "weight_drop")
RNN_LABELS = {"none": "none", "naive": "naive dropout 0.25 (new mask per step)",
              "variational": "variational 0.25 (in, hidden, out)",
              "variational_h": "variational 0.25 (hidden state only)",
              "weight_drop": "weight drop 0.5 (W_hh)"}


def rnn_arm(cfg: dict) -> str:
    """The arm of an rnn_dropout group from its config (report.json `config`)."""
    def on(key: str) -> bool:
        return cfg.get(key) not in (None, "–")

    if on("reg.weight_drop.p"):
        return "weight_drop"
    if on("reg.variational_dropout.p_in"):
        return "variational" if float(cfg["reg.variational_dropout.p_in"]) > 0 else "variational_h"
    return "naive" if on("reg.dropout.p") else "none"


def extras(out: Path) -> dict:
    """Per arm: train/val/test MSE and gap with CIs, paired Δ test MSE vs none; table and figure."""
    gs = {rnn_arm(g["config"]): g for g in groups(out)}
    tests = {rnn_arm(g["config"]): g for g in groups(out, "test")}
    arms = [a for a in RNN_ARMS if a in gs]
    base = gs.get("none")
    facts: dict = {"n": str(base["n"]) if base else "0"}
    rows, deltas = [], {}
    for arm in arms:
        g = gs[arm]
        for split in ("train", "val", "test"):
            facts[f"{arm}.{split}"] = ci(g[split]["mse"], 4)
        facts[f"{arm}.gap"] = ci(g["gap"], 4)
        facts[f"{arm}.best_epoch"] = f"{g['best_epoch']:.0f}"
        dtest = "–"
        if base is not None and arm != "none":
            deltas[arm] = paired_delta(out, g["name"], base["name"], "test")
            dtest = facts[f"{arm}.dtest"] = ci(deltas[arm], 4, signed=True)
            facts[f"{arm}.dgap"] = ci(paired_delta(out, g["name"], base["name"], "gap"), 4, signed=True)
            vs = tests[arm]["vs_baseline"] if arm in tests else None
            facts[f"{arm}.ptest"] = fmt(vs["test_mse"]["p_holm"]) if vs else "–"
        rows.append([RNN_LABELS[arm], str(g["n"]), ci(g["train"]["mse"], 4), ci(g["val"]["mse"], 4),
                     ci(g["test"]["mse"], 4), ci(g["gap"], 4), dtest, facts.get(f"{arm}.ptest", "–")])
    (out / "arms.md").write_text(md_table(
        ["reg", "n", "train mse", "val mse", "test mse (clean targets)", "gap (val − train)",
         "Δ test mse vs none, paired", "Holm p (test)"], rows))
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    for split, color, dx in (("train", "tab:blue", -0.15), ("val", "tab:orange", 0.0), ("test", "tab:green", 0.15)):
        errorbar(axes[0], [i + dx for i in range(len(arms))],
                 [{**gs[a][split]["mse"], "lo": gs[a][split]["mse"]["ci95"][0],
                   "hi": gs[a][split]["mse"]["ci95"][1]} for a in arms], label=split, color=color, ls="none")
    axes[0].set_xticks(range(len(arms)), arms, fontsize="small")
    axes[0].set(ylabel="MSE", title="MSE by split (test: clean targets), mean and 95% CI")
    d_arms = [a for a in arms if a in deltas]
    errorbar(axes[1], range(len(d_arms)), [deltas[a] for a in d_arms], label="Δ test MSE vs none",
             color="tab:green", ls="none")
    axes[1].axhline(0, color="gray", lw=0.8)
    axes[1].set_xticks(range(len(d_arms)), d_arms, fontsize="small")
    axes[1].set(ylabel="Δ test MSE (paired by seed)", title="test MSE − none's, mean and 95% CI")
    save_figure(pyplot, fig, axes, f"rnn_dropout: LSTM 1-32-32 on 128 noisy sine windows, "
                f"{facts['n']} seeds", out / "plots" / "arms.png")

    nv = {}
    for other in ("variational", "variational_h", "weight_drop"):  # the literature's comparisons
        if "naive" in gs and other in gs:
            nv[other] = paired_delta(out, gs["naive"]["name"], gs[other]["name"], "test")
            facts[f"naive_vs_{other}.dtest"] = ci(nv[other], 4, signed=True)

    def p_holm(arm: str) -> float:
        vs = tests[arm]["vs_baseline"] if arm in tests else None
        return vs["test_mse"]["p_holm"] if vs else math.nan

    def mean(arm: str, key: str) -> float:
        g = gs[arm]
        return (g["gap"] if key == "gap" else g[key]["mse"])["mean"]

    regs = [a for a in arms if a != "none"]
    epochs = [gs[a]["best_epoch"] for a in regs]
    facts["best_epoch_range"] = f"{min(epochs):.0f}–{max(epochs):.0f}" if epochs else "–"
    facts["_claims"] = claims(lambda: [
        ("no regulariser changes test mse significantly against none (Holm p >= 0.05)",
         all(not p_holm(a) < 0.05 for a in regs)),
        ("every regulariser lowers the mean gap", all(mean(a, "gap") < mean("none", "gap") for a in regs)),
        ("naive dropout's mean test mse is below full variational dropout's",
         mean("naive", "test") < mean("variational", "test")),
        ("full variational dropout has the highest mean train mse of all arms",
         max(arms, key=lambda a: mean(a, "train")) == "variational"),
        ("naive dropout's test mse is below full variational's (paired 95% CI below 0)",
         nv["variational"]["hi"] < 0),
        ("naive vs hidden-only variational: paired 95% CI of test mse includes 0",
         nv["variational_h"]["lo"] <= 0 <= nv["variational_h"]["hi"]),
        ("naive dropout's test mse is below weight drop's (paired 95% CI below 0)", nv["weight_drop"]["hi"] < 0),
        ("naive and hidden-only variational: test mse below none's by unadjusted paired CIs",
         deltas["naive"]["hi"] < 0 and deltas["variational_h"]["hi"] < 0),
    ])
    return facts
