"""`hydra.sweeper.seeds=auto`: rounds of seeds until each arm is decided, on real runs; a killed
sequential sweep re-run with the same command, or the one that continues it, reaches the same
decisions from its run dirs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ENV, run_cli
from regablate.sweep.seed_rounds import arm_labels, design_reference, pick_reference

SEQ = ("+reg=dropout", "reg.dropout.p=0,0.95", "hydra.sweeper.seeds=auto", "dataset=tiny_binary",
       "trainer.max_epochs=20", "trainer.progress=none", "trainer.tensorboard=false")


def test_a_harmful_dropout_is_decided_worse_well_before_max_seeds(tmp_path):
    r = run_cli("run", "-m", *SEQ, "hydra/launcher=vectorized", "hydra.sweep.dir=seq", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "seq" / "sequential.json").read_text())
    (arm,) = doc["arms"]
    assert (arm["label"], arm["decision"]) == ("reg.dropout.p=0.95", "worse")
    assert arm["n"] < doc["settings"]["max_seeds"] and arm["ci95"][1] < 0 < 0.05 - arm["p"]
    assert doc["reference"] == "reg.dropout.p=0" and [lk["n"] for lk in doc["looks"]] == doc["schedule"][: len(doc["looks"])]
    seeds = sorted(json.loads(p.read_text())["seed"] for p in (tmp_path / "seq").glob("*/summary.json"))
    assert seeds == sorted(list(range(arm["n"])) * 2)  # both arms, the same seeds, no more
    assert "seeds=auto look 1 vs reg.dropout.p=0" in r.stderr
    report = run_cli("report", "seq", "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["sequential"] == [{**arm, "ci95": arm["ci95"]}]  # the decisions as sequential.json has them
    assert any(line.startswith(f"  reg.dropout.p=0.95: worse after {arm['n']} seeds") for line in doc["footer"])
    assert any("O'Brien–Fleming-type alpha spending" in line and "the table's p values are fixed-n tests" in line
               for line in doc["footer"])


def test_a_killed_sequential_sweep_rerun_reaches_the_same_decisions(tmp_path):
    small = (*SEQ[:-3], "trainer.max_epochs=3", "trainer.progress=none", "trainer.tensorboard=false",
             "hydra.sweeper.max_seeds=5")
    whole = run_cli("run", "-m", *small, "hydra.sweep.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    cut = subprocess.Popen([sys.executable, "-m", "regablate", "run", "-m", *small, "hydra.sweep.dir=cut"],
                           cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "cut" / "sequential.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(cut.pid, signal.SIGKILL)  # in round 2, after the first look
    cut.wait()
    # status says the sweep is not done, though every run it holds may be, and how to go on
    from regablate.cli.status import render, sweep_status

    shown = render(sweep_status([tmp_path / "cut"]))
    assert "seeds=auto: 1 arm(s) undecided after look 1 of 2; the next round runs seeds 3–4" in shown, shown
    assert "continue with: regablate run -m " in shown and "trainer.resume=auto" in shown, shown
    # as the printed command continues it (trainer.resume=auto), an operational setting changed
    again = run_cli("run", "-m", *small, "trainer.threads=1", "hydra.sweep.dir=cut", "trainer.resume=auto",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "(n=0" not in again.stderr, again.stderr
    assert (tmp_path / "cut" / "sequential.json").read_text() == (tmp_path / "whole" / "sequential.json").read_text()
    # and once more over the finished sweep: the same looks, nothing rewritten otherwise
    done = run_cli("run", "-m", *small, "hydra.sweep.dir=cut", "trainer.resume=auto", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cut" / "sequential.json").read_text() == (tmp_path / "whole" / "sequential.json").read_text()


@pytest.mark.parametrize("args, says", [
    (("seed=0,1",), "seeds=auto chooses the seeds itself"),
    (("hydra.sweeper.min_seeds=2",), "min_seeds=2: at least 3"),
    (("hydra.sweeper.metric=loss",), "hydra.sweeper.metric='loss': allowed: val, test, gap"),
    (("hydra.sweeper.reference='reg.dropout.p=0.5'",), "hydra.sweeper.reference='reg.dropout.p=0.5': one of the arms"),
    (("hydra.sweeper.delta=-1",), "delta"),
])
def test_seeds_auto_refuses_what_it_cannot_do_in_one_line(tmp_path, args, says):
    r = run_cli("run", "-m", *SEQ, *args, "hydra.sweep.dir=seq", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not (tmp_path / "seq").exists()  # refused before the sweep dir is made


def test_arms_are_labelled_by_what_differs_and_the_reference_is_the_empty_stack():
    jobs = [["+reg=none", "dataset=x"], ["+reg=dropout", "dataset=x"], ["+reg=l2", "dataset=x"]]
    labels = arm_labels(jobs)
    assert list(labels) == ["+reg=none", "+reg=dropout", "+reg=l2"]
    assert pick_reference(labels, None) == "+reg=none"
    assert pick_reference(arm_labels([["reg.l2.lam=1"], ["reg.l2.lam=2"]]), None) == "reg.l2.lam=1"
    assert pick_reference(labels, "+reg=l2") == "+reg=l2"
    from regablate.errors import ConfigError

    with pytest.raises(ConfigError, match="one of the arms"):
        pick_reference(labels, "+reg=l1")


def test_a_designs_reference_makes_each_look_decide_its_contrasts():
    from regablate.errors import ConfigError, UsageError
    from regablate.sweep.designs import ablation_doc, reg_override

    comps = ["dropout", "l2", "label_smoothing"]

    def labels_of(design, *others):
        doc = ablation_doc(design, comps, range(20))
        jobs = [[reg_override(a), "dataset=x", *o] for a in doc["arms"] for o in (others or [()])]
        return arm_labels(jobs), doc

    labels, doc = labels_of("leave_one_out")
    assert design_reference(labels, doc, None) == "+reg=[dropout,l2,label_smoothing]"  # S: S∖c − S
    labels, doc = labels_of("add_one_in")
    assert design_reference(labels, doc, None) == "+reg=none"  # {c} − ∅
    with pytest.raises(ConfigError, match=r"hydra.sweeper.reference='\+reg=dropout': the add_one_in design compares each "
                                          r"arm with '\+reg=none'"):
        design_reference(labels, doc, "+reg=dropout")
    assert design_reference(labels, doc, "+reg=none") == "+reg=none"
    labels, doc = labels_of("factorial")  # its decisions are the main effects; ∅ is a nominal reference
    assert design_reference(labels, doc, None) == "+reg=none"
    with pytest.raises(ConfigError, match="the factorial design decides main effects"):
        design_reference(labels, doc, "+reg=dropout")
    labels, doc = labels_of("leave_one_out", ("optim.lr=0.1",), ("optim.lr=0.01",))
    with pytest.raises(UsageError, match=r"one design's contrasts \(5 arms\), not 10 arms"):
        design_reference(labels, doc, None)


def test_main_effects_per_seed_by_hand():
    from regablate.sweep.seed_rounds import main_effects

    arm_of = {"none": frozenset(), "a": frozenset({"a"}), "b": frozenset({"b"}), "ab": frozenset({"a", "b"})}
    values = {"none": {0: 0.5, 1: 0.6, 2: 0.7}, "a": {0: 0.7, 1: 0.6, 2: 0.9}, "b": {0: 0.5, 1: 0.5, 2: 0.7},
              "ab": {0: 0.9, 1: 0.8}}  # ab lacks seed 2: no seed 2 for any effect
    got, scale = main_effects(values, ["a", "b"], arm_of, "none")
    assert got["none"] == {0: 0.0, 1: 0.0} and scale == 0.9
    assert got["a"] == {0: pytest.approx((0.7 + 0.9) / 2 - (0.5 + 0.5) / 2), 1: pytest.approx((0.6 + 0.8) / 2 - (0.6 + 0.5) / 2)}
    assert got["b"] == {0: pytest.approx((0.5 + 0.9) / 2 - (0.5 + 0.7) / 2), 1: pytest.approx((0.5 + 0.8) / 2 - (0.6 + 0.6) / 2)}


def test_a_factorial_with_seeds_auto_decides_each_main_effect_running_every_arm(tmp_path):
    r = run_cli("run", "-m", "+reg=[dropout,l2]", "reg.dropout.p=0.95", "hydra.sweeper.design=factorial",
                "hydra.sweeper.seeds=auto", "hydra.sweeper.max_seeds=7", *SEQ[3:], "hydra/launcher=vectorized",
                "hydra.sweep.dir=fact", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "fact" / "sequential.json").read_text())
    assert doc["settings"]["contrast"] == "main_effect" and [a["label"] for a in doc["arms"]] == ["dropout", "l2"]
    dropout = doc["arms"][0]
    assert dropout["decision"] == "worse" and dropout["n"] < 7, doc["arms"]
    runs = [json.loads(p.read_text()) for p in (tmp_path / "fact").glob("*/summary.json")]
    by_arm: dict = {}
    for run in runs:
        by_arm.setdefault(tuple(run["reg"]), {})[run["seed"]] = run["val"]["acc"]
    n_run = max(a["n"] for a in doc["arms"])
    assert len(by_arm) == 4 and all(sorted(v) == list(range(n_run)) for v in by_arm.values())  # every arm, every seed
    seeds = range(dropout["n"])  # its deciding look's estimate: the main effect over its seeds, by hand
    with_d = [(by_arm[("dropout",)][s] + by_arm[("dropout", "l2")][s]) / 2 for s in seeds]
    without = [(by_arm[()][s] + by_arm[("l2",)][s]) / 2 for s in seeds]
    assert dropout["delta"] == pytest.approx(sum(w - o for w, o in zip(with_d, without)) / len(with_d))
    assert "seeds=auto look 1 on the main effects: dropout: " in r.stderr
    report = run_cli("report", "fact", cwd=tmp_path)
    assert f"  dropout: worse after {dropout['n']} seeds" in report.stdout and "on the factorial's main effects" in report.stdout
    assert "better: it raises val)" in report.stdout and "(simulated: 0.0499 for 3 components at 0.05)" in report.stdout
