"""hydra/sweeper=optuna: the override grammar as Optuna distributions, trials over paired seeds,
a study resumed from SQLite without repeating trials, failures and refusals, the ranked report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import run_cli, run_patched
from regablate.config.objective import maximised, terms, value
from regablate.errors import ConfigError
from regablate.report.command import main as report_main
from regablate.sweep.optuna_search import SAMPLERS, make_sampler, search_space
from regablate.training.settings import load_settings

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
    # the others go on; the sweep ends with one line counting the failed trials, as any sweep's
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("regablate: error: 1 of 2 trials ran a job that failed (trial ") and "dataset.k" in line
    by_k = {t["params"]["dataset.k"]: t for t in _study(tmp_path / "s")["trials"]}
    assert by_k[30]["state"] == "FAIL" and by_k[30]["statuses"] == ["failed"] and by_k[30]["values"] == [None]
    assert by_k[2]["state"] == "COMPLETE"


def _table(path: Path, seed: int) -> None:
    """A small CSV: two numeric features and a binary target."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 2)).round(3)
    rows = ["x1,x2,y"] + [f"{a},{b},{int(a + b > 0)}" for a, b in x]
    path.write_text("\n".join(rows) + "\n")


def _stored(tmp_path: Path, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'db' / 'study.db'}").trials


def test_a_stored_study_refuses_another_problem_in_one_line_and_stays_as_it_was(tmp_path):
    _table(tmp_path / "a.csv", 0)
    _table(tmp_path / "b.csv", 1)

    def sweep(*changes: str, n: int = 2):
        base = {"dataset": "dataset=tabular", "dataset.path": "dataset.path=a.csv",
                "dataset.target": "dataset.target=y", "reg.l2.lam": "reg.l2.lam=tag(log, interval(1e-6, 1e-1))",
                "trainer.objective": "trainer.objective=val_loss"}
        for c in changes:
            base[c.split("=", 1)[0]] = c
        return run_cli("run", "-m", "hydra/sweeper=optuna", "+reg=l2", *base.values(), f"hydra.sweeper.n_trials={n}",
                       "hydra.sweeper.n_jobs=1", "hydra.sweeper.seeds_per_trial=1", "hydra.sweeper.sampler=random",
                       "hydra.sweeper.storage=sqlite:///db/study.db", "hydra.sweeper.study_name=tab", *TINY[1:],
                       "hydra.sweep.dir=s", cwd=tmp_path)

    first = sweep(n=1)
    assert first.returncode == 0, first.stderr
    for changes, named in ((["dataset.path=b.csv"], "dataset.path='a.csv' stored, 'b.csv' now; its trials"),
                           (["optim.lr=0.05", "reg.l2.lam=tag(log, interval(1e-6, 1e-2))", "trainer.objective=gap"],
                            "optim.lr=0.001 stored, 0.05 now; reg.l2.lam=interval(1e-06, 0.1) log stored, "
                            "interval(1e-06, 0.01) log now; trainer.objective='val_loss' stored, 'gap' now; its")):
        r = sweep(*changes)
        assert r.returncode == 2, (changes, r.stderr)
        line = r.stderr.strip()
        assert "\n" not in line and line.startswith("regablate: error: study 'tab' in sqlite:///db/study.db "
                                                    "was made for another problem: "), line
        assert named in line, line
        assert "Launching" not in r.stdout + r.stderr
        assert len(_stored(tmp_path, "tab")) == 1  # nothing added to the stored study
    # an operational setting is no other problem: the study goes on
    more = sweep("trainer.eval_batch_size=64")
    assert more.returncode == 0, more.stderr
    assert [t.state.name for t in _stored(tmp_path, "tab")] == ["COMPLETE", "COMPLETE"]


def test_a_continued_seeded_study_proposes_new_trials_the_same_as_one_run_of_them_all(tmp_path):
    def sweep(n: int, where: str):
        return run_cli("run", "-m", "hydra/sweeper=optuna", "+reg=l2", "reg.l2.lam=tag(log, interval(1e-6, 1e-1))",
                       "dataset.k=choice(2,3,4)",
                       f"hydra.sweeper.n_trials={n}", "hydra.sweeper.seeds_per_trial=1", "hydra.sweeper.sampler_seed=0",
                       f"hydra.sweeper.storage=sqlite:///{where}.db", "hydra.sweeper.study_name=s", *TINY,
                       f"hydra.sweep.dir={where}", cwd=tmp_path)

    for n, where in ((2, "continued"), (4, "continued"), (4, "fresh")):
        r = sweep(n, where)
        assert r.returncode == 0, r.stderr
    continued = [t["params"] for t in _study(tmp_path / "continued")["trials"]]
    assert len(continued) == 4 and len({json.dumps(p, sort_keys=True) for p in continued}) == 4  # none repeated
    assert continued == [t["params"] for t in _study(tmp_path / "fresh")["trials"]]  # seeded per trial number


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_seeded_sampler_continued_in_another_process_proposes_what_one_run_proposes(name):
    import optuna

    if name == "cmaes":
        pytest.importorskip("cmaes")  # optuna's CmaEsSampler needs it; not a dependency of regablate
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    discrete = name in ("grid", "bruteforce")
    space = {"a": IntDistribution(0, 9), "b": CategoricalDistribution(["x", "y", "z"]),
             **({} if discrete else {"lam": FloatDistribution(1e-6, 1e-1, log=True)})}

    def run(study, n: int) -> None:  # asks two at a time, as the sweeper does with n_jobs=2
        while len(study.trials) < n:
            trials = [study.ask(space) for _ in range(2)]
            for t in trials:
                study.tell(t, t.params["a"] + "xyz".index(t.params["b"]) + math.log(t.params.get("lam", 1.0)))

    storage = optuna.storages.InMemoryStorage()
    run(optuna.create_study(storage=storage, study_name="s", sampler=make_sampler(name, 7, space)), 2)
    continued = optuna.load_study(storage=storage, study_name="s", sampler=make_sampler(name, 7, space))
    run(continued, 6)  # a new sampler, as a new process makes it
    fresh = optuna.create_study(sampler=make_sampler(name, 7, space))
    run(fresh, 6)
    params = [t.params for t in continued.trials]
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 6
    assert params == [t.params for t in fresh.trials]


