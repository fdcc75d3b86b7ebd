"""Honest small-n statistics in `regablate report` and `regablate.summarize`: no p below 3
seeds or from differences whose spread is float rounding (the footnote says why), `--test`,
and the sign-flip test's floor."""

from __future__ import annotations

import math
import warnings

import pytest
from report_fixtures import DROPOUT, NONE, ablation, report, write_run
from scipy import stats

import regablate
from regablate.report.command import main

# The case: a custom model scored on 144 val images; dropout is right on exactly 2 more
# images than the baseline at every seed.
CUSTOM = {"model": {"name": "custom", "target": "mypkg.nets:Net"},
          "dataset": {"name": "image_folder", "n_val": 144}}
BASE_VAL = (98, 100, 117)


def _custom_sweep(root, seeds):
    for seed in range(seeds):
        for reg, extra in (((), 0), (("dropout",), 2)):
            write_run(root / f"{seed}-{len(reg)}", reg=reg, seed=seed, train=140 / 144,
                      val=(BASE_VAL[seed] + extra) / 144, test=0.7, config=CUSTOM)
    return root


def _report(tmp_path, *args, fmt="table"):
    return report(tmp_path, *args, fmt=fmt)


def _summarize(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = regablate.load_runs(path)
    return regablate.summarize(runs, **kw).set_index("label")


def _row(table: str, name: str) -> list[str]:
    return next(line for line in table.splitlines() if line.startswith(name + " ")).split()


@pytest.mark.parametrize("test", ["t", "signflip", "wilcoxon"])
def test_two_seeds_two_images_apart_give_no_p(tmp_path, test):
    # before: paired t-test p = 2.5e-15 (printed "<0.001") from two equal differences
    root = _custom_sweep(tmp_path / "multirun", seeds=2)
    table = _report(tmp_path, root, "--test", test)
    row = _row(table, "dropout")
    assert "<0.001" not in table
    assert row[-5:] == ["+0.014", "–", "-0.014", "–", "0"]  # Δ val, p, Δ gap, p gap, warnings
    assert "no significance test" in table
    assert "no p for dropout: fewer than 3 seeds (n = 2)" in table
    doc = _report(tmp_path, root, "--test", test, fmt="json")
    cmp = next(g for g in doc["groups"] if g["name"] == "dropout")["vs_baseline"]
    for entry in cmp.values():
        assert entry["p"] is None and entry["p_holm"] is None and entry["test"] is None
        assert entry["reason"] == "fewer than 3 seeds (n = 2)"
        assert entry["delta"] == pytest.approx(2 / 144 * (1 if entry is cmp["val_acc"] else -1))
    s = _summarize(root, test=test).loc["dropout"]
    assert math.isnan(s["p_raw"]) and math.isnan(s["p"]) and s["method"] is None
    assert s["p_reason"] == "fewer than 3 seeds (n = 2)"


@pytest.mark.parametrize("test", ["t", "signflip", "wilcoxon"])
def test_three_seeds_with_equal_differences_give_no_p(tmp_path, test):
    root = _custom_sweep(tmp_path / "multirun", seeds=3)
    table = _report(tmp_path, root, "--test", test)
    assert _row(table, "dropout")[-5:] == ["+0.014", "–", "-0.014", "–", "0"]
    assert "no p for dropout: differences equal up to float rounding" in table
    name = {"t": "paired t-test", "signflip": "paired sign-flip permutation test",
            "wilcoxon": "Wilcoxon signed-rank test"}[test]
    assert f"minus baseline 'none'; {name}, two-sided\n" in table  # no Holm: nothing to adjust
    s = _summarize(root, test=test).loc["dropout"]
    assert math.isnan(s["p_raw"]) and s["method"] == name
    assert s["p_reason"] == s["p_gap_reason"] == "differences equal up to float rounding"
    csv = _report(tmp_path, root, "--test", test, fmt="csv")
    assert ",method_gap,p_reason,p_gap_reason" in csv.splitlines()[0]


def test_signflip_floor_binds_at_five_seeds(tmp_path):
    root = ablation(tmp_path / "multirun", {"none": NONE, "dropout": DROPOUT})
    doc = _report(tmp_path, root, "--test", "signflip", fmt="json")
    cmp = next(g for g in doc["groups"] if g["name"] == "dropout")["vs_baseline"]["val_acc"]
    assert cmp["p"] == 1 / 16 and cmp["floor"] == 1 / 16  # every seed better: the floor
    assert cmp["test"] == "paired sign-flip permutation test" and "reason" not in cmp
    table = _report(tmp_path, root, "--test", "signflip")
    assert _row(table, "dropout")[-4] == "0.062"
    assert "minus baseline 'none'; paired sign-flip permutation test, two-sided, " \
           "Holm-adjusted over 1 comparison" in table
    assert "p at its floor for dropout: the paired sign-flip permutation test cannot give a " \
           "two-sided p below 1/16 = 0.0625 with these seeds (2/2^n, at n seeds); more seeds " \
           "can" in table
    s = _summarize(root, test="signflip").loc["dropout"]
    assert s["p_raw"] == s["p_floor"] == 1 / 16 and s["method"] == cmp["test"]
    t = _report(tmp_path, root)  # the t-test has no floor: no such line
    assert "floor" not in t and "paired t-test, two-sided" in t


def test_wilcoxon_through_the_report(tmp_path):
    root = ablation(tmp_path / "multirun", {"none": NONE, "dropout": DROPOUT})
    doc = _report(tmp_path, root, "--test", "wilcoxon", fmt="json")
    cmp = next(g for g in doc["groups"] if g["name"] == "dropout")["vs_baseline"]["val_acc"]
    d = [v - b for (_, v, _), (_, b, _) in zip(DROPOUT, NONE, strict=True)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cmp["p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert cmp["test"] == "Wilcoxon signed-rank test"
    table = _report(tmp_path, root, "--test", "wilcoxon")
    assert "p at its floor for dropout: the Wilcoxon signed-rank test cannot give a two-sided p " \
           "below 1/16 = 0.0625 with these seeds (2/2^n, n the seeds whose difference is not " \
           "0); more seeds can" in table


def test_one_seed_against_the_baseline_runs_no_test(tmp_path):
    root = tmp_path / "multirun"
    for seed in range(3):
        write_run(root / f"b{seed}", seed=seed, val=0.8 + 0.01 * seed)
    write_run(root / "d0", reg=("dropout",), seed=0, val=0.9)
    table = _report(tmp_path, root)
    assert "no p for dropout: fewer than 3 seeds (n = 1)" in table and "no significance test" in table


def test_paired_tests_need_the_baselines_seeds(tmp_path):
    root = tmp_path / "multirun"
    for seed in range(4):
        write_run(root / f"b{seed}", seed=seed, val=0.8 + 0.01 * seed)
        write_run(root / f"d{seed}", reg=("dropout",), seed=seed + 10, val=0.85 + 0.02 * seed)
    table = _report(tmp_path, root, "--test", "signflip")
    assert "no p for dropout: the paired sign-flip permutation test needs at least 3 of the " \
           "baseline's seeds (0 seeds in common)" in table
    assert "Welch's t-test, two-sided" in _report(tmp_path, root)  # t falls back to Welch's


def test_groups_that_share_three_seeds_are_paired_over_those(tmp_path):
    root = tmp_path / "multirun"
    for seed in range(5):
        write_run(root / f"b{seed}", seed=seed, val=0.8 + 0.01 * seed)
    for seed in range(3):
        write_run(root / f"d{seed}", reg=("dropout",), seed=seed, val=0.85 + 0.012 * seed)
    table = _report(tmp_path, root)
    assert "paired t-test, two-sided" in table and "Welch" not in table
    assert "Δ and p over the seeds both ran, paired: dropout (3 of its 3, none's 5)" in table


def test_unpaired_with_a_paired_test_is_refused(tmp_path, capsys):
    root = ablation(tmp_path / "multirun", {"none": NONE, "dropout": DROPOUT})
    assert main([str(root), "--unpaired", "--test", "signflip"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--unpaired" in err and "signflip" in err
    assert main([str(root), "--test", "sign"]) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = regablate.load_runs(root)
    with pytest.raises(ValueError, match="allowed: t, signflip, wilcoxon"):
        regablate.summarize(runs, test="sign")
    with pytest.raises(ValueError, match="paired"):
        regablate.summarize(runs, paired=False, test="wilcoxon")


def test_welch_with_one_constant_group_keeps_its_p(tmp_path):
    root = tmp_path / "multirun"
    for seed in range(3):
        write_run(root / f"b{seed}", seed=seed, val=0.8)  # constant baseline
        write_run(root / f"d{seed}", reg=("dropout",), seed=seed, val=0.82 + 0.01 * seed)
    s = _summarize(root, paired=False).loc["dropout"]
    assert s["method"] == "Welch's t-test"
    assert s["p_raw"] == pytest.approx(stats.ttest_1samp([0.82, 0.83, 0.84], 0.8).pvalue)
