"""Group identity: seeds and operational settings never split a group; science always does."""

from __future__ import annotations

import json

import pytest

from conftest import FAST, compose_cfg, run_cli
from regablate.rundir.group import OPERATIONAL, flatten, group_id

# key -> a value other than the default (dataset.root only exists for cifar10)
CHANGED = {"trainer.device": "cpu", "trainer.threads": 3, "trainer.eval_batch_size": 100,
           "trainer.progress": "none", "trainer.tensorboard": False, "trainer.checkpoint": False,
           "trainer.resume": "auto", "eval.histogram_every": 0, "eval.mc_samples": 30,
           "trainer.objective": "gap", "trainer.checkpoint_every_s": 0}


def test_operational_keys_are_exactly_these_and_exist_in_conf():
    assert sorted(OPERATIONAL) == sorted([*CHANGED, "dataset.root"])
    keys = set(flatten(compose_cfg())) | set(flatten(compose_cfg("dataset=cifar10")))
    assert set(OPERATIONAL) <= keys  # a renamed key would silently re-enter the id


def test_operational_settings_and_seeds_leave_the_id():
    base = group_id(compose_cfg())
    for key, value in CHANGED.items():
        assert group_id(compose_cfg(f"{key}={value}")) == base, key
    assert group_id(compose_cfg("seed=7", "data_seed=3", *(f"{k}={v}" for k, v in CHANGED.items()))) == base
    cifar = group_id(compose_cfg("dataset=cifar10"))
    assert group_id(compose_cfg("dataset=cifar10", "dataset.root=/elsewhere/cifar10")) == cifar != base


@pytest.mark.parametrize("override", ["trainer.amp=true", "eval.calibration_bins=10",
                                      "trainer.restore_best=false", "trainer.early_stopping.patience=3",
                                      "trainer.batch_size=32", "dataset.label_noise=0.1"])
def test_science_changes_the_id(override):
    assert group_id(compose_cfg(override)) != group_id(compose_cfg())


def test_runner_and_report_agree_on_the_id(tmp_path):
    """A real sweep over operational settings only: one id in every summary.json, and the report
    (which recomputes it from .hydra/config.yaml) shows that one group, its four runs of one seed
    counted as one replicate (the same draw four times)."""
    r = run_cli("run", "-m", "trainer.threads=1,2", "trainer.checkpoint=true,false", "dataset.n=200",
                "dataset.n_test=100", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ids = {json.loads(p.read_text())["group"] for p in (tmp_path / "sweep").glob("*/summary.json")}
    r = run_cli("report", "sweep", "--format", "json", "--out", "r.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    groups = json.loads((tmp_path / "r.json").read_text())["groups"]
    assert len(ids) == 1 and [(g["group"], g["n"], g["name"]) for g in groups] == [(ids.pop(), 1, "none")]
    assert r.stderr.count("counted once") == 3