def test_a_refusal_shows_whole_numbers_as_typed():
    """The stored problem keeps 1 and 1.0 equal (as 1.0); the refusal shows them as typed."""
    from regablate.sweep.optuna_search import _differences

    stored, now = {"trainer.max_epochs": "2.0", "optim.lr": "0.001"}, {"trainer.max_epochs": "3.0", "optim.lr": "0.05"}
    assert _differences(stored, now) == "trainer.max_epochs=2 stored, 3 now; optim.lr=0.001 stored, 0.05 now"
    assert _differences({"x": "-1.0"}, {"x": "'1.0'"}) == "x=-1 stored, '1.0' now"
    seeds = {"hydra.sweeper.seeds": "[0, 1, 2]"}, {"hydra.sweeper.seeds": "[0, 1, 2, 3, 4]"}
    assert _differences(*seeds) == ("hydra.sweeper.seeds=[0, 1, 2] (seeds_per_trial=3) stored, "
                                    "[0, 1, 2, 3, 4] (seeds_per_trial=5) now")
    assert _differences({"hydra.sweeper.seeds": "[0, 1, 2]"}, {"hydra.sweeper.seeds": "[4, 7]"}) == \
        "hydra.sweeper.seeds=[0, 1, 2] (seeds_per_trial=3) stored, [4, 7] now"


@pytest.mark.parametrize("kw, says", [({"n_trials": 0}, "hydra.sweeper.n_trials=0: must be >= 1"),
                                      ({"sampler": "foo"}, "hydra.sweeper.sampler='foo': allowed: tpe, random"),
                                      ({"direction": "up"}, "hydra.sweeper.direction='up': allowed: auto, minimize")])
def test_a_bad_sweeper_setting_names_its_value(kw, says):
    from regablate.sweep.optuna_search import OptunaSearch

    assert OptunaSearch(**kw).refusal.startswith(says)


def test_a_storage_optuna_cannot_open_is_one_line_and_writes_nothing(tmp_path):
    r = run_cli("run", "-m", "hydra/sweeper=optuna", "+reg=l2", "reg.l2.lam=interval(0,0.1)", *TINY,
                "hydra.sweeper.storage=bogus://x", "hydra.sweep.dir=s", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "regablate: error: hydra.sweeper.storage='bogus://x': NoSuchModuleError: "
                                           "Can't load plugin: sqlalchemy.dialects:bogus\n")
    assert not any((tmp_path / "s").iterdir())  # the sweep dir it held, and nothing in it


def test_a_range_optuna_cannot_search_is_one_line():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from regablate.errors import UsageError
    from regablate.sweep.optuna_search import distribution

    for line, says in (("reg.l2.lam=tag(log, interval(0, 1))", "`low > 0` must hold for `log=True`"),
                       ("reg.l2.lam=interval(0.5, 0.1)", "`low <= high` must hold")):
        (o,) = OverridesParser.create().parse_overrides([line])
        with pytest.raises(UsageError, match=re.escape(f"{line}: not a range Optuna can search (")) as e:
            distribution(o)
        assert says in str(e.value)


def test_trials_whose_jobs_failed_end_the_sweep_with_one_line_and_exit_2(tmp_path):
    r = run_cli("run", "-m", "hydra/sweeper=optuna", "+reg=l2", "reg.l2.lam=interval(-1,-0.5)", *TINY,
                "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", "hydra.sweeper.seeds_per_trial=1",
                "hydra.sweeper.sampler=random", "hydra.sweep.dir=s", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("regablate: error: 2 of 2 trials ran a job that failed (trial 0: invalid config: "
                           "reg.l2.lam=-0.") and "must be >= 0" in line and line.endswith("fix the settings"), line
    trials = json.loads((tmp_path / "s" / "optuna_study.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["FAIL", "FAIL"]


CTRL_C_IN_THE_SECOND_TRIAL = """
import os, signal
import regablate.training.loop as loop
real, calls = loop.train, []
def train(*args, **kwargs):  # Ctrl-C as the second trial's run starts training
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGINT)
    return real(*args, **kwargs)
loop.train = train
"""


def test_a_stopped_study_leaves_its_record_and_status_says_an_in_memory_one_cannot_go_on(tmp_path):
    # before: optuna_study.json was written only at the end, so status could not tell a study in
    # memory (gone with its process) from a stored one
    r = run_patched(CTRL_C_IN_THE_SECOND_TRIAL, "run", "-m", "hydra/sweeper=optuna", "+reg=l2",
                    "reg.l2.lam=interval(0,0.1)", *TINY, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1",
                    "hydra.sweeper.seeds_per_trial=1", "hydra.sweep.dir=s", cwd=tmp_path)
    assert r.returncode == 130 and "regablate: interrupted" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    record = json.loads((tmp_path / "s" / "optuna_study.json").read_text())
    assert record["storage"] is None and [t["state"] for t in record["trials"]] == ["COMPLETE", "RUNNING"]
    status = run_cli("status", "s", cwd=tmp_path)
    assert "an Optuna study kept in memory: its trials went with its process" in status.stdout, status.stdout
