"""Re-run the CPU studies through the real CLI and regenerate their reports, plots and READMEs.

    python experiments/make_studies.py                  # every CPU study, one after another
    python experiments/make_studies.py tiny_overfit     # one study
    python experiments/make_studies.py --report-only    # keep the runs, redo reports/plots/READMEs
    python experiments/make_studies.py --smoke --root /tmp/s   # 1 epoch, 1 seed, small grids (tests)

For each study: delete experiments/<name>/runs, run `regablate run -m +experiment=<name>` (one or
more sweeps), then `regablate report` into report.md / report.csv / report.json (+ plots/), the
study's extra figures, and README.md from README.template.md. The template holds the prose;
{{...}} blocks are replaced by what this script computed:

  {{commands}}       the exact commands run          {{wall_time}}  how long the sweeps took
  {{table}}          report.md, verbatim              {{table:KEY}}  another report, verbatim
  {{fact:KEY}}       a number taken from report.json or the runs' summary.json (never typed)

Run dirs stay out of git (experiments/.gitignore); study.json records commands and timing.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "experiments"
CPU_STUDIES = ("classic_table", "tiny_overfit", "sine_sparsity", "adam_vs_adamw",
               "dropout_batchnorm", "mc_dropout", "penguins", "rnn_dropout",
               "vit_dropout_sites", "which_regulariser")
SMOKE = ("seed=0", "trainer.max_epochs=1")  # replaces the seed axis of each sweep


@dataclass
class Sweep:
    sub: str | None = None  # runs/<sub> (None: runs/)
    args: tuple = ()  # extra overrides after +experiment=<name>
    smoke: tuple = ()  # overrides that shrink the grid in --smoke


@dataclass
class Report:
    key: str  # report.md for "" else report_<key>.md
    args: tuple = ()  # extra `regablate report` options
    plots: bool = False  # --plot plots/ (learning curves per group and gap.png)
    baseline: dict | None = None  # --baseline: the group of the runs whose config has these values


@dataclass
class Study:
    sweeps: list = field(default_factory=lambda: [Sweep()])
    reports: list = field(default_factory=lambda: [Report("", plots=True)])


LAMS = "1e-4,1e-3,1e-2,1e-1,1"
STUDIES = {
    "classic_table": Study(
        sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.4},weight_decay:{lam:1e-3}},{batchnorm:{}}",))],
        reports=[Report("", plots=True), Report("test", ("--metric", "test"))]),
    "tiny_overfit": Study(
        sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.4}}",))],
        reports=[Report("", plots=False), Report("test", ("--metric", "test"))]),
    "sine_sparsity": Study(
        sweeps=[Sweep(smoke=("++reg={},{l2:{lam:1e-3}},{l1:{lam:1e-4}}",))],
        reports=[Report("", ("--metric", "test"), plots=False)]),
    "adam_vs_adamw": Study(
        sweeps=[Sweep("coupled", ("optim=adam", f"optim.weight_decay=0,{LAMS}"),
                      ("optim.lr=3e-3", "optim.weight_decay=0,1e-2")),
                Sweep("decoupled", ("optim=adamw", "+reg=weight_decay", f"reg.weight_decay.lam={LAMS}"),
                      ("optim.lr=3e-3", "reg.weight_decay.lam=1e-2")),
                Sweep("l2", ("optim=adam", "+reg=l2", f"reg.l2.lam={LAMS}"),
                      ("optim.lr=3e-3", "reg.l2.lam=1e-2"))],
        reports=[Report(f"lr{lr}", ("--metric", "test", "--filter", f"optim.lr={lr}", "--sort", "test"),
                        baseline={"optim.name": "adam", "optim.lr": lr, "optim.weight_decay": 0,
                                  "reg": {}})
                 for lr in ("3e-4", "3e-3")]),
    "dropout_batchnorm": Study(
        sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.3}}", "model.norm=batch"))],
        reports=[Report("", plots=False), Report("test", ("--metric", "test"))]),
    "mc_dropout": Study(
        sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.3}}",))],
        reports=[Report("", plots=False)]),
    "penguins": Study(  # needs palmerpenguins (pip install 'regablate[studies]')
        sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.5}}",))],
        reports=[Report("", ("--filter", "dataset.n_train=None"), plots=True),
                 Report("small", ("--filter", "dataset.n_train=40"))]),
    "rnn_dropout": Study(
        sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.25}},{variational_dropout:{p_in:0.25,p_hidden:0.25,"
                             "p_out:0.25}},{weight_drop:{p:0.5}}",))],
        reports=[Report("", plots=True), Report("test", ("--metric", "test"))]),
    "vit_dropout_sites": Study(  # needs the CIFAR-10 cache: regablate data cifar10 --from ...
        sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.0,attn:0.1,proj:0.1},droppath:{p:0.1}}",
                             "dataset.n_train=null", "hydra.launcher.n_jobs=1"))],
        reports=[Report("", plots=True), Report("test", ("--metric", "test"))]),
    "which_regulariser": Study(  # a factorial design: every arm runs the same >= 2 seeds
        sweeps=[Sweep(smoke=("seed=0,1",))],
        reports=[Report("", plots=True), Report("test", ("--metric", "test"))]),
}


SMOKE_RUN = False  # set by make(): a smoke run has one seed, so no intervals and no tests


def claims(build) -> list:
    """The study's checked claims, [(text, holds)]; a smoke run (n = 1) has none to check."""
    if SMOKE_RUN:
        return []
    return build()


