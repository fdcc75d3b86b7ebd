"""load_runs / load_curves read like the report: one name for one thing in both frames, list
settings as lists, an Optuna sweep's trial and objective, labels with floats to 4 significant
digits wherever a label is shown, metrics.csv's `train_objective` (the old `objective` still
read), and the small things a first report shows (a best epoch `12`, a baseline-only sweep)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
from report_fixtures import write_run

import regablate
from regablate.report.command import main
from regablate.report.frames import SkippedRunWarning
from regablate.report.select import make_groups

LAMS = (0.00012345678901234, 0.0123456789012345)


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedRunWarning)
        return fn(*args, **kw)


def _with_weights(path: Path, sparsity: float) -> None:
    """A summary with the trainer's weight statistics, metrics.csv with its weights/ columns."""
    s = json.loads((path / "summary.json").read_text())
    s["weights"] = {"norm": 4.0, "sparsity": sparsity}
    (path / "summary.json").write_text(json.dumps(s))
    rows = list(csv.reader(open(path / "metrics.csv")))
    rows[0].append("weights/sparsity")
    for r in rows[1:]:
        r.append(str(sparsity))
    with open(path / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_runs_and_curves_name_weight_statistics_alike(tmp_path):
    _with_weights(write_run(tmp_path / "r0"), 0.25)
    runs, curves = _quiet(regablate.load_runs, tmp_path), _quiet(regablate.load_curves, tmp_path)
    for name in ("weights_norm", "weights_sparsity"):
        assert name in runs and name in curves, name
    assert not [c for c in curves if "/" in c]
    assert curves["weights_sparsity"].iloc[-1] == runs["weights_sparsity"].iloc[0] == 0.25


def test_list_settings_are_lists(tmp_path):
    for seed in range(3):
        write_run(tmp_path / f"a{seed}", seed=seed, config={"model": {"hidden": [128, 64]}})
        write_run(tmp_path / f"b{seed}", seed=seed, reg=("dropout",),
                  config={"model": {"hidden": [128, 64]}})
    runs = _quiet(regablate.load_runs, tmp_path)
    assert all(v == [128, 64] for v in runs["model.hidden"])
    table = regablate.summarize(runs)  # lists back into the report's records: the same numbers
    assert list(table["label"]) == ["none", "dropout"] and list(table["n"]) == [3, 3]


def test_list_settings_that_tell_groups_apart(tmp_path):
    for hidden in ([64], [128, 64]):
        for seed in range(2):
            write_run(tmp_path / f"{len(hidden)}-{seed}", seed=seed,
                      config={"model": {"hidden": hidden}})
    runs = _quiet(regablate.load_runs, tmp_path)
    assert sorted(map(tuple, runs["model.hidden"])) == [(64,), (64,), (128, 64), (128, 64)]
    table = regablate.summarize(runs)
    assert sorted(table["label"]) == ["none hidden=[128, 64]", "none hidden=[64]"]


def _study(tmp_path: Path) -> Path:
    """An Optuna sweep dir: trial_<n>/seed_<s> run dirs and the sweeper's optuna_study.json."""
    sweep = tmp_path / "study"
    for trial, lam in enumerate(LAMS):
        for seed in range(2):
            write_run(sweep / f"trial_{trial}" / f"seed_{seed}", reg=("l2",), seed=seed,
                      reg_settings={"l2": {"lam": lam}})
    trials = [{"number": n, "state": "COMPLETE", "params": {"reg.l2.lam": lam}, "value": 0.4,
               "values": [0.4, 0.4], "statuses": ["completed"] * 2, "seeds": [0, 1],
               "dir": f"trial_{n}"} for n, lam in enumerate(LAMS)]
    (sweep / "optuna_study.json").write_text(json.dumps({
        "schema": 1, "study_name": "s", "storage": None, "sampler": "tpe",
        "objective": "val_loss+0.5*gap", "direction": "minimize", "seeds": 2, "n_trials": 2,
        "log_params": {"reg.l2.lam": True}, "best": 0, "trials": trials}))
    return sweep


def test_a_studys_rows_carry_trial_and_objective(tmp_path):
    sweep = _study(tmp_path)
    runs = _quiet(regablate.load_runs, tmp_path)  # the study found from its run dirs
    by = runs.sort_values(["trial", "seed"])
    assert list(by["trial"]) == [0, 0, 1, 1] and str(runs["trial"].dtype) == "Int64"
    assert list(by["objective"]) == pytest.approx([0.4 + 0.5 * (0.95 - 0.85)] * 4)
    curves = _quiet(regablate.load_curves, sweep)
    assert sorted(set(curves["trial"])) == [0, 1]
    plain = tmp_path / "plain"
    write_run(plain / "0")
    assert "trial" not in _quiet(regablate.load_runs, plain)  # no study, no such columns


def test_labels_show_floats_to_four_significant_digits(tmp_path, capsys, monkeypatch):
    sweep = _study(tmp_path)
    want = ["l2 lam=0.0001235", "l2 lam=0.01235"]
    runs = _quiet(regablate.load_runs, sweep)
    assert sorted(runs["label"].unique()) == want
    from regablate.report.collect import collect

    assert sorted(g.name for g in make_groups(collect([sweep])[0])) == want  # plots, tb
    monkeypatch.chdir(tmp_path)
    assert main([str(sweep), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(g["name"].removeprefix("★ ") for g in doc["groups"]) == want


def test_label_formatting_keeps_ints_texts_and_short_floats(tmp_path):
    for lr in (0.01, 0.1, 1e-07):
        write_run(tmp_path / str(lr), config={"optim": {"lr": lr}})
    for depth in (2, 3):
        write_run(tmp_path / f"d{depth}", reg=("dropout",), config={"model": {"depth": depth}})
    from regablate.report.collect import collect

    names = sorted(g.name for g in make_groups(collect([tmp_path])[0]))
    assert names == ["dropout depth=2", "dropout depth=3", "none lr=0.01", "none lr=0.1",
                     "none lr=1e-07"]


def _old_run(path: Path) -> Path:
    """A run written before metrics.csv's `objective` was named `train_objective`."""
    path = write_run(path)
    rows = list(csv.reader(open(path / "metrics.csv")))
    rows[0].append("objective")
    for r in rows[1:]:
        r.append("0.5")
    with open(path / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_old_objective_column_reads_as_train_objective(tmp_path):
    _old_run(tmp_path / "old")
    curves = _quiet(regablate.load_curves, tmp_path)
    assert "objective" not in curves and set(curves["train_objective"]) == {0.5}


def test_the_trainer_writes_train_objective(small_cfg, tmp_path):
    from regablate.training.loop import train

    train(small_cfg("+reg=l2", "trainer.max_epochs=2"), tmp_path)
    header = next(csv.reader(open(tmp_path / "metrics.csv")))
    assert "train_objective" in header and "objective" not in header


def test_the_vectorized_trainer_writes_train_objective(small_cfg, tmp_path):
    from regablate.training.settings import load_settings
    from regablate.vectorized.grouping import group, make_member
    from regablate.vectorized.trainer import VectorizedTrainer

    cfgs = [small_cfg("+reg=l2", f"seed={i}", "trainer.max_epochs=2") for i in range(2)]
    (grp,) = group([make_member(i, c, tmp_path / f"v{i}", load_settings(c))
                    for i, c in enumerate(cfgs)])
    VectorizedTrainer(grp).fit()
    header = next(csv.reader(open(tmp_path / "v0" / "metrics.csv")))
    assert "train_objective" in header and "objective" not in header


def test_a_whole_best_epoch_prints_without_decimals(tmp_path, capsys, monkeypatch):
    write_run(tmp_path / "0", best_epoch=12)
    write_run(tmp_path / "1", reg=("dropout",), best_epoch=12)
    write_run(tmp_path / "2", reg=("dropout",), seed=1, best_epoch=13)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")  # the whole table: a narrow one drops the best epoch first
    assert main([".", "--format", "table"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("none", "dropout"))}
    assert " 12 " in rows["none"] and "12.0" not in rows["none"]
    assert " 12.5 " in rows["dropout"]


def test_a_baseline_only_sweep_says_there_is_nothing_to_compare(tmp_path, capsys, monkeypatch):
    for seed in range(3):
        write_run(tmp_path / str(seed), seed=seed)
    monkeypatch.chdir(tmp_path)
    assert main([".", "--format", "json"]) == 0
    footer = " ".join(json.loads(capsys.readouterr().out)["footer"])
    assert "no baseline group" not in footer
    assert "nothing to compare the baseline" in footer
