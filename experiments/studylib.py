"""What every study in experiments/ shares: its description (Study, Sweep, Report), running its
sweeps through the real CLI, `regablate report` into its report files, reading what the runs left,
the statistics and figure helpers, and filling README.template.md (render).

Each study's own code lives in experiments/<name>/study.py: STUDY (a Study) and extras(out), which
writes the study's own figures and tables and returns the facts its README asks for;
make_studies.py runs them.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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


SMOKE_RUN = False  # set by make_studies.make(): a smoke run has one seed: no intervals, no tests


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

    from regablate.report.command import main as report_main

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


def signed_fmt(x: float | None, digits: int = 3) -> str:
    """'+0.004' for a difference; a value that rounds to zero is +0.000, not -0.000 (as the report
    prints it)."""
    from regablate.report.table import no_negative_zero

    if x is None or math.isnan(x):
        return "–"
    return no_negative_zero(f"{x:+.{digits}f}", True)


def ci(s: dict, digits: int = 3, signed: bool = False) -> str:
    """'0.107 [0.088, 0.126]' from a report stat ({mean, ci95}) or a stat() dict; `signed`:
    fixed decimals with a sign, for differences ('+0.004 [+0.001, +0.007]')."""
    lo, hi = s["ci95"] if "ci95" in s else (s["lo"], s["hi"])
    if signed:
        return f"{signed_fmt(s['mean'], digits)} [{signed_fmt(lo, digits)}, {signed_fmt(hi, digits)}]"
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


def run_facts(out: Path) -> dict:
    """'runs' and 'seeds': how many completed runs (report.json) and seeds among them;
    'min_train_acc' and 'max_train_acc': their final train accuracy's range."""
    runs = [r for r in json.loads((out / "report.json").read_text())["runs"] if r["status"] == "completed"]
    train = [r["train"]["acc"] for r in runs]
    return {"runs": str(len(runs)), "seeds": str(len({r["seed"] for r in runs})),
            "min_train_acc": fmt(min(train)), "max_train_acc": fmt(max(train))}


def arm_facts(out: Path) -> dict:
    """Each group's (its name, '+' as '_'): '{k}.gap', '{k}.val', '{k}.test' = mean [95% CI]; with
    a baseline, '{k}.dval' / '{k}.dtest' = Δ accuracy against it and '{k}.pval' / '{k}.ptest' =
    its Holm p (val from report.json, test from report_test.json)."""
    facts = {}
    for key, split in (("", "val"), ("test", "test")):
        for name, g in by_name(groups(out, key)).items():
            k = name.replace("+", "_")
            facts[f"{k}.gap"] = ci(g["gap"])
            facts[f"{k}.{split}"] = ci(g[split]["acc"])
            vs = (g["vs_baseline"] or {}).get(f"{split}_acc")
            if vs:
                facts[f"{k}.d{split}"] = signed_fmt(vs["delta"])
                facts[f"{k}.p{split}"] = fmt(vs["p_holm"])
    return facts


def factorial_facts(out: Path) -> tuple[dict, dict, dict]:
    """From a factorial's components tables (val: report.json, test: report_test.json): facts
    '{c}.{kind}' = Δ [95% CI] and '.p' = Holm p ('test.' first for the test split; interactions
    'c_x_d') and '{pre}full_minus_none' (the full stack minus none, paired over seeds); with the
    effects by the same keys and the Shapley values by split prefix. Each arm's: `arm_facts`."""
    facts, eff, phi = {}, {}, {}
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
    return facts, eff, phi


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


# ---------------------------------------------------------------- README


def plot_path(out: Path, kind: str, stack: str) -> str:
    """The `regablate report --plot` file of one arm (`plots.file_name`: the stack's name, then
    its group id), relative to the study's folder; exactly one must exist."""
    from regablate.report.plots import file_prefix

    prefix = file_prefix(kind, stack)
    found = [f for f in sorted((out / "plots").glob("*.png"))
             if f.name.startswith(prefix) and re.fullmatch(r"[0-9a-f]+\.png", f.name[len(prefix):])]
    if len(found) != 1:
        raise KeyError(f"{out.name}: README.template.md asks for plot {kind}:{stack}; "
                       f"found {len(found)} (plots/{prefix}<group id>.png)")
    return f"plots/{found[0].name}"


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
        if kind == "plot":  # plot:curves:batchnorm+weight_decay -> plots/curves_batchnorm_weight_decay_<id>.png
            return plot_path(out, *key.split(":", 1))
        raise KeyError(f"unknown block {{{{{m.group(1)}}}}}")

    text = re.sub(r"\{\{([^{}]+)\}\}", block, template)
    missing = [link for link in re.findall(r"\]\(([^)\s]+)\)", text)
               if "://" not in link and not link.startswith("#") and not (out / link).exists()]
    if missing and not meta.get("smoke"):  # a README that links to files the study did not write is
        # not written (a smoke run writes no report plots: the report's own tests cover them)
        raise FileNotFoundError(f"{out.name}: README.template.md links to files that are not there: "
                                f"{', '.join(missing)}")
    failed = [c for c, ok in facts.get("_claims", []) if not ok]
    if failed:  # the prose was written for other numbers: say so at the top instead of misleading
        say(f"{out.name}: WARNING: claims in the README no longer hold: {'; '.join(failed)}")
        title, _, rest = text.partition("\n")
        text = (f"{title}\n\n> **Warning: these runs no longer support every statement below** "
                f"(checked by make_studies.py): {'; '.join(failed)}.\n{rest}")
    return text