def say(msg: str) -> None:
    print(f"make_studies: {msg}", flush=True)


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def regablate(*args: str) -> None:
    """The real CLI, in a fresh process, from the repository root."""
    subprocess.run([sys.executable, "-m", "regablate", *args], cwd=REPO, check=True)


def commands(name: str, study: Study) -> list[list[str]]:
    out = []
    for sw in study.sweeps:
        extra = [f"hydra.sweep.dir=experiments/{name}/runs/{sw.sub}"] if sw.sub else []
        out.append(["run", "-m", f"+experiment={name}", *sw.args, *extra])
    return out


def shell(cmd: list[str]) -> str:
    return "regablate " + " ".join(shlex.quote(a) for a in cmd)


def run_sweeps(name: str, study: Study, out: Path, smoke: bool) -> float:
    runs = out / "runs"
    if runs.exists():
        shutil.rmtree(runs)
    t0 = time.perf_counter()
    for sw, cmd in zip(study.sweeps, commands(name, study), strict=True):
        cmd = [a for a in cmd if not a.startswith("hydra.sweep.dir=")]
        cmd.append(f"hydra.sweep.dir={(runs / sw.sub) if sw.sub else runs}")
        if smoke:
            cmd += [*SMOKE, *sw.smoke]
        say(f"{name}: {shell(cmd)}")
        regablate(*cmd)
    return time.perf_counter() - t0


def report(*args: str) -> None:
    """`regablate report ARGS`: the CLI's own entry point, in this process (no start-up cost)."""
    import os

    from regablate.cli.report import main as report_main

    say("regablate report " + " ".join(shlex.quote(a) for a in args))
    cwd = os.getcwd()
    os.chdir(REPO)  # run dirs are shown relative to the repository, as after `cd` into it
    try:
        code = report_main(list(args))
    finally:
        os.chdir(cwd)
    if code:
        raise SystemExit(f"make_studies: regablate report exited with {code}")


