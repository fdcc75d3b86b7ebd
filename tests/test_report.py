"""`regablate report`: collecting, grouping, comparing and every output format."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest
from report_fixtures import DROPOUT, L2, NONE, ablation, report, write_failed_early, write_run
from rich.console import Console
from scipy import stats

from regablate.report.command import main


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """5 seeds each of none / dropout / l2 plus a diverged, a running and a failed run.
    Shared by the tests of this module: copy it before changing it."""
    root = tmp_path_factory.mktemp("sweep") / "multirun"
    where = ablation(root, {"none": NONE, "dropout": DROPOUT, "l2": L2})
    write_run(where / "90", reg=("dropout",), seed=5, status="diverged")
    write_run(where / "91", reg=("dropout",), seed=6, status="running")
    write_run(where / "92", reg=("l2",), seed=7, status="failed")
    return root


def by_name(doc):
    return {g["name"]: g for g in doc["groups"]}


def test_group_statistics_against_scipy(sweep, tmp_path):
    groups = by_name(report(tmp_path, sweep))
    assert list(groups) == ["none", "dropout", "l2"]
    d, base = groups["dropout"], groups["none"]
    assert d["n"] == 5 and d["statuses"] == {"completed": 5, "diverged": 1, "running": 1}
    val = [v for _, v, _ in DROPOUT]
    assert d["val"]["acc"]["mean"] == pytest.approx(0.844)
    assert d["val"]["acc"]["std"] == pytest.approx(stats.tstd(val))
    lo, hi = stats.t.interval(0.95, 4, loc=0.844, scale=stats.sem(val))
    assert d["val"]["acc"]["ci95"] == [pytest.approx(lo), pytest.approx(hi)]
    gaps = [t - v for t, v, _ in DROPOUT]
    assert d["gap"]["mean"] == pytest.approx(sum(gaps) / 5)
    assert d["best_epoch"] == 8
    # same seeds on both sides: a paired test, Holm over the two comparisons
    cmp = d["vs_baseline"]["val_acc"]
    assert cmp["test"] == "paired t-test"
    assert cmp["delta"] == pytest.approx(0.844 - 0.804)
    p_drop = stats.ttest_rel(val, [v for _, v, _ in NONE]).pvalue
    p_l2 = stats.ttest_rel([v for _, v, _ in L2], [v for _, v, _ in NONE]).pvalue
    assert cmp["p"] == pytest.approx(p_drop)
    small, large = sorted([p_drop, p_l2])
    holm = 2 * small if p_drop == small else max(2 * small, large)
    assert cmp["p_holm"] == pytest.approx(min(1.0, holm))
    gap_base = [t - v for t, v, _ in NONE]
    assert d["vs_baseline"]["gap"]["p"] == pytest.approx(stats.ttest_rel(gaps, gap_base).pvalue)
    assert base["vs_baseline"] is None and base["is_baseline"]
    assert d["config"] == {"reg.dropout.p": 0.5, "reg.l2.lam": None}


def test_welch_when_unpaired_and_test_metric(sweep, tmp_path):
    groups = by_name(report(tmp_path, sweep, "--unpaired", "--metric", "test"))
    cmp = groups["l2"]["vs_baseline"]["test_acc"]
    expected = stats.ttest_ind([t for *_, t in L2], [t for *_, t in NONE], equal_var=False)
    assert cmp["test"] == "Welch's t-test" and cmp["p"] == pytest.approx(expected.pvalue)


def test_json_carries_runs_and_extra_keys(tmp_path):
    write_run(tmp_path / "a", seed=0, extra={"ece": 0.031})
    doc = report(tmp_path, tmp_path / "a")
    assert doc["runs"][0]["train"]["ece"] == 0.031 and doc["runs"][0]["status"] == "completed"
    assert doc["groups"][0]["train"]["ece"]["mean"] == pytest.approx(0.031)
    rows = list(csv.DictReader(io.StringIO(report(tmp_path, tmp_path / "a", "--runs", fmt="csv"))))
    assert float(rows[0]["train_ece"]) == 0.031


def test_every_format_parses(sweep, tmp_path):
    rows = list(csv.DictReader(io.StringIO(report(tmp_path, sweep, fmt="csv"))))
    assert [r["name"] for r in rows] == ["none", "dropout", "l2"]
    assert float(rows[1]["val_mean"]) == pytest.approx(0.844)
    assert rows[0]["p"] == "" and 0 < float(rows[1]["p"]) < 1
    md = report(tmp_path, sweep, fmt="markdown").splitlines()
    assert md[0].startswith("| group") and "val acc" in md[0]
    assert set(md[1]) <= set("|:- ") and md[2].startswith("| none")
    tex = report(tmp_path, sweep, fmt="latex")
    assert "\\begin{tabular}" in tex and "\\end{tabular}" in tex and "$\\pm$" in tex
    table = report(tmp_path, sweep, fmt="table")
    assert "dropout" in table and "0.844 ± 0.011" in table
    assert "1 running · 1 diverged · 1 failed" in table


def test_runs_lists_every_status(sweep, tmp_path):
    rows = list(csv.DictReader(io.StringIO(report(tmp_path, sweep, "--runs", fmt="csv"))))
    assert len(rows) == 18
    assert sorted(r["status"] for r in rows if r["status"] != "completed") == \
        ["diverged", "failed", "running"]
    doc = report(tmp_path, sweep, "--runs")
    assert len(doc["runs"]) == 18 and "groups" not in doc


def test_sort_and_filter(sweep, tmp_path):
    rows = list(csv.DictReader(io.StringIO(report(tmp_path, sweep, "--sort", "gap", fmt="csv"))))
    assert [r["name"] for r in rows] == ["dropout", "l2", "none"]
    rows = list(csv.DictReader(io.StringIO(report(tmp_path, sweep, "--sort", "val", fmt="csv"))))
    assert rows[0]["name"] == "dropout"
    doc = report(tmp_path, sweep, "--filter", "reg=dropout")
    assert [g["name"] for g in doc["groups"]] == ["dropout"]
    assert doc["groups"][0]["baseline"] == "none"  # baselines ignore reg filters
    doc = report(tmp_path, sweep, "--filter", "reg=none,l2", "--filter", "seed=0,1,2")
    assert [(g["name"], g["n"]) for g in doc["groups"]] == [("none", 3), ("l2", 3)]
    assert report(tmp_path, sweep, "--filter", "reg.dropout.p=5e-1")["groups"][0]["n"] == 5


def test_filter_by_preset_name(tmp_path):
    for seed in range(2):
        write_run(tmp_path / f"r{seed}", reg=("dropout", "l2"), seed=seed, preset="dropout_l2")
    assert report(tmp_path, tmp_path, "--filter", "reg=dropout_l2")["groups"][0]["n"] == 2
    assert report(tmp_path, tmp_path, "--filter", "reg=l2+dropout")["groups"][0]["n"] == 2


def test_several_baselines_matched_by_settings(tmp_path):
    for lr in (0.1, 0.01):
        for reg in ((), ("dropout",)):
            for seed in range(3):
                write_run(tmp_path / f"{lr}-{len(reg)}-{seed}", reg=reg, seed=seed,
                          val=0.8 + len(reg) * lr, config={"optim": {"lr": lr}})
    groups = by_name(report(tmp_path, tmp_path))
    assert set(groups) == {"none lr=0.1", "none lr=0.01", "dropout lr=0.1", "dropout lr=0.01"}
    assert groups["dropout lr=0.1"]["baseline"] == "none lr=0.1"
    assert groups["dropout lr=0.01"]["vs_baseline"]["val_acc"]["delta"] == pytest.approx(0.01)
    named = by_name(report(tmp_path, tmp_path, "--baseline", "none lr=0.1"))
    assert named["dropout lr=0.01"]["baseline"] == "none lr=0.1"
    assert named["none lr=0.01"]["vs_baseline"]["val_acc"]["delta"] == pytest.approx(0)


def test_small_groups_are_marked(tmp_path):
    for seed in range(2):
        write_run(tmp_path / f"n{seed}", seed=seed)
        write_run(tmp_path / f"d{seed}", reg=("dropout",), seed=seed)
    assert report(tmp_path, tmp_path)["groups"][0]["low_n"]
    md = report(tmp_path, tmp_path, fmt="markdown")
    assert "| 2\\*" in md and "at least 5 seeds" in md


def test_mse_direction_and_highlight(tmp_path):
    from regablate.report.render import best_rows
    from regablate.report.table import Column

    rows = [{"metric": "mse", "higher_is_better": False, "val": 0.5},
            {"metric": "mse", "higher_is_better": False, "val": 0.2},
            {"metric": "acc", "higher_is_better": True, "val": 0.7},
            {"metric": "acc", "higher_is_better": True, "val": 0.9}]
    assert best_rows(Column("val", "", "num", "metric"), rows) == {1, 3}
    write_run(tmp_path / "m0", metric="mse", train=0.1, val=0.3, seed=0)
    write_run(tmp_path / "m1", metric="mse", train=0.2, val=0.3, seed=1)
    g = report(tmp_path, tmp_path)["groups"][0]
    assert g["gap"]["mean"] == pytest.approx(0.15)  # val - train for mse


def test_terminal_table_fits_its_width(sweep, tmp_path):
    from regablate.report.collect import collect
    from regablate.report.render import to_terminal
    from regablate.report.select import assign_baselines, make_groups
    from regablate.report.table import group_report

    groups = make_groups(collect([sweep])[0])
    assign_baselines(groups, groups, None)
    console = Console(width=80, record=True, force_terminal=True)
    to_terminal(group_report(groups, "val", True), console)
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= 80
    assert "hidden to fit the terminal" in text and "0.844 ± 0.011" in text


def test_unreadable_runs_are_skipped_with_a_warning(sweep, tmp_path, capsys):
    sweep = shutil.copytree(sweep, tmp_path / "multirun")
    where = sweep / "2026-11-23" / "10-00-00"
    (where / "0" / "summary.json").write_text("{not json")
    (where / "1" / "metrics.csv").unlink()
    (where / "2" / "metrics.csv").write_text("epoch,train_acc,val_acc\n1,0.5,abc\n")
    (where / "3" / "metrics.csv").write_text("epoch,train_acc,val_acc\n1,0.5\n")
    (where / "4" / "summary.json").unlink()
    (where / "5" / ".hydra" / "config.yaml").write_text("a: [unclosed\n")
    doc = report(tmp_path, sweep)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 6 and all(line.startswith("regablate report: warning: skipped") for line in err)
    for job, why in (("0", "not valid JSON"), ("1", "metrics.csv"), ("2", "not numeric"),
                     ("3", "line 2"), ("4", "no summary.json"), ("5", "config.yaml")):
        assert any(f"10-00-00/{job}:" in line and why in line for line in err), job
    assert list(by_name(doc)) == ["dropout", "l2"]  # every baseline run was unreadable
    assert by_name(doc)["dropout"]["n"] == 4 and by_name(doc)["dropout"]["baseline"] is None
    assert "no baseline group" in " ".join(doc["footer"])
    assert len(doc["skipped"]) == 6


def test_a_run_being_written_is_kept(tmp_path):
    write_run(tmp_path / "done", seed=0)
    path = write_run(tmp_path / "live", seed=1, status="running")
    with open(path / "metrics.csv", "a") as f:
        f.write("11,0.001,0.1")  # half a line
    doc = report(tmp_path, tmp_path)
    assert doc["groups"][0]["statuses"] == {"completed": 1, "running": 1}
    val = doc["groups"][0]["val"]["acc"]
    assert val["n"] == 1 and val["std"] is None  # one completed seed: no spread, no interval
    assert [r["status"] for r in doc["runs"]] == ["completed", "running"]


def test_a_job_that_failed_before_training_is_counted(tmp_path, capsys):
    write_run(tmp_path / "ok", seed=0)
    write_failed_early(tmp_path / "bad", seed=1)
    doc = report(tmp_path, tmp_path)
    assert capsys.readouterr().err == ""
    assert doc["groups"][0]["statuses"] == {"completed": 1, "failed": 1}
    assert doc["groups"][0]["metric"] == "acc"
    runs = report(tmp_path, tmp_path, "--runs", fmt="table")
    assert "failed" in runs and "0 running · 0 diverged · 1 failed" in runs


def test_no_runs_exit_2(tmp_path, capsys, monkeypatch):
    assert main([str(tmp_path)]) == 2
    assert "no runs found" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    assert "no ./multirun or ./outputs" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--format", "xml"], ["--format", "'xml'", "markdown"]),
    (["--metric", "foo"], ["--metric", "'foo'", "train"]),
    (["--filter", "reg"], ["--filter", "'reg'", "KEY=VALUE"]),
    (["--filter", "colour=red"], ["--filter", "'colour'", "optim"]),
    (["--sort", "colour"], ["--sort", "'colour'", "gap"]),
    (["--runs", "--sort", "delta"], ["--sort", "'delta'", "seed"]),
    (["--baseline", "ridge"], ["--baseline", "'ridge'", "'dropout'"]),
    (["--filter", "reg=mixup"], ["--filter", "reg=mixup"]),
])
def test_bad_input_is_one_line_and_exit_2(sweep, capsys, args, words):
    assert main([str(sweep), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err


def _files(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_out_and_plot_never_write_into_a_run_dir_or_over_a_sweeps_records(tmp_path, capsys):
    root = tmp_path / "multirun"
    where = ablation(root, {"none": NONE, "dropout": DROPOUT}, seeds=range(3))
    run = sorted(p.parent for p in where.glob("*/summary.json"))[0]
    before = _files(tmp_path)
    for args, said in (
            (["--format", "csv", "--out", str(run / "summary.json")], f"is inside the run dir {run}"),
            (["--out", str(run / "metrics.csv")], "a run dir holds only what its run wrote"),
            (["--out", str(run / ".hydra" / "config.yaml")], f"is inside the run dir {run}"),
            (["--out", str(run / "new" / "r.md")], f"is inside the run dir {run}"),
            (["--plot", str(run)], f"--plot '{run}' is inside the run dir {run}"),
            (["--plot", str(run / "plots")], "write outside it, e.g. --plot plots"),
            (["--out", str(where / "multirun.yaml")], "is the sweep's own multirun.yaml"),
            (["--out", str(where / "ablation.json")], "is the sweep's own ablation.json")):
        assert main([str(root), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
    assert _files(tmp_path) == before
    (tmp_path / "afile").write_text("mine")
    before = _files(tmp_path)
    for plot in ("afile", "afile/sub"):  # refused before --out is written
        out = tmp_path / "report.md"
        assert main([str(root), "--out", str(out), "--plot", str(tmp_path / plot)]) == 2
        err = capsys.readouterr().err
        assert err == (f"regablate report: error: --plot '{tmp_path / plot}': {tmp_path / 'afile'} "
                       "is a file; --plot names a folder for the figures (made if missing)\n"), err
    assert _files(tmp_path) == before  # nothing written, nothing changed
    # beside the runs, in the sweep root, is where a report goes
    assert main([str(root), "--format", "csv", "--out", str(where / "report.csv")]) == 0
    assert (where / "report.csv").read_text().startswith("name,")


def test_a_sweep_repeated_into_another_dir_is_one_replicate_not_two(tmp_path, capsys):
    """The same configuration on the same seeds twice (a sweep re-run without a fixed
    hydra.sweep.dir) is one replicate: n, the interval and the paired test are one sweep's."""
    one = ablation(tmp_path / "a", {"none": NONE, "dropout": DROPOUT}, seeds=range(3))
    ablation(tmp_path / "b", {"none": NONE, "dropout": DROPOUT}, seeds=range(3))
    alone = report(tmp_path / "a", tmp_path / "a")
    capsys.readouterr()
    both = report(tmp_path, tmp_path / "a", tmp_path / "b")
    err = capsys.readouterr().err
    assert by_name(both) == by_name(alone) and by_name(both)["dropout"]["n"] == 3
    assert err.count("counted once") == 6 and f"a repeat of {one / '0'} (the same configuration and seeds: " \
        "seed=0, data_seed=0)" in err, err
    assert {d["dir"] for d in both["skipped"]} == {str(p.parent) for p in (tmp_path / "b").rglob("summary.json")}
    # a repeat that failed never hides the completed one, whichever is found first
    write_run(tmp_path / "a" / "0-failed", reg=("dropout",), seed=1, status="failed")
    write_run(tmp_path / "a" / "00-rerun", reg=("dropout",), seed=1, val=0.85, status="completed")
    runs = {r["dir"]: r["status"] for r in report(tmp_path, tmp_path / "a", "--runs")["runs"]}
    assert "failed" not in runs.values() and len(runs) == 6  # one per group and seed: the rerun of seed 1 is one replicate
    # within one sweep too (an Optuna study that samples a point twice, a sweep over operational
    # settings): the same seeds are one draw, whatever else differs
    write_run(one / "97", reg=("dropout",), seed=0)
    capsys.readouterr()
    assert by_name(report(tmp_path, one))["dropout"]["n"] == 3
    assert f"skipped {one / '97'}: a repeat of" in capsys.readouterr().err


