"""`hydra.sweeper.design`: the sweep runs the design's arms of the `+reg=[...]` stack over the same
seeds, writes ablation.json once, and the report and `regablate.effects` read it; a design that does
not make sense is one line, exit 2."""

from __future__ import annotations

import json
import re

import pytest

import regablate
from conftest import run_cli

TINY = ("dataset=tiny_binary", "trainer.max_epochs=2", "trainer.progress=none", "trainer.tensorboard=false")


def _summaries(sweep):
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]


def test_a_factorial_sweep_runs_every_arm_on_the_same_seeds_and_the_report_decomposes_it(tmp_path):
    # stacked (fast); the basic launcher runs a design in test_leave_one_out_runs_k_plus_two_arms
    r = run_cli("run", "-m", "hydra/launcher=vectorized", "+reg=[dropout,l2]", "hydra.sweeper.design=factorial", "seed=0,1,2",
                "reg.dropout.p=0.3", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = _summaries(tmp_path / "sweep")
    assert sorted((tuple(s["reg"]), s["seed"]) for s in runs) == sorted(
        (arm, seed) for arm in [(), ("dropout",), ("l2",), ("dropout", "l2")] for seed in (0, 1, 2))
    assert all(s["status"] == "completed" for s in runs)  # reg.dropout.p reached only the arms with dropout
    doc = json.loads((tmp_path / "sweep" / "ablation.json").read_text())
    assert (doc["design"], doc["components"], doc["seeds"]) == ("factorial", ["dropout", "l2"], [0, 1, 2])
    assert doc["arms"] == [[], ["dropout"], ["l2"], ["dropout", "l2"]]
    effects = regablate.effects(regablate.load_runs(tmp_path / "sweep"))
    assert set(effects["kind"]) == {"leave_one_out", "add_one_in", "main", "interaction", "shapley"}
    assert set(effects["n"]) == {3}
    report = run_cli("report", "sweep", "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    records = json.loads(report.stdout)["effects"]
    assert {(e["component"], e["kind"]) for e in records} == set(zip(effects["component"], effects["kind"]))


def test_leave_one_out_runs_k_plus_two_arms(tmp_path):
    r = run_cli("run", "-m", "+reg=[dropout,l2,l1]", "hydra.sweeper.design=leave_one_out", "seed=0,1",
                *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    arms = {tuple(s["reg"]) for s in _summaries(tmp_path / "sweep")}
    assert arms == {("dropout", "l1", "l2"), ("l1", "l2"), ("dropout", "l1"), ("dropout", "l2"), ()}


@pytest.mark.parametrize("args, says", [
    (("+reg=[dropout]", "hydra.sweeper.design=factorial", "seed=0,1,2"), "needs at least two regularisers"),
    (("+reg=[dropout,l2]", "hydra.sweeper.design=factorial"), "add a seed sweep, e.g. seed=0,1,2,3,4"),
    (("hydra/sweeper=optuna", "+reg=[dropout,l2]", "hydra.sweeper.design=factorial", "seed=0,1"),
     "and hydra/sweeper=optuna do not mix"),
    (("+reg=[dropout,dropout_l2]", "hydra.sweeper.design=factorial", "seed=0,1,2"),
     "hydra.sweeper.design=factorial: the components dropout and dropout_l2 overlap (both run dropout): arms "
     "would repeat each other; ablate regularisers that do not share one, e.g. +reg=[dropout,l2]"),
], ids=["one-component", "no-seeds", "optuna", "overlap"])
def test_a_design_that_does_not_make_sense_is_one_line_and_runs_nothing(tmp_path, args, says):
    r = run_cli("run", "-m", *args, *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert says in r.stderr
    assert not list(tmp_path.glob("sweep/*/summary.json"))


@pytest.mark.parametrize("args, says", [
    (("+reg=none", "seed=0,1,2"), "'none' is not a regulariser name"),
    (("+reg=none,dropout", "seed=0,1"), "not as a sweep"),
    (("seed=0,1",), "not as a sweep"),
    (("+reg=[dropout,l2]", "seed=a,b"), "not a list of integer seeds"),
])
def test_design_arguments_refuse_in_one_line(args, says):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from regablate.errors import UsageError
    from regablate.sweep.designs import design_arguments

    with pytest.raises(UsageError, match=re.escape(says)):
        design_arguments("factorial", OverridesParser.create().parse_overrides(list(args)))


def test_design_arguments_sweep_the_arms_and_drop_absent_components_settings():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from regablate.sweep.designs import design_arguments, without_absent_settings

    args, doc = design_arguments("add_one_in", OverridesParser.create().parse_overrides(
        ["+reg=[dropout,l2]", "seed=range(3)", "reg.dropout.p=0.3", "model=mlp"]))
    assert args == ["+reg=none,dropout,l2,[dropout,l2]", "seed=range(3)", "reg.dropout.p=0.3", "model=mlp"]
    assert doc["seeds"] == [0, 1, 2] and doc["overrides"] == args[1:]
    job = ["+reg=l2", "seed=0", "reg.dropout.p=0.3", "reg.l2.lam=0.1", "model=mlp"]
    assert without_absent_settings(job) == ["+reg=l2", "seed=0", "reg.l2.lam=0.1", "model=mlp"]
    assert without_absent_settings(["+reg=none", "+reg.l2.lam=1"]) == ["+reg=none"]


def test_another_design_into_the_same_dir_is_refused_and_changes_nothing(tmp_path):
    first = run_cli("run", "-m", "+reg=[dropout,l2]", "hydra.sweeper.design=add_one_in", "seed=0,1", *TINY,
                    "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = (tmp_path / "sweep" / "ablation.json").read_bytes()
    second = run_cli("run", "-m", "+reg=[dropout,l1]", "hydra.sweeper.design=factorial", "seed=0,1", *TINY,
                     "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert second.returncode == 2 and "already holds another ablation" in second.stderr, second.stderr
    assert (tmp_path / "sweep" / "ablation.json").read_bytes() == before
    # the same design with another science setting is another ablation too
    other = run_cli("run", "-m", "+reg=[dropout,l2]", "hydra.sweeper.design=add_one_in", "seed=0,1", *TINY,
                    "optim.lr=0.5", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert other.returncode == 2 and "already holds another ablation" in other.stderr, other.stderr
    # the command that continues it (trainer.resume=auto, another progress display) is the same one
    again = run_cli("run", "-m", "+reg=[dropout,l2]", "hydra.sweeper.design=add_one_in", "seed=0,1", *TINY,
                    "trainer.progress=plain", "hydra.sweep.dir=sweep", "trainer.resume=auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "sweep" / "ablation.json").read_bytes() == before


def test_every_preset_says_which_regularisers_it_runs():
    from regablate.config.paths import CONF_DIR
    from regablate.sweep.designs import regularisers_of

    presets = {p.stem: regularisers_of(p.stem) for p in (CONF_DIR / "reg").glob("*.yaml")}
    assert all(isinstance(r, frozenset) for r in presets.values()), presets
    assert presets["none"] == frozenset() and presets["dropout"] == {"dropout"}
    assert presets["dropout_l2"] == {"dropout", "l2"} and presets["batchnorm_l2"] == {"batchnorm", "l2"}
    assert regularisers_of("my_own_preset") is None  # not the package's: not checked
