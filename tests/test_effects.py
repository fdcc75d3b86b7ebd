"""regablate.effects: each kind computed by hand from generated run dirs (to 1e-12), Shapley
efficiency per seed, nominal coverage of a component that does nothing (simulated), unbalanced
data, cells, and no p-value the data cannot carry."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import regablate
from regablate.errors import ConfigError, UsageError
from regablate.report.designs import arms
from regablate.report.effects import KINDS, contrasts, summarise
from regablate.report.stats import holm
from regablate.sweep.designs import write_ablation_json
from tests.report_fixtures import write_run

S3 = ("dropout", "l2", "weight_decay")
SEEDS = range(5)
TOL = 1e-12


def _table(arm_list, seeds, rng, base=0.8):
    """{(arm frozenset, seed): value}: a seed block effect plus arbitrary arm effects."""
    block = {s: rng.normal(0, 0.02) for s in seeds}
    return {(frozenset(a), s): round(base + block[s] + rng.normal(0, 0.03), 6)
            for a in arm_list for s in seeds}


def _write(root, values, *, skip=(), status=None, **kw):
    """One run dir per (arm, seed); `skip` leaves runs out, `status` marks some failed."""
    job = 0
    for (arm, seed), v in values.items():
        if (arm, seed) in skip:
            continue
        st = (status or {}).get((arm, seed), "completed")
        write_run(root / str(job), reg=tuple(sorted(arm)), seed=seed, val=v, test=v - 0.01,
                  train=min(v + 0.1, 1.0), status=st, **kw)
        job += 1
    return root


def _hand(per_seed: dict) -> dict:
    """Mean, t interval, one-sample t-test p from {seed: contrast}, the plain scipy way."""
    d = np.array(list(per_seed.values()))
    n = len(d)
    out = {"delta": d.mean(), "n": n, "lo": math.nan, "hi": math.nan, "p": math.nan}
    if n >= 2:
        out["lo"], out["hi"] = stats.t.interval(0.95, n - 1, loc=d.mean(), scale=stats.sem(d))
    if n >= 3:
        out["p"] = stats.ttest_1samp(d, 0.0).pvalue
    return out


def _close(row, want):
    for key in ("delta", "lo", "hi", "p"):
        a, b = float(row[key]), float(want[key])
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL, (key, a, b)
    assert int(row["n"]) == want["n"]


def _row(table, kind, component):
    rows = table[(table.kind == kind) & (table.component == component)]
    assert len(rows) == 1, (kind, component, table)
    return rows.iloc[0]


def _subsets(items):
    items = tuple(items)
    return [frozenset(a) for r in range(len(items) + 1) for a in itertools.combinations(items, r)]


def _by_hand(v, comps, seeds):
    """Every kind by its textbook formula: {(kind, component): {seed: contrast}}."""
    S, none, k = frozenset(comps), frozenset(), len(comps)
    out = {}
    for c in comps:
        out["leave_one_out", c] = {s: v[S, s] - v[S - {c}, s] for s in seeds}
        out["add_one_in", c] = {s: v[frozenset({c}), s] - v[none, s] for s in seeds}
        out["main", c] = {s: np.mean([v[a, s] for a in _subsets(comps) if c in a])
                          - np.mean([v[a, s] for a in _subsets(comps) if c not in a])
                          for s in seeds}
        out["shapley", c] = {s: sum(math.factorial(len(a)) * math.factorial(k - len(a) - 1)
                                    / math.factorial(k) * (v[a | {c}, s] - v[a, s])
                                    for a in _subsets(S - {c})) for s in seeds}
    for c, d in itertools.combinations(comps, 2):
        rest = S - {c, d}
        out["interaction", f"{c}×{d}"] = {
            s: np.mean([v[b | {c, d}, s] - v[b | {c}, s] - v[b | {d}, s] + v[b, s]
                        for b in _subsets(rest)]) for s in seeds}
    return out


@pytest.fixture
def factorial3(tmp_path):
    rng = np.random.default_rng(1)
    values = _table(arms("factorial", S3), SEEDS, rng)
    return _write(tmp_path / "sweep", values), values


def test_factorial_every_kind_by_hand(factorial3):
    root, v = factorial3
    table = regablate.effects(regablate.load_runs(root))
    assert list(table.columns) == ["component", "kind", "delta", "lo", "hi", "p", "p_holm", "n",
                                   "reason", "design", "metric", "higher_is_better"]
    assert table.reason.isna().all() and (table.attrs["level"], table.attrs["test"]) == (0.95, "t")
    (whole,) = table.attrs["totals"]  # v(S) − v(∅), the gain the Shapley values split
    by_seed = [v[frozenset(S3), s] - v[frozenset(), s] for s in SEEDS]
    assert whole["n"] == len(SEEDS) and abs(whole["delta"] - np.mean(by_seed)) < 1e-12
    assert whole["lo"] < whole["delta"] < whole["hi"]
    assert list(dict.fromkeys(table.kind)) == list(KINDS)
    assert set(table.design) == {"factorial"} and set(table.metric) == {"val_acc"}
    assert table.higher_is_better.all()
    hand = _by_hand(v, S3, SEEDS)
    assert len(table) == len(hand) == 4 * 3 + 3
    for (kind, comp), per_seed in hand.items():
        _close(_row(table, kind, comp), _hand(per_seed))
    for kind in KINDS:  # Holm over each kind's family
        fam = table[table.kind == kind]
        assert np.allclose(fam.p_holm, holm(list(fam.p)), rtol=0, atol=TOL)
    assert _row(table, "interaction", "dropout×l2") is not None


def test_shapley_shares_add_up_to_the_whole_gain(factorial3):
    root, v = factorial3
    table = regablate.effects(regablate.load_runs(root))
    gain = np.mean([v[frozenset(S3), s] - v[frozenset(), s] for s in SEEDS])
    assert abs(table[table.kind == "shapley"].delta.sum() - gain) <= TOL
    rng = np.random.default_rng(7)
    for k in range(2, 9):  # per seed, exactly: Σ_c φ_c = v(S) − v(∅)
        comps = [f"r{i}" for i in range(k)]
        value = {frozenset(a): rng.normal() for a in arms("factorial", comps)}
        phis = [sum(w * value[a] for a, w in c.weights.items())
                for c in contrasts("factorial", comps) if c.kind == "shapley"]
        assert abs(sum(phis) - (value[frozenset(comps)] - value[frozenset()])) <= TOL


def test_other_metrics_and_orientation(tmp_path):
    rng = np.random.default_rng(2)
    v = _table(arms("factorial", S3[:2]), SEEDS, rng, base=0.3)
    root = _write(tmp_path / "sweep", v, metric="mse")
    runs = regablate.load_runs(root)
    for metric, shift in (("val", 0.0), ("test", -0.01)):
        table = regablate.effects(runs, metric=metric)
        assert set(table.metric) == {f"{metric}_mse"} and not table.higher_is_better.any()
        vv = {key: x + shift for key, x in v.items()}
        for (kind, comp), per_seed in _by_hand(vv, S3[:2], SEEDS).items():
            _close(_row(table, kind, comp), _hand(per_seed))
    gap = regablate.effects(runs, metric="gap")  # mse gap: val − train = v − (v + 0.1)
    assert set(gap.metric) == {"gap"}
    assert np.allclose(gap[gap.kind == "leave_one_out"].delta, 0.0, atol=1e-9)
    with pytest.raises(ConfigError):
        regablate.effects(runs, metric="loss")


def test_leave_one_out_from_ablation_json_ignores_other_arms(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "sweep"
    v = _table(arms("leave_one_out", S3), SEEDS, rng)
    extra = _table([("dropout",)], SEEDS, rng)
    _write(root, {**v, **extra})
    runs = regablate.load_runs(root)
    with pytest.raises(UsageError) as e:  # no ablation.json: the arms are no one design's
        regablate.effects(runs)
    assert "\n" not in str(e.value) and "design=" in str(e.value)
    write_ablation_json(root, "leave_one_out", S3, list(SEEDS))
    table = regablate.effects(runs)
    assert set(table.kind) == {"leave_one_out"} and list(table.component) == list(S3)
    S = frozenset(S3)
    for c in S3:
        _close(_row(table, "leave_one_out", c), _hand({s: v[S, s] - v[S - {c}, s] for s in SEEDS}))
    named = regablate.effects(runs, design="leave_one_out")  # the same, said by the caller
    assert np.allclose(named.delta, table.delta, rtol=0, atol=0)


def test_a_sweep_without_a_stack_to_split_is_refused(tmp_path):
    for job, (arm, seed) in enumerate(itertools.product([(), ("dropout",)], SEEDS)):
        write_run(tmp_path / str(job), reg=arm, seed=seed)
    with pytest.raises(UsageError, match="fewer than two regularisers"):
        regablate.effects(regablate.load_runs(tmp_path))


def test_add_one_in_inferred_gives_only_its_kind(tmp_path):
    rng = np.random.default_rng(4)
    v = _table(arms("add_one_in", S3), SEEDS, rng)
    table = regablate.effects(regablate.load_runs(_write(tmp_path / "s", v)))
    assert set(table.kind) == {"add_one_in"} and set(table.design) == {"add_one_in"}
    for c in S3:
        _close(_row(table, "add_one_in", c),
               _hand({s: v[frozenset({c}), s] - v[frozenset(), s] for s in SEEDS}))


def test_two_components_leave_one_out_gives_shapley_too(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "s"
    v = _table(arms("leave_one_out", S3[:2]), SEEDS, rng)
    write_ablation_json(root, "leave_one_out", S3[:2], list(SEEDS))
    table = regablate.effects(regablate.load_runs(_write(root, v)))
    assert list(dict.fromkeys(table.kind)) == ["leave_one_out", "add_one_in", "shapley"]
    hand = _by_hand(v, S3[:2], SEEDS)
    for kind, comp in zip(table.kind, table.component, strict=True):
        _close(_row(table, kind, comp), _hand(hand[kind, comp]))


def test_a_failed_run_drops_its_seed_only_where_needed(tmp_path):
    rng = np.random.default_rng(6)
    comps = S3[:2]
    v = _table(arms("factorial", comps), SEEDS, rng)
    lost = (frozenset({"dropout"}), 3)
    root = _write(tmp_path / "s", v, status={lost: "failed"})
    for runs in (regablate.load_runs(root), regablate.load_runs(root, status=None)):
        table = regablate.effects(runs)
        hand = _by_hand(v, comps, SEEDS)
        for (kind, comp), per_seed in hand.items():
            needs = kind in ("main", "interaction", "shapley") or \
                (kind, comp) in (("leave_one_out", "l2"), ("add_one_in", "dropout"))
            kept = {s: x for s, x in per_seed.items() if not (needs and s == 3)}
            _close(_row(table, kind, comp), _hand(kept))
            assert _row(table, kind, comp).n == (4 if needs else 5)


def test_a_diverged_run_with_a_nan_metric_is_not_used(tmp_path):
    rng = np.random.default_rng(8)
    comps = S3[:2]
    v = _table(arms("factorial", comps), SEEDS, rng)
    v[frozenset(comps), 0] = math.nan
    table = regablate.effects(regablate.load_runs(_write(tmp_path / "s", v)))
    assert _row(table, "leave_one_out", "dropout").n == 4
    assert _row(table, "add_one_in", "dropout").n == 5


def test_no_p_value_the_data_cannot_carry(tmp_path):
    rng = np.random.default_rng(9)
    comps = S3[:2]
    for n, has_interval in ((2, True), (1, False)):
        v = _table(arms("factorial", comps), range(n), rng)
        table = regablate.effects(regablate.load_runs(_write(tmp_path / f"n{n}", v)))
        assert table.p.isna().all() and table.p_holm.isna().all()
        assert set(table.reason) == {f"fewer than 3 seeds (n = {n})"}
        assert table.lo.notna().all() == has_interval and (table.n == n).all()
    # effects equal in every seed up to float rounding: an interval, but no p-value
    block = [0.71, 0.83, 0.77, 0.79, 0.8]
    eff = {frozenset(): 0.0, frozenset({"dropout"}): 0.05, frozenset({"l2"}): 0.02,
           frozenset(comps): 0.06}
    v = {(a, s): block[s] + e for a, e in eff.items() for s in SEEDS}
    table = regablate.effects(regablate.load_runs(_write(tmp_path / "flat", v)))
    assert table.p.isna().all() and table.p_holm.isna().all()
    assert set(table.reason) == {"differences equal up to float rounding"}
    assert (table.hi - table.lo).max() < 1e-12
    assert abs(_row(table, "add_one_in", "dropout").delta - 0.05) < 1e-12


def test_cells_of_other_settings_are_analysed_each_on_their_own(tmp_path):
    rng = np.random.default_rng(10)
    comps = S3[:2]
    expected = {}
    job = 0
    for model in ("mlp", "convnet"):
        for p in (0.3, 0.5):
            for arm in arms("factorial", comps):
                if "dropout" not in arm and p == 0.5:
                    continue  # arms without dropout run once and serve both strengths
                for s in SEEDS:
                    x = round(0.8 + rng.normal(0, 0.03), 6)
                    for cell in [(model, q) for q in ((p,) if "dropout" in arm else (0.3, 0.5))]:
                        expected.setdefault(cell, {})[frozenset(arm), s] = x
                    write_run(tmp_path / "s" / str(job), reg=arm, seed=s, val=x,
                              config={"model": {"name": model}},
                              reg_settings={"dropout": {"p": p}} if "dropout" in arm else None)
                    job += 1
    table = regablate.effects(regablate.load_runs(tmp_path / "s"))
    assert list(table.columns[8:]) == ["model.name", "reg.dropout.p", "reason", "design",
                                       "metric", "higher_is_better"]
    assert len(table) == 4 * (2 * 4 + 1)
    for (model, p), v in expected.items():
        cell = table[(table["model.name"] == model) & (table["reg.dropout.p"] == p)]
        for (kind, comp), per_seed in _by_hand(v, comps, SEEDS).items():
            _close(_row(cell, kind, comp), _hand(per_seed))


def test_an_empty_frame_gives_an_empty_table(tmp_path, factorial3):
    root, _ = factorial3
    runs = regablate.load_runs(root)
    empty = regablate.effects(runs.iloc[:0])
    assert len(empty) == 0 and list(empty.columns)[:8] == ["component", "kind", "delta", "lo",
                                                            "hi", "p", "p_holm", "n"]
    from_path = regablate.effects(str(root))
    assert np.array_equal(from_path.delta, regablate.effects(runs).delta)


# ---- the intervals' coverage, simulated (vectorised: one call per estimate) ----

def test_a_component_that_does_nothing_is_covered_at_the_nominal_rate():
    """2,000 experiments of 5 seeds, k = 3: `mixup` does nothing (no main effect and no
    interaction with anything) while the others do; every estimate of mixup's effect should
    hold 0 in its 95% interval in 95% of experiments, within 3 Monte Carlo SEs."""
    rng = np.random.default_rng(2026)
    comps = ("dropout", "l2", "mixup")
    experiments, seeds = 2000, 5
    arm_list = [frozenset(a) for a in arms("factorial", comps)]
    truth = np.array([0.03 * ("dropout" in a) + 0.01 * ("l2" in a)
                      - 0.02 * ({"dropout", "l2"} <= a) for a in arm_list])
    block = rng.normal(0, 0.05, (experiments, seeds, 1))
    noise = rng.normal(0, 0.01, (experiments, seeds, len(arm_list)))
    values = 0.8 + block + truth + noise
    se = 3 * math.sqrt(0.95 * 0.05 / experiments)
    checked = []
    for con in contrasts("factorial", comps):
        if "mixup" not in con.component:
            continue
        w = np.array([con.weights.get(a, 0.0) for a in arm_list])
        s = summarise(values @ w)
        covered = ((s["lo"] <= 0) & (0 <= s["hi"])).mean()
        assert abs(covered - 0.95) <= se, (con.kind, con.component, covered)
        rejected = (s["p"] < 0.05).mean()
        assert abs(rejected - 0.05) <= se, (con.kind, con.component, rejected)
        checked.append((con.kind, con.component))
    assert len(checked) == 6  # leave_one_out, add_one_in, main, shapley, 2 interactions
    # and a component that does something is found
    drop = next(c for c in contrasts("factorial", comps) if c.kind == "main"
                and c.component == "dropout")
    s = summarise(values @ np.array([drop.weights[a] for a in arm_list]))
    assert (s["p"] < 0.05).mean() > 0.99


def test_summarise_matches_scipy_row_by_row():
    rng = np.random.default_rng(11)
    d = rng.normal(0.01, 0.02, (20, 6))
    s = summarise(d)
    for i in range(20):
        want = _hand(dict(enumerate(d[i])))
        for key, got in (("delta", s["mean"][i]), ("lo", s["lo"][i]), ("hi", s["hi"][i]),
                         ("p", s["p"][i])):
            assert abs(got - want[key]) <= TOL


def test_summarise_follows_the_paired_tests_rules():
    """The vectorised t summary the simulation checks is effects()' own test, estimate by
    estimate: same numbers, same refusals (n < 3, spread equal up to float rounding)."""
    from regablate.report.paired import paired_test

    rng = np.random.default_rng(12)
    cases = [rng.normal(0.01, 0.02, 5), rng.normal(0, 1e-3, 4), np.array([0.05, 0.05, 0.05]),
             0.05 + np.array([1e-17, -2e-17, 0.0, 3e-17]), rng.normal(0, 1, 2)]
    for d in cases:
        got, want = summarise(d[None, :], scale=0.9), paired_test(d, "t", scale=0.9)
        assert got["n"] == want.n
        for key, ref in (("mean", want.estimate), ("lo", want.lo), ("hi", want.hi),
                         ("p", math.nan if want.p is None else want.p)):
            a = float(got[key][0])
            assert (math.isnan(a) and math.isnan(ref)) or abs(a - ref) <= TOL, (key, a, ref)


def test_other_tests_for_p(factorial3):
    root, v = factorial3
    runs = regablate.load_runs(root)
    t, flip = regablate.effects(runs), regablate.effects(runs, test="signflip")
    assert np.array_equal(t.delta, flip.delta) and np.array_equal(t.lo, flip.lo)
    assert flip.p.min() >= 2 / 2 ** 5 and flip.attrs["test"] == "signflip"
    with pytest.raises(ConfigError):
        regablate.effects(runs, test="z")
    with pytest.raises(ConfigError):
        regablate.effects(runs, design="fractional")


def test_import_regablate_stays_light():
    code = ("import sys, regablate; regablate.effects; "
            "heavy = {'pandas', 'scipy', 'numpy'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