def test_as_a_user_types_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "regablate", "report", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no runs found" in proc.stderr


def test_package_import_stays_light():
    code = ("import sys, regablate, regablate.report, regablate.report.command; "
            "print([m for m in ('pandas', 'scipy', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


OPERATIONAL_WORDS = ("root", "resume", "progress", "threads", "device", "tensorboard",
                     "checkpoint", "eval_batch_size", "histogram_every", "mc_samples")


def test_operational_settings_split_no_group(tmp_path):
    """Runs written with operational settings in their summary's group id (as before they were
    left out of it) still form one group: the report takes identity from .hydra/config.yaml."""
    how = [{"trainer": {"progress": "none", "threads": 1, "checkpoint": False}},
           {"trainer": {"progress": "auto", "threads": 0, "resume": "auto", "device": "cuda",
                        "tensorboard": False, "eval_batch_size": 512},
            "eval": {"histogram_every": 0, "mc_samples": 20}, "dataset": {"root": "/elsewhere"}}]
    for seed in range(4):
        write_run(tmp_path / f"run{seed}", seed=seed, config=how[seed % 2])
    summaries = {json.loads((tmp_path / f"run{s}" / "summary.json").read_text())["group"]
                 for s in range(4)}
    assert len(summaries) == 2  # the ids on disk differ
    doc = report(tmp_path, tmp_path)
    assert [(g["name"], g["n"], g["config"]) for g in doc["groups"]] == [("none", 4, {})]
    assert doc["groups"][0]["group"] not in summaries
    runs = report(tmp_path, tmp_path, "--runs")["runs"]
    assert {r["group"] for r in runs} == {doc["groups"][0]["group"]}
    assert all(r["config"] == {} for r in runs)  # no operational columns per run either
    one = next(iter(summaries))  # an id from a summary.json still names its group
    assert report(tmp_path, tmp_path, "--filter", f"group={one}")["groups"][0]["n"] == 2


def test_labels_name_only_differing_science_shortest_first(tmp_path):
    cifar = {"dataset": {"name": "cifar10", "root": "/data/cifar10", "val_fraction": 0.1,
                         "n_train": None, "n_ood": 1000}}
    arms = {"a": ((), {}), "b": ((), {"optim": {"lr": 0.01}}), "c": ((), cifar),
            "p3": (("dropout",), {"reg": {"dropout": {"p": 0.3}}}),
            "p5": (("dropout",), {})}
    for i, (arm, (reg, config)) in enumerate(arms.items()):
        # every arm ran with its own operational settings (stable within the arm)
        ops = {"trainer": {"progress": ["none", "auto", "rich", "plain", "none"][i],
                           "threads": i, "resume": ["never", "auto"][i % 2]}}
        for seed in range(2):
            write_run(tmp_path / f"{arm}-{seed}", reg=reg, seed=seed,
                      config={**config, "trainer": ops["trainer"]})
    names = [g["name"] for g in report(tmp_path, tmp_path)["groups"]]
    assert names == ["none lr=0.001 dataset=sparse_synthetic n_train=512",
                     "none lr=0.001 n_ood=1000 dataset=cifar10 n_train=None val_fraction=0.1",
                     "none lr=0.01 dataset=sparse_synthetic n_train=512",
                     "dropout p=0.3", "dropout p=0.5"]
    header = report(tmp_path, tmp_path, fmt="csv").splitlines()[0]
    assert not any(w in n or w in header for w in OPERATIONAL_WORDS for n in names), header


def test_summary_group_kept_when_the_config_cannot_tell(tmp_path):
    """An unresolved ${...} in a science setting reads the same for runs that computed different
    things, and a run without .hydra/config.yaml has nothing to recompute: the summary's id holds."""
    for seed, lr in enumerate((0.1, 0.1, 0.01, 0.01)):
        run = write_run(tmp_path / f"env{seed}", seed=seed, config={"optim": {"lr": lr}})
        cfg = run / ".hydra" / "config.yaml"
        cfg.write_text(cfg.read_text().replace(f"lr: {lr}", "lr: ${oc.env:LR}"))
    bare = write_run(tmp_path / "bare", seed=0, config={"optim": {"lr": 0.5}})
    (bare / ".hydra" / "config.yaml").unlink()
    doc = report(tmp_path, tmp_path)
    ids = {json.loads(p.read_text())["group"] for p in tmp_path.glob("*/summary.json")}
    assert sorted(g["n"] for g in doc["groups"]) == [1, 2, 2]
    assert {g["group"] for g in doc["groups"]} == ids


def test_runs_scored_as_the_final_model_say_their_best_epoch_is_not_the_epoch_scored(tmp_path):
    """Under trainer.restore_best=false a run's metrics are the final epoch's while best_epoch is
    its best val epoch: the table says so in a footnote, and the run's closing line names both."""
    from regablate.training.job import describe

    for seed in range(3):
        for reg in ((), ("dropout",)):
            d = write_run(tmp_path / "m" / f"{seed}{len(reg)}", reg=reg, seed=seed, best_epoch=4, epochs=6)
            if seed < 2:  # scored at the final epoch
                s = json.loads((d / "summary.json").read_text())
                (d / "summary.json").write_text(json.dumps({**s, "metrics_epoch": 6}))
    note = ("4 runs scored at a later epoch than the best (the final model, trainer.restore_best=false): their "
            "metrics are the final epoch's, 'best epoch' their best val epoch")
    for extra in ((), ("--runs",)):  # the groups table and the table of runs
        assert note in " ".join(report(tmp_path, tmp_path / "m", *extra, fmt="table").split()), extra
    s = json.loads((tmp_path / "m" / "00" / "summary.json").read_text())
    assert "metrics at epoch 6/6 (best val epoch 4)  train acc 0.9500" in describe(s, tmp_path)
    assert "best epoch 4/6  train acc" in describe({**s, "metrics_epoch": 4}, tmp_path)
    assert "best epoch 4/6" in describe({k: v for k, v in s.items() if k != "metrics_epoch"}, tmp_path)