def baseline_group(out: Path, where: dict) -> str:
    """The `group` id of the runs whose flattened config matches `where` (numbers as numbers)."""
    found = {s["group"] for s in summaries(out)
             if all(str(s["_cfg"].get(k)) == str(v) or _num(s["_cfg"].get(k)) == _num(v)
                    for k, v in where.items())}
    if len(found) != 1:
        raise SystemExit(f"make_studies: {len(found)} groups match the baseline {where}")
    return found.pop()


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def write_reports(study: Study, out: Path, smoke: bool) -> None:
    runs = rel(out / "runs")
    for r in study.reports:
        stem = "report" + (f"_{r.key}" if r.key else "")
        try:
            base = ("--baseline", baseline_group(out, r.baseline)) if r.baseline else ()
        except SystemExit:
            if not smoke:
                raise
            say(f"smoke run: no runs for report {stem} (its grid was shrunk); skipped")
            continue
        for fmt, ext in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
            plots = r.plots and fmt == "markdown" and not smoke  # the report's own tests cover them
            extra = (*base, "--plot", rel(out / "plots")) if plots else base
            report(runs, *r.args, "--format", fmt, "--out", rel(out / f"{stem}.{ext}"), *extra)


# ---------------------------------------------------------------- reading what the runs left


def summaries(out: Path) -> list[dict]:
    """Every completed run's summary.json, with its flattened config under "_cfg"."""
    import yaml

    from regablate.training.experiment import flatten

    found = []
    for path in sorted((out / "runs").rglob("summary.json")):
        s = json.loads(path.read_text())
        if s.get("status") != "completed":
            continue
        s["_cfg"] = flatten(yaml.safe_load((path.parent / ".hydra" / "config.yaml").read_text()))
        s["_dir"] = path.parent
        found.append(s)
    return found


def groups(out: Path, key: str = "") -> list[dict]:
    return json.loads((out / f"report{'_' + key if key else ''}.json").read_text())["groups"]


def stat(values) -> dict:
    """mean, std and the t-based 95% interval — the report's own statistics code."""
    from regablate.report.stats import describe

    s = describe(list(values))
    return {"n": s.n, "mean": s.mean, "std": s.std, "lo": s.lo, "hi": s.hi}


def fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e4):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def ci(s: dict, digits: int = 3, signed: bool = False) -> str:
    """'0.107 [0.088, 0.126]' from a report stat ({mean, ci95}) or a stat() dict; `signed`:
    fixed decimals with a sign, for differences ('+0.004 [+0.001, +0.007]')."""
    lo, hi = s["ci95"] if "ci95" in s else (s["lo"], s["hi"])
    if signed:
        def f(x):
            if x is None or math.isnan(x):
                return "–"
            t = f"{x + 0.0:+.{digits}f}"
            return "+" + t[1:] if float(t) == 0 else t  # a rounded-away negative is +0.000, not -0.000
        return f"{f(s['mean'])} [{f(lo)}, {f(hi)}]"
    return f"{fmt(s['mean'], digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def paired_delta(out: Path, name: str, base: str, value: str = "gap", key: str = "") -> dict:
    """stat() of run-by-run differences `name` − `base` over the seeds both ran (report.json runs)."""
    runs = json.loads((out / f"report{'_' + key if key else ''}.json").read_text())["runs"]

    def values(group: str) -> dict:
        return {r["seed"]: (r[value][r["metric"]] if isinstance(r[value], dict) else r[value])
                for r in runs if r["name"] == group and r["status"] == "completed"}

    a, b = values(name), values(base)
    return stat(a[k] - b[k] for k in sorted(a) if k in b)


