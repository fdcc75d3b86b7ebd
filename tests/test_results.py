"""regablate.load_runs / load_curves / summarize: frames of run dirs written with known numbers,
and the same numbers as `regablate report`."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import ablation, write_failed_early, write_run
from scipy import stats

import regablate
from regablate.report.command import main
from regablate.report.frames import SkippedRunWarning

NONE = [(0.99, 0.80, 0.79), (0.99, 0.81, 0.80), (0.98, 0.79, 0.78)]
DROPOUT = [(0.95, 0.84, 0.83), (0.95, 0.85, 0.84), (0.94, 0.83, 0.83)]
L2 = [(0.97, 0.81, 0.80), (0.98, 0.83, 0.81), (0.97, 0.80, 0.80)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """3 seeds each of none / dropout / l2, a diverged, a running (with a half-written last
    line) and an early-failed run, a corrupt summary and a dir that never got going.
    Shared: copy it before changing it."""
    root = tmp_path_factory.mktemp("results") / "multirun"
    where = ablation(root, {"none": NONE, "dropout": DROPOUT, "l2": L2}, seeds=range(3))
    write_run(where / "90", reg=("dropout",), seed=5, status="diverged")
    live = write_run(where / "91", reg=("dropout",), seed=6, status="running", epochs=4)
    with open(live / "metrics.csv", "a") as f:
        f.write("5,0.001,0.5")  # being written right now
    write_failed_early(where / "92", reg=("l2",), seed=7)
    (where / "93").mkdir()
    (where / "93" / "summary.json").write_text("{not json")
    (where / "94" / ".hydra").mkdir(parents=True)
    # extra metrics as the trainer writes them: calibration, weight stats, MC dropout
    path = where / "0"
    summary = json.loads((path / "summary.json").read_text())
    summary["val"].update(ece=0.031, nll=0.52)
    summary["test"]["nll"] = 0.55
    summary["weights"] = {"sparsity": 0.25, "l1": 12.5, "l2": 3.0}
    summary["mc"] = {"val": {"mean_std": 0.02}, "samples": 8}
    summary["reliability"] = {"val": {"count": [1, 2], "edges": [0, 0.5, 1]}}
    (path / "summary.json").write_text(json.dumps(summary))
    return root


def quiet(fn, *args, **kw):
    with pytest.warns(SkippedRunWarning):
        return fn(*args, **kw)


def test_load_runs_values_and_dtypes(sweep):
    with pytest.warns(SkippedRunWarning) as caught:
        runs = regablate.load_runs(sweep)
    skipped = sorted(Path(re.search(r"skipped (\S+):", str(w.message))[1]).name for w in caught)
    assert skipped == ["93", "94"]  # one warning each, no crash
    assert len(runs) == 9 and set(runs["status"]) == {"completed"}
    assert list(runs["reg"].cat.categories) == ["none", "dropout", "l2"]  # the report's order
    by = runs.set_index(["reg", "seed"])
    for name, rows in (("none", NONE), ("dropout", DROPOUT), ("l2", L2)):
        for seed, (tr, va, te) in enumerate(rows):
            row = by.loc[(name, seed)]
            assert (row["train_acc"], row["val_acc"], row["test_acc"]) == (tr, va, te)
            assert row["gap"] == pytest.approx(tr - va)
            assert row["label"] == name and row["data_seed"] == 0
    dtypes = runs.dtypes.astype(str)
    assert {c: dtypes[c] for c in ("seed", "best_epoch", "epochs_run", "model.hidden")} == \
        dict.fromkeys(("seed", "best_epoch", "epochs_run", "model.hidden"), "Int64")
    for c in ("status", "group", "label", "dataset", "model", "reg"):
        assert dtypes[c] == "category", c
    for c in ("train_acc", "val_acc", "test_acc", "gap", "val_loss", "reg.dropout.p",
              "optim.lr", "wall_time_s"):
        assert dtypes[c] == "float64", c
    assert dtypes["stopped_early"] == "boolean"
    # absent settings are NA, not 0
    assert by.loc[("dropout", 0), "reg.dropout.p"] == 0.5
    assert pd.isna(by.loc[("none", 0), "reg.dropout.p"]) and pd.isna(by.loc[("l2", 1), "reg.dropout.p"])
    assert by.loc[("l2", 1), "reg.l2.lam"] == 1e-4
    assert runs["optim.lr"].eq(1e-3).all() and runs["trainer.device"].eq("cpu").all()
    # every summary metric, flattened; non-numeric tables left out
    row = by.loc[("none", 0)]
    assert (row["val_ece"], row["val_nll"], row["test_nll"]) == (0.031, 0.52, 0.55)
    assert (row["weights_sparsity"], row["weights_l1"], row["mc_val_mean_std"]) == (0.25, 12.5, 0.02)
    assert row["mc_samples"] == 8 and not any(c.startswith("reliability") for c in runs)
    assert pd.isna(by.loc[("none", 1), "val_ece"])
    assert (row["best_epoch"], row["epochs_run"], row["warnings"]) == (8, 10, "")
    assert runs["run_dir"].map(lambda d: Path(d).is_dir()).all()


def test_load_runs_every_status(sweep):
    runs = quiet(regablate.load_runs, sweep, status=None)
    assert runs["status"].value_counts().to_dict() == {
        "completed": 9, "running": 1, "diverged": 1, "failed": 1}
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert failed["error"] == "ConfigError: p=2" and pd.isna(failed["val_acc"])
    assert failed["label"] == "l2" and failed["seed"] == 7
    assert quiet(regablate.load_runs, sweep, status="running")["seed"].tolist() == [6]
    both = quiet(regablate.load_runs, sweep, sweep / "2026-11-23", status=None)
    assert len(both) == 12  # overlapping paths: each run once


def test_load_runs_example_from_the_issue(sweep):
    runs = quiet(regablate.load_runs, sweep)
    gaps = runs.groupby("reg", observed=True)["gap"].describe()
    assert gaps.loc["dropout", "mean"] == pytest.approx(sum(t - v for t, v, _ in DROPOUT) / 3)
    assert gaps.loc["none", "count"] == 3


def test_load_curves_long_by_run(sweep):
    curves = quiet(regablate.load_curves, sweep)
    assert list(curves.columns[:8]) == ["run_dir", "status", "group", "label", "reg", "seed",
                                        "data_seed", "epoch"]
    assert "weights_norm" in curves and "weights/norm" not in curves and str(curves["epoch"].dtype) == "Int64"
    per_run = curves.groupby("run_dir")["epoch"].max()
    assert len(per_run) == 11  # 9 completed, diverged, running (the early failure has none)
    live = curves[curves["status"] == "running"]
    assert live["epoch"].tolist() == [1, 2, 3, 4]  # the half-written 5th line is dropped
    d0 = curves.query("reg == 'dropout' and seed == 0")
    assert d0["val_acc"].tolist() == pytest.approx([0.84 * e / 10 for e in range(1, 11)])
    table = curves.query("reg == 'dropout' and status == 'completed'").pivot_table(
        index="epoch", columns="seed", values="val_acc")
    assert table.shape == (10, 3)
    done = quiet(regablate.load_curves, sweep, status="completed")
    assert set(done["status"]) == {"completed"} and len(done) == 90


def _report_csv(tmp_path, *args) -> pd.DataFrame:
    out = tmp_path / "r.csv"
    assert main([*map(str, args), "--format", "csv", "--out", str(out)]) == 0
    return pd.read_csv(out)


NUMBERS = ["n", *(f"{s}_{f}" for s in ("train", "val", "test", "gap")
               for f in ("mean", "std", "ci_low", "ci_high", "n")),
           "best_epoch", "delta", "p", "delta_gap", "p_gap", "p_raw", "p_gap_raw"]


@pytest.mark.parametrize("args", [dict(), dict(metric="test", paired=False)])
def test_summarize_is_the_reports_table(sweep, tmp_path, args):
    runs = quiet(regablate.load_runs, sweep, status=None)
    table = regablate.summarize(runs, **args)
    flags = (["--metric", args["metric"], "--unpaired"] if args else [])
    csv = _report_csv(tmp_path, sweep, *flags)
    assert table["label"].tolist() == csv["name"].tolist() == ["none", "dropout", "l2"]
    pd.testing.assert_frame_equal(table[NUMBERS], csv[NUMBERS], check_dtype=False)
    assert table["method"].fillna("").tolist() == csv["method"].fillna("").tolist()
    assert table["not_averaged"].tolist() == ["", "1 running, 1 diverged", "1 failed"]
    assert table["is_baseline"].tolist() == [True, False, False]
    assert table["baseline"].tolist()[1:] == ["none", "none"]


def test_summarize_against_scipy_and_after_filtering(sweep, tmp_path):
    runs = quiet(regablate.load_runs, sweep)
    table = regablate.summarize(runs, metric="val", baseline="none").set_index("label")
    val = [v for _, v, _ in DROPOUT]
    base = [v for _, v, _ in NONE]
    d = table.loc["dropout"]
    assert d["val_mean"] == pytest.approx(0.84) and d["val_std"] == pytest.approx(stats.tstd(val))
    lo, hi = stats.t.interval(0.95, 2, loc=0.84, scale=stats.sem(val))
    assert (d["val_ci_low"], d["val_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert d["method"] == "paired t-test"
    # dropout is 0.04 above the baseline at every seed: no spread, no p (scipy's is 0.0)
    assert pd.isna(d["p_raw"]) and d["p_reason"] == "differences equal up to float rounding"
    l2 = [v for _, v, _ in L2]
    assert table.loc["l2", "p_raw"] == pytest.approx(stats.ttest_rel(l2, base).pvalue)
    # filter in pandas: Holm over one comparison, as `report --filter reg=none,l2`
    two = regablate.summarize(runs[runs["reg"] != "dropout"])
    csv = _report_csv(tmp_path, sweep, "--filter", "reg=none,l2")
    assert two["label"].tolist() == ["none", "l2"]
    assert two["p"].iloc[1] == pytest.approx(stats.ttest_rel(l2, base).pvalue)
    pd.testing.assert_frame_equal(two[NUMBERS], csv[NUMBERS], check_dtype=False)
    welch = regablate.summarize(runs, paired=False).set_index("label")
    assert welch.loc["dropout", "p_raw"] == pytest.approx(
        stats.ttest_ind(val, base, equal_var=False).pvalue)
    with pytest.raises(ValueError, match="metric"):
        regablate.summarize(runs, metric="vall")
    with pytest.raises(ValueError, match="no such group"):
        regablate.summarize(runs, baseline="nothing")


def test_settings_that_tell_groups_apart_are_labels_and_columns(tmp_path):
    for lr in (0.01, 0.1):
        for reg in ((), ("l2",)):
            for seed in range(2):
                write_run(tmp_path / f"{lr}-{len(reg)}-{seed}", reg=reg, seed=seed,
                          val=0.8 + len(reg) * lr, config={"optim": {"lr": lr}})
    runs = regablate.load_runs(tmp_path)
    assert sorted(set(runs["label"])) == ["l2 lr=0.01", "l2 lr=0.1", "none lr=0.01",
                                          "none lr=0.1"]
    table = regablate.summarize(runs).set_index("label")
    assert table.loc["l2 lr=0.1", "baseline"] == "none lr=0.1"  # matched by settings
    assert table.loc["l2 lr=0.1", "delta"] == pytest.approx(0.1)
    assert table.loc["l2 lr=0.01", "optim.lr"] == 0.01


def test_missing_path_and_empty_frames(tmp_path):
    with pytest.raises(FileNotFoundError):
        regablate.load_runs(tmp_path / "nowhere")
    assert regablate.load_runs(tmp_path).empty
    assert regablate.load_curves(tmp_path).empty


def test_import_regablate_and_run_stay_free_of_pandas():
    code = ("import sys, regablate, regablate.cli.run, regablate.cli, regablate.report.command; "
            "assert callable(regablate.load_runs) and callable(regablate.summarize); "
            "print([m for m in ('pandas', 'pyarrow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_help_lists_the_api():
    out = subprocess.run([sys.executable, "-c", "import regablate; help(regablate)"],
                         capture_output=True, text=True, env={**os.environ, "PAGER": "cat"})
    for name in ("load_runs", "load_curves", "summarize"):
        assert name in out.stdout


def test_piped_table_honours_columns(sweep):
    def table(**env):
        proc = subprocess.run([sys.executable, "-m", "regablate", "report", str(sweep)],
                              capture_output=True, text=True,
                              env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    narrow = table(COLUMNS="100")
    assert max(map(len, narrow)) <= 100 and any("hidden to fit" in line for line in narrow)
    assert "0.840 ± 0.010" in "\n".join(narrow)  # val mean ± std of dropout still shown
    full = table(COLUMNS=None)
    assert max(map(len, full)) > 100 and not any("hidden to fit" in line for line in full)


def test_parquet_is_the_api_frame(sweep, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "t.parquet"
    with pytest.warns(SkippedRunWarning):
        expected = regablate.summarize(regablate.load_runs(sweep, status=None))
    assert main([str(sweep), "--format", "parquet", "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected, check_dtype=False)
    assert main([str(sweep), "--runs", "--format", "parquet", "--out", str(out)]) == 0
    assert len(pd.read_parquet(out)) == 12


def test_parquet_without_pyarrow_says_how(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main([str(sweep), "--format", "parquet", "--out", str(tmp_path / "t.pq")]) == 2
    assert "regablate[parquet]" in capsys.readouterr().err
    assert main([str(sweep), "--format", "parquet"]) == 2
    assert "--out" in capsys.readouterr().err.splitlines()[-1]


def test_readme_example_runs_as_written(sweep, tmp_path, monkeypatch):
    """The "Results in Python" section's code, on a sweep at the path it names."""
    import matplotlib

    matplotlib.use("Agg")
    readme = (Path(__file__).resolve().parents[1] / "docs" / "report.md").read_text()
    section = readme.split("## Results in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    where = re.search(r'load_runs\("([^"]+)"\)', code)[1]
    monkeypatch.chdir(tmp_path)
    ablation(tmp_path / "multirun", {"none": NONE, "dropout": DROPOUT, "l2": L2},
             seeds=range(3))
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "multirun" / "2026-11-23" / "10-00-00").rename(tmp_path / where)
    with io.StringIO() as buf:
        sys_stdout, sys.stdout = sys.stdout, buf
        try:
            exec(compile(code, "docs/report.md", "exec"), {})
        finally:
            sys.stdout = sys_stdout
