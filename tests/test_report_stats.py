"""The report's statistics against hand-computed values and scipy."""

import math

import pytest
from scipy import stats

from regablate.report.stats import PAIRED, WELCH, compare, describe, holm


def test_describe_matches_hand_computed_t_interval():
    s = describe([0.80, 0.82, 0.84])
    assert s.n == 3
    assert s.mean == pytest.approx(0.82)
    assert s.std == pytest.approx(0.02)  # sample std, ddof=1
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, df=2) from tables
    assert (s.lo, s.hi) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))


def test_describe_drops_nan_and_handles_tiny_samples():
    assert describe([math.nan, 0.5]).n == 1
    one = describe([0.5])
    assert one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.lo)
    assert describe([]).n == 0 and math.isnan(describe([]).mean)


def pairs(keys, values):
    return list(zip(keys, values, strict=True))


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    va, vb = 5 / 3, 10.0  # sample variances
    se2 = va / 4 + vb / 5
    t = (2.5 - 6.0) / math.sqrt(se2)
    df = se2**2 / ((va / 4) ** 2 / 3 + (vb / 5) ** 2 / 4)
    c = compare(pairs(range(4), a), pairs(range(10, 15), b))
    assert c.test == WELCH
    assert c.delta == pytest.approx(-3.5)
    assert c.p == pytest.approx(2 * stats.t.sf(abs(t), df))


def test_paired_when_the_same_seeds_ran():
    a, b = [0.84, 0.85, 0.83, 0.86], [0.80, 0.82, 0.79, 0.80]
    keys = [(s, 0) for s in range(4)]
    c = compare(pairs(keys, a), pairs(keys[::-1], b[::-1]))  # order does not matter
    d = [x - y for x, y in zip(a, b, strict=True)]
    t = (sum(d) / 4) / (stats.tstd(d) / 2)
    assert c.test == PAIRED
    assert c.p == pytest.approx(2 * stats.t.sf(abs(t), 3))
    assert c.p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert compare(pairs(keys, a), pairs(keys, b), paired=False).test == WELCH
    assert compare(pairs(keys, a), pairs([*keys[:2], (7, 0)], b[:3])).test == WELCH  # 2 in common: too few to pair


def test_paired_over_the_seeds_both_ran_when_they_differ():
    # a seeds=auto arm stopped after 4 seeds while its reference ran 6, or one failed run: the
    # 4 seeds both ran are paired (data_seed follows seed: the other 2 are other data sets)
    a, b = [0.84, 0.85, 0.83, 0.86], [0.80, 0.82, 0.79, 0.80, 0.95, 0.97]
    c = compare(pairs([(s, s) for s in range(4)], a), pairs([(s, s) for s in range(6)], b))
    assert c.test == PAIRED and c.pairs == 4
    assert c.p == pytest.approx(stats.ttest_rel(a, b[:4]).pvalue)
    assert c.delta == pytest.approx(sum(a) / 4 - sum(b[:4]) / 4)  # not the difference of all means
    assert compare(pairs([(s, s) for s in range(4)], a), pairs([(s, s) for s in range(4)], b[:4])).pairs is None


def test_no_test_below_three_seeds():
    c = compare([((0, 0), 0.9)], [((0, 0), 0.8), ((1, 0), 0.7)])
    assert c.delta == pytest.approx(0.15) and math.isnan(c.p) and c.test is None
    assert c.reason == "fewer than 3 seeds (n = 1)"
    keys = [(0, 0), (1, 0)]
    for test in ("t", "signflip", "wilcoxon"):  # two seeds, paired: still no test
        c = compare(pairs(keys, [0.9, 0.7]), pairs(keys, [0.8, 0.75]), test=test)
        assert math.isnan(c.p) and c.test is None and c.reason == "fewer than 3 seeds (n = 2)"
    c = compare(pairs(range(2), [0.9, 0.7]), pairs(range(5, 10), [0.1, 0.2, 0.3, 0.4, 0.5]))
    assert math.isnan(c.p) and c.test is None and c.reason == "fewer than 3 seeds (n = 2)"


def test_paired_tests_and_their_floor():
    keys = [(s, 0) for s in range(5)]
    a, b = [0.84, 0.85, 0.83, 0.86, 0.84], [0.80, 0.81, 0.79, 0.80, 0.82]
    c = compare(pairs(keys, a), pairs(keys, b), test="signflip")
    assert c.p == 1 / 16 and c.floor == 1 / 16 and c.at_floor
    assert c.test == "paired sign-flip permutation test" and c.reason is None
    t = compare(pairs(keys, a), pairs(keys, b))
    assert t.floor is None and not t.at_floor
    w = compare(pairs(keys, a), pairs(keys, b), test="wilcoxon")
    assert w.test == "Wilcoxon signed-rank test" and w.floor == 1 / 16
    # different seeds: only the t-test has an unpaired form (Welch's)
    c = compare(pairs(range(3), a[:3]), pairs(range(5, 8), b[:3]), test="signflip")
    assert math.isnan(c.p) and c.test is None and "needs at least 3 of the baseline's seeds" in c.reason
    with pytest.raises(ValueError, match="allowed"):
        compare(pairs(keys, a), pairs(keys, b), test="sign")


def test_cli_choices_are_the_tests():
    from regablate.report.command import TESTS as CLI
    from regablate.report.paired import TESTS

    assert CLI == TESTS


def test_holm_by_hand():
    adjusted = holm([0.01, 0.04, math.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.03)  # 3 * 0.01
    assert adjusted[3] == pytest.approx(0.06)  # 2 * 0.03
    assert adjusted[1] == pytest.approx(0.06)  # max(1 * 0.04, previous)
    assert math.isnan(adjusted[2])
    assert holm([0.6, 0.7]) == [1.0, 1.0]