def by_name(gs: list[dict]) -> dict:
    return {g["name"]: g for g in gs}


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def save_figure(pyplot, fig, axes, title: str, path: Path) -> None:
    """Grid and legend on each axis, the title, then the PNG (its folder made if needed)."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot.close(fig)


def errorbar(ax, xs, stats, **kw):
    import numpy as np

    m = np.array([s["mean"] for s in stats])
    lo = np.array([s["mean"] - s["lo"] if s["n"] > 1 else 0 for s in stats])
    hi = np.array([s["hi"] - s["mean"] if s["n"] > 1 else 0 for s in stats])
    ax.errorbar(xs, m, yerr=[lo, hi], capsize=3, marker="o", **kw)


def p_of(g: dict) -> float:
    p = g["config"].get("reg.dropout.p")
    return 0.0 if p in (None, "–") else float(p)


# ---------------------------------------------------------------- per-study facts and figures


def classic_table(out: Path) -> dict:
    gs = by_name(groups(out))
    facts = {}
    for name, g in gs.items():
        k = name.replace("+", "_")
        facts[f"{k}.gap"] = ci(g["gap"])
        facts[f"{k}.val"] = ci(g["val"]["acc"])
        facts[f"{k}.test"] = ci(g["test"]["acc"])
        vs = g["vs_baseline"]
        if vs:
            facts[f"{k}.dval"] = f"{vs['val_acc']['delta']:+.3f}"
            facts[f"{k}.pval"] = fmt(vs["val_acc"]["p_holm"])
        facts[f"{k}.best_epoch"] = f"{g['best_epoch']:.0f}"  # mean best-val-loss epoch
    def p_holm(name: str) -> float:
        vs = gs[name]["vs_baseline"] if name in gs else None
        return vs["val_acc"]["p_holm"] if vs else math.nan

    def worse(name: str) -> bool:
        return name in gs and gs[name]["vs_baseline"]["val_acc"]["delta"] < 0 and p_holm(name) < 0.05

    facts["_claims"] = claims(lambda: [
        ("weight decay 1e-3: no significant change in val acc (Holm p >= 0.05)", not p_holm("weight_decay") < 0.05),
        ("dropout 0.4: no significant change in val acc", not p_holm("dropout") < 0.05),
        ("dropout + weight decay: no significant change in val acc", not p_holm("dropout+weight_decay") < 0.05),
        ("batch norm: val acc significantly lower", worse("batchnorm")),
        ("batch norm + weight decay: val acc significantly lower", worse("batchnorm+weight_decay")),
        ("dropout's best epoch is later than the baseline's", gs["dropout"]["best_epoch"] > gs["none"]["best_epoch"]),
    ])
    doc = json.loads((out / "report.json").read_text())
    facts["min_train_acc"] = fmt(min(r["train"]["acc"] for r in doc["runs"] if r["status"] == "completed"))
    return facts


def tiny_overfit(out: Path) -> dict:
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
            facts[f"p{format(p_of(g), 'g')}.dgap_ci"] = ci(d)
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


def _lam_of(s: dict) -> tuple[str, float]:
    for name in ("l1", "l2"):
        if f"reg.{name}.lam" in s["_cfg"]:
            return name, float(s["_cfg"][f"reg.{name}.lam"])
    return "none", 0.0


def sine_sparsity(out: Path) -> dict:
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


def adam_vs_adamw(out: Path) -> dict:
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


def variance_shift(run_dir: Path) -> list[float]:
    """Per BatchNorm layer: mean over channels of Var_eval(input) / running_var, where Var_eval is
    the variance of the layer's input over the val split with the model in eval mode (no dropout)
    and running_var is what BN estimated in training (with dropout). 1 = no shift."""
    import torch
    from omegaconf import OmegaConf
    from torch import nn

    from regablate.config.settings import load_settings
    from regablate.training.experiment import build_experiment

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


def dropout_batchnorm(out: Path) -> dict:
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
        facts[f"before_minus_after|{format(p, 'g')}"] = ci(d)
    nobn = {p: paired_delta(out, names[("BN, dropout before_norm", p)], names[("no BN, dropout after_act", p)],
                            "test") for p in ps
            if ("BN, dropout before_norm", p) in names and ("no BN, dropout after_act", p) in names}
    for p, d in nobn.items():
        facts[f"bn_minus_nobn|{format(p, 'g')}"] = ci(d)

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


def mc_dropout(out: Path) -> dict:
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


def penguins(out: Path) -> dict:
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


def rnn_dropout(out: Path) -> dict:
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


VIT_ARMS = ("none", "attn", "proj", "droppath", "both")


def vit_arm(cfg: dict) -> str:
    """The arm of a vit_dropout_sites group from its config (report.json `config`)."""
    def on(key: str) -> bool:
        return cfg.get(key) not in (None, "–", 0, 0.0)

    dp, attn, proj = on("reg.droppath.p"), on("reg.dropout.attn"), on("reg.dropout.proj")
    return "both" if dp and (attn or proj) else "droppath" if dp else "attn" if attn else \
        "proj" if proj else "none"


def vit_dropout_sites(out: Path) -> dict:
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


def which_regulariser(out: Path) -> dict:
    """From the components tables (val: report.json, test: report_test.json): '{c}.{kind}' =
    Δ [95% CI] and '.p' = Holm p ('test.' first for the test split; interactions 'c_x_d'), the
    full stack minus none paired over seeds, and each arm's val acc."""
    facts, eff, phi, full = {}, {}, {}, ""
    for key, pre in (("", ""), ("test", "test.")):
        doc = json.loads((out / f"report{'_' + key if key else ''}.json").read_text())
        for e in doc["effects"]:
            k = f"{pre}{e['component'].replace('×', '_x_')}.{e['kind']}"
            eff[k] = e
            facts[k] = ci({"mean": e["delta"], "lo": e["lo"], "hi": e["hi"]}, signed=True)
            facts[k + ".p"] = fmt(e["p_holm"])
        phi[pre] = {e["component"]: e["delta"] for e in doc["effects"] if e["kind"] == "shapley"}
        full = "+".join(sorted(phi[pre]))
        d = paired_delta(out, full, "none", "val" if not key else "test", key)
        facts[f"{pre}full_minus_none"] = ci(d, signed=True)
        eff[f"{pre}full_minus_none"] = {"delta": d["mean"], "lo": d["lo"], "hi": d["hi"]}
    for name, g in by_name(groups(out)).items():
        facts[f"{name.replace('+', '_')}.val"] = ci(g["val"]["acc"])
    facts["min_train_acc"] = fmt(min(r["train"]["acc"] for r in json.loads(
        (out / "report.json").read_text())["runs"] if r["status"] == "completed"))

    def sign(k: str) -> int:  # +1 / -1: the 95% interval lies above / below 0; 0: it contains 0
        e = eff.get(k)
        return 0 if not e else 1 if e["lo"] > 0 else -1 if e["hi"] < 0 else 0

    facts["_claims"] = claims(lambda: [
        ("l2 alone raises val and test acc (add-one-in)", sign("l2.add_one_in") == sign("test.l2.add_one_in") == 1),
        ("dropout alone: 95% interval contains 0 on val and test", sign("dropout.add_one_in") ==
         sign("test.dropout.add_one_in") == 0),
        ("batch norm and label smoothing alone lower val and test acc",
         all(sign(f"{p}{c}.add_one_in") == -1 for p in ("", "test.") for c in ("batchnorm", "label_smoothing"))),
        ("dropout has the largest Shapley value, positive, on val and test",
         all(sign(f"{p}dropout.shapley") == 1 and max(phi[p], key=phi[p].get) == "dropout" for p in ("", "test."))),
        ("dropout x batch norm and dropout x label smoothing interact positively, dropout x l2 negatively",
         all(sign(f"{p}dropout_x_{c}.interaction") == s for p in ("", "test.")
             for c, s in (("batchnorm", 1), ("label_smoothing", 1), ("l2", -1)))),
        ("full stack vs none: interval contains 0 on val, below 0 on test",
         sign("full_minus_none") == 0 and sign("test.full_minus_none") == -1),
        ("every run fits the training set (train acc >= 0.99)", float(facts["min_train_acc"]) >= 0.99),
        ("l2 alone is the best arm by mean val acc", max(groups(out), key=lambda g: g["val"]["acc"]["mean"])["name"] == "l2"),
        ("all six interactions: Holm p < 0.05 on val", all(e["p_holm"] < 0.05 for k, e in eff.items()
                                                           if k.endswith(".interaction") and "." not in k[:k.index("_x_")])),
        ("five of the six interactions exceed l2's main effect in size", sum(
            abs(e["delta"]) > eff["l2.main"]["delta"] for k, e in eff.items()
            if k.endswith(".interaction") and not k.startswith("test.")) == 5),
    ])
    return facts


