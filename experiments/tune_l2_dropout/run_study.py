"""Run the tune_l2_dropout study through the real CLI and write its reports and facts.json.

    python experiments/tune_l2_dropout/run_study.py          # from the repository root
    python experiments/tune_l2_dropout/run_study.py --report-only

1. a 5-seed search: 20 TPE trials, each the mean val loss over seeds 0..4
2. a 1-seed search: the same, seed 0 only (same sampler seed, so the first 10 random trials
   propose the same points)
3. held-out seeds 5..9: none, the classic table's untuned defaults (dropout 0.4, and dropout 0.4
   with weight decay 1e-3) and both searches' optima, retrained on seeds no search has seen; the
   test split is the honest comparison (val was used to choose)
Run dirs go to runs/ (git-ignored); reports, plots and facts.json are committed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNS = HERE / "runs"
REL = RUNS.relative_to(REPO)
EXE = [sys.executable, "-m", "regablate"]
SEARCH = ["run", "-m", "hydra/sweeper=optuna", "hydra/launcher=vectorized", "+experiment=tune_l2_dropout"]
SEARCH1 = [*SEARCH, "hydra.sweeper.seeds_per_trial=1", "hydra.sweeper.study_name=seeds1",
           f"hydra.sweep.dir={REL}/seeds1"]
HELD_OUT = "5,6,7,8,9"


def sh(args: list[str], log: list) -> float:
    print("$ regablate " + " ".join(args), flush=True)
    t = time.time()
    subprocess.run([*EXE, *args], cwd=REPO, check=True)
    log.append({"command": "regablate " + " ".join(args), "wall_time_s": round(time.time() - t, 1)})
    return log[-1]["wall_time_s"]


def best(sweep: str) -> dict:
    study = json.loads((RUNS / sweep / "optuna_study.json").read_text())
    return next(t for t in study["trials"] if t["number"] == study["best"])


def held_out_args(b5: dict, b1: dict) -> list[str]:
    arm = "{{dropout:{{p:{p!r}}},l2:{{lam:{lam!r}}}}}"
    arms = ["{}", "{dropout:{p:0.4}}", "{dropout:{p:0.4},weight_decay:{lam:1e-3}}",
            arm.format(p=b5["params"]["reg.dropout.p"], lam=b5["params"]["reg.l2.lam"]),
            arm.format(p=b1["params"]["reg.dropout.p"], lam=b1["params"]["reg.l2.lam"])]
    return ["run", "-m", "+experiment=classic_table", "++reg=" + ",".join(arms), f"seed={HELD_OUT}",
            f"hydra.sweep.dir={REL}/heldout"]


def report(args: list[str], out: str, plots: str | None = None) -> None:
    more = ["--plot", str(HERE / plots)] if plots else []
    subprocess.run([*EXE, "report", *args, "--format", "markdown", "--out", str(HERE / f"{out}.md"), *more],
                   cwd=REPO, check=True)
    for png in (HERE / plots).glob("*.png") if plots else ():  # keep the study's figures only
        if not png.name.startswith(("objective_vs_", "val_curves", "gap")):
            png.unlink()
    subprocess.run([*EXE, "report", *args, "--format", "json", "--out", str(HERE / f"{out}.json")],
                   cwd=REPO, check=True)


def main(argv: list[str]) -> None:
    log: list = []
    if "--report-only" not in argv:
        shutil.rmtree(RUNS, ignore_errors=True)
        sh(SEARCH, log)
        sh(SEARCH1, log)
        sh(held_out_args(best("seeds5"), best("seeds1")), log)
    report([str(RUNS / "seeds5")], "report_seeds5", "plots")
    report([str(RUNS / "seeds1")], "report_seeds1", "plots_seeds1")
    report([str(RUNS / "heldout"), "--metric", "test"], "report_heldout_test")
    report([str(RUNS / "heldout")], "report_heldout_val")
    report([str(RUNS / "heldout"), "--metric", "test", "--baseline", "dropout"], "report_heldout_test_vs_dropout")
    facts = {"best_seeds5": best("seeds5"), "best_seeds1": best("seeds1"),
             "commands": log or json.loads((HERE / "facts.json").read_text())["commands"]}
    (HERE / "facts.json").write_text(json.dumps(facts, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
