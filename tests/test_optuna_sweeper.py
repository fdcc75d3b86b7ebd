"""hydra/sweeper=optuna: the override grammar as Optuna distributions, trials over paired seeds,
a study resumed from SQLite without repeating trials, failures and refusals, the ranked report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import run_cli
from hydra_plugins.regablate_optuna.optuna_sweeper import search_space
from regablate.errors import ConfigError
from regablate.objective import maximised, terms, value
from regablate.report.cli import main as report_main
from regablate.settings import load_settings

TINY = ("dataset=tiny_binary", "trainer.max_epochs=2", "trainer.progress=none",
        "trainer.tensorboard=false", "trainer.checkpoint=false")


def test_the_sweep_grammar_maps_to_optuna_distributions_and_other_overrides_stay_as_written():
    space, keys, fixed = search_space([
        "+reg=[dropout,weight_decay]", "reg.dropout.p=interval(0,0.6)",
        "reg.weight_decay.lam=tag(log, interval(1e-5,1))", "model.depth=tag(log, interval(1, 8))",
        "+a.b=choice(1,x)", "++c=range(1,5)", "d=range(0,1,0.25)", "optim=adam,sgd", "seed=3"])
    assert fixed == ["+reg=[dropout,weight_decay]", "seed=3"]
    assert space["reg.dropout.p"] == FloatDistribution(0.0, 0.6)
    assert space["reg.weight_decay.lam"] == FloatDistribution(1e-5, 1.0, log=True)
    assert space["model.depth"] == FloatDistribution(1.0, 8.0, log=True)  # Hydra: float bounds
    assert space["a.b"] == CategoricalDistribution([1, "x"])
    assert space["c"] == IntDistribution(1, 4)  # Hydra's range excludes its stop
    assert space["d"] == FloatDistribution(0.0, 0.75, step=0.25)
    assert space["optim"] == CategoricalDistribution(["adam", "sgd"])
    assert keys["a.b"] == "+a.b" and keys["c"] == "++c" and keys["reg.dropout.p"] == "reg.dropout.p"


def test_the_objective_its_direction_and_its_check():
    s = {"status": "completed", "metric": "acc", "val": {"loss": 0.5, "acc": 0.8}, "gap": 0.1}
    assert value(s, "val_loss") == 0.5 and value(s, "val_metric") == 0.8 and value(s, "gap") == 0.1
    assert value(s, "val_loss+0.5*gap") == pytest.approx(0.55)
    assert value({**s, "status": "diverged"}, "val_loss") is None
    assert value({**s, "val": {"loss": math.nan}}, "val_loss") is None
    assert maximised("val_metric", True) and not maximised("val_metric", False)
    assert not maximised("val_loss", True) and not maximised("gap", True)
    assert terms("val_metric+gap") is None and terms("2*val_loss + 1e-1*gap") == [(2.0, "val_loss"), (0.1, "gap")]
    from conftest import compose_cfg

    with pytest.raises(ConfigError, match="trainer.objective"):
        load_settings(compose_cfg("trainer.objective=val_acc"))


def _study(d: Path) -> dict:
    return json.loads((d / "optuna_study.json").read_text())


def test_the_first_command_trials_over_paired_seeds_a_second_launch_refused_and_the_report_ranks(tmp_path, capsys):
    args = ("run", "-m", "hydra/sweeper=optuna", "+reg=l2", "reg.l2.lam=tag(log, interval(1e-6, 1e-1))",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.seeds_per_trial=2", "trainer.objective=val_metric",
            "hydra.sweeper.sampler_seed=0", *TINY, "hydra.sweep.dir=s")
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = tmp_path / "s"
    study = _study(s)
    assert study["direction"] == "maximize" and study["objective"] == "val_metric"  # acc: higher is better
    assert [t["state"] for t in study["trials"]] == ["COMPLETE", "COMPLETE"]
    for t in study["trials"]:
        seeds = [json.loads((s / f"trial_{t['number']}" / f"seed_{k}" / "summary.json").read_text())
                 for k in (0, 1)]
        assert [x["seed"] for x in seeds] == [0, 1]  # the same seeds for every trial
        assert t["values"] == [x["val"]["acc"] for x in seeds]
        assert t["value"] == pytest.approx(sum(t["values"]) / 2)  # Optuna was told the mean
        assert seeds[0]["group"] == seeds[1]["group"]  # one trial = one group of runs
    assert study["best"] == max(study["trials"], key=lambda t: t["value"])["number"]
    # in memory, a second launch into the same dir starts at trial 0 again: refused, untouched
    before = (s / "trial_0" / "seed_0" / "summary.json").read_text()
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("regablate: error: 4 of 4 jobs refused")
    assert (s / "trial_0" / "seed_0" / "summary.json").read_text() == before
    # the report ranks the trials by the objective, best first and marked, with intervals
    capsys.readouterr()
    assert report_main([str(s), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["groups"]
    assert [r["objective"]["mean"] for r in rows] == sorted((r["objective"]["mean"] for r in rows), reverse=True)
    assert rows[0]["best"] and rows[0]["trial"] == str(study["best"]) and rows[0]["objective"]["n"] == 2
    assert all(len(r["objective"]["ci95"]) == 2 for r in rows)
    assert report_main([str(s), "--format", "markdown", "--plot", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "★ l2" in out and "Optuna study" in out and "val_metric" in out
    assert (tmp_path / "p" / "objective_vs_reg.l2.lam.png").is_file()


def test_the_second_command_stacks_a_batch_and_a_sqlite_study_resumes_without_repeating(tmp_path):
    def sweep(n: int):
        return run_cli("run", "-m", "hydra/sweeper=optuna", "hydra/launcher=vectorized",
                       "+reg=[dropout,weight_decay]", "reg.dropout.p=interval(0,0.6)",
                       "reg.weight_decay.lam=tag(log, interval(1e-5,1))", f"hydra.sweeper.n_trials={n}",
                       "hydra.sweeper.seeds_per_trial=2", "hydra.sweeper.storage=sqlite:///db/study.db",
                       "hydra.sweeper.study_name=mlp_reg", *TINY, "hydra.sweep.dir=s", cwd=tmp_path)

    first = sweep(2)
    assert first.returncode == 0, first.stderr
    assert "Stacked group 1: K=4 members" in first.stdout + first.stderr  # 2 trials x 2 seeds, one batch
    s = tmp_path / "s"
    kept = {p: p.read_text() for p in s.glob("trial_*/seed_*/summary.json")}
    assert len(kept) == 4
    resumed = sweep(3)  # the study's total: one more trial
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout + resumed.stderr
    assert "Stacked group 1: K=2 members" in out and "refused" not in out
    assert {p: p.read_text() for p in kept} == kept  # finished trials untouched
    study = _study(s)
    assert [t["number"] for t in study["trials"]] == [0, 1, 2]
    assert len({json.dumps(t["params"]) for t in study["trials"]}) == 3
    assert sorted(p.parent.parent.name for p in s.glob("trial_*/seed_*/summary.json")).count("trial_2") == 2
    done = sweep(3)  # nothing missing: nothing runs
    assert done.returncode == 0 and "Launching" not in done.stdout + done.stderr


def test_a_trial_whose_seed_fails_is_told_fail_and_the_others_go_on(tmp_path):
    # dataset.k=30 > dataset.d=20 is an invalid config: the job is recorded as failed
    r = run_cli("run", "-m", "hydra/sweeper=optuna", "dataset.k=choice(2,30)", "hydra.sweeper.sampler=grid",
                "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", "hydra.sweeper.seeds_per_trial=1",
                *TINY, "hydra.sweep.dir=s", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    by_k = {t["params"]["dataset.k"]: t for t in _study(tmp_path / "s")["trials"]}
    assert by_k[30]["state"] == "FAIL" and by_k[30]["statuses"] == ["failed"] and by_k[30]["values"] == [None]
    assert by_k[2]["state"] == "COMPLETE"