EXTRAS = {"classic_table": classic_table, "tiny_overfit": tiny_overfit, "sine_sparsity": sine_sparsity,
          "adam_vs_adamw": adam_vs_adamw, "dropout_batchnorm": dropout_batchnorm, "mc_dropout": mc_dropout,
          "penguins": penguins, "rnn_dropout": rnn_dropout, "vit_dropout_sites": vit_dropout_sites,
          "which_regulariser": which_regulariser}


# ---------------------------------------------------------------- README


def render(template: str, out: Path, facts: dict, meta: dict) -> str:
    def block(m: re.Match) -> str:
        kind, _, key = m.group(1).partition(":")
        if kind == "commands":
            return "```\n" + "\n".join(meta["commands"]) + "\n```"
        if kind == "wall_time":
            return f"{meta['wall_time_s']:.0f} s"
        if kind == "table":
            return (out / f"report{'_' + key if key else ''}.md").read_text().rstrip("\n")
        if kind == "file":
            return (out / key).read_text().rstrip("\n")
        if kind == "fact":
            if key not in facts:
                raise KeyError(f"{out.name}: README.template.md asks for fact {key!r}; "
                               f"known: {', '.join(sorted(facts))}")
            return facts[key]
        if kind == "meta":
            return str(meta[key])
        raise KeyError(f"unknown block {{{{{m.group(1)}}}}}")

    text = re.sub(r"\{\{([^{}]+)\}\}", block, template)
    failed = [c for c, ok in facts.get("_claims", []) if not ok]
    if failed:  # the prose was written for other numbers: say so at the top instead of misleading
        say(f"{out.name}: WARNING: claims in the README no longer hold: {'; '.join(failed)}")
        title, _, rest = text.partition("\n")
        text = (f"{title}\n\n> **Warning: these runs no longer support every statement below** "
                f"(checked by make_studies.py): {'; '.join(failed)}.\n{rest}")
    return text


def make(name: str, root: Path, smoke: bool, report_only: bool) -> dict:
    import torch

    global SMOKE_RUN
    SMOKE_RUN = smoke
    study = STUDIES[name]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "study.json"
    if report_only:
        meta = json.loads(meta_path.read_text())
    else:
        wall = run_sweeps(name, study, out, smoke)
        meta = {"study": name, "commands": [shell(c) for c in commands(name, study)],
                "wall_time_s": round(wall, 1), "smoke": smoke, "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d")}
    if (out / "plots").exists():
        shutil.rmtree(out / "plots")
    for stale in [*out.glob("report*.md"), *out.glob("report*.csv"), *out.glob("report*.json")]:
        stale.unlink()
    write_reports(study, out, smoke)
    facts = EXTRAS[name](out)
    meta["facts"] = {k: v for k, v in facts.items() if k != "_claims"}
    meta["claims"] = [{"claim": c, "holds": ok} for c, ok in facts.get("_claims", [])]
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    template = HERE / name / "README.template.md"
    if template.exists():
        try:
            (out / "README.md").write_text(render(template.read_text(), out, facts, meta))
        except (KeyError, FileNotFoundError) as e:
            if not smoke:
                raise
            say(f"{name}: README not rendered in the smoke run ({e})")
    say(f"{name}: done in {meta['wall_time_s']:.0f} s of sweeps -> {rel(out)}")
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="*", metavar="STUDY",
                    help=f"default: all CPU studies ({', '.join(CPU_STUDIES)})")
    ap.add_argument("--root", type=Path, default=HERE, help="where the study folders go")
    ap.add_argument("--smoke", action="store_true", help="1 epoch, seed 0, shrunk grids (a test)")
    ap.add_argument("--report-only", action="store_true", help="keep the runs; redo the outputs")
    args = ap.parse_args(argv)
    unknown = [s for s in args.studies if s not in CPU_STUDIES]
    if unknown:
        ap.error(f"unknown study {unknown[0]!r}; CPU studies: {', '.join(CPU_STUDIES)}")
    for name in args.studies or CPU_STUDIES:
        make(name, args.root.resolve(), args.smoke, args.report_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
