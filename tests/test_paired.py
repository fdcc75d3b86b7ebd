"""Paired tests with no p-value the data cannot carry (regablate.report.paired)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from regablate.report.paired import (
    EXACT_MAX_N,
    TESTS,
    equal_reason,
    paired_test,
    paired_values,
    signflip_floor,
    welch_test,
)
from regablate.report.stats import compare

# The issue's case: two seeds whose val accuracies (over 144 examples) differ by exactly 2/144.
ARM = {(0, 0): 100 / 144, (1, 1): 102 / 144}
REF = {(0, 0): 98 / 144, (1, 1): 100 / 144}


def test_issue_case_today_and_now():
    # scipy reads the rounding error as evidence: p = 2.5e-15; the report's compare does not
    assert 0 < stats.ttest_rel(list(ARM.values()), list(REF.values())).pvalue < 1e-14
    c = compare(list(ARM.items()), list(REF.items()))
    assert math.isnan(c.p) and c.test is None and c.reason == "fewer than 3 seeds (n = 2)"
    assert c.delta == pytest.approx(2 / 144)
    for test in TESTS:
        r = paired_values(ARM, REF, test)
        assert r.n == 2 and r.p is None and r.reason == "fewer than 3 seeds (n = 2)"
        assert r.estimate == pytest.approx(2 / 144)


def test_equal_differences_at_three_seeds_give_no_p():
    arm = {**ARM, (2, 2): 119 / 144}
    ref = {**REF, (2, 2): 117 / 144}
    d = [arm[k] - ref[k] for k in arm]
    assert len(set(d)) > 1  # not equal as floats: they differ in the last bits
    assert stats.ttest_rel(list(arm.values()), list(ref.values())).pvalue < 1e-20
    for test in TESTS:
        c = compare(list(arm.items()), list(ref.items()), test=test)
        assert math.isnan(c.p) and c.reason == "differences equal up to float rounding"
    for test in TESTS:
        r = paired_values(arm, ref, test)
        assert r.p is None and r.reason == "differences equal up to float rounding", test
    assert paired_test([0.0, 0.0, 0.0, 0.0]).reason == "differences equal up to float rounding"
    assert paired_test([-3e-7, -3e-7, -3e-7]).p is None  # small but equal: still rounding-free


def test_real_spread_keeps_its_p():
    # differences of one example in 10^6 are a real spread (an accuracy step), not rounding
    d = np.array([2, 3, 2, 4]) / 1e6
    assert equal_reason(d, scale=1.0) is None
    r = paired_test(d, "t", scale=1.0)
    assert r.p == pytest.approx(stats.ttest_1samp(d, 0).pvalue)


def test_below_three_seeds_no_test_whatever_the_test():
    for test in TESTS:
        for d in ([], [1.0], [1.0, 5.0]):
            r = paired_test(d, test)
            assert r.p is None and r.reason == f"fewer than 3 seeds (n = {len(d)})"
    r = paired_test([1.0, math.nan, 2.0, math.inf])
    assert r.n == 2 and r.p is None


def test_t_matches_scipy_and_interval():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4])
    r = paired_test(d, "t")
    assert r.p == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    ci = stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d))
    assert (r.lo, r.hi) == pytest.approx(ci)
    assert r.floor is None and not r.at_floor


def _signflip_by_hand(d):
    obs = abs(sum(d))
    hits = sum(abs(sum(s * x for s, x in zip(signs, d))) >= obs - 1e-12
               for signs in itertools.product((-1, 1), repeat=len(d)))
    return hits / 2 ** len(d)


def test_signflip_exact_against_enumeration():
    rng = np.random.default_rng(1)
    for n in (3, 4, 5, 8):
        d = rng.normal(0.3, 1, n)
        assert paired_test(d, "signflip").p == pytest.approx(_signflip_by_hand(d))
    # with ties in |sum| (integers): still the exact count
    assert paired_test([1, 1, 2, 2], "signflip").p == pytest.approx(_signflip_by_hand([1, 1, 2, 2]))


def test_signflip_floor_at_five_seeds():
    assert signflip_floor(5) == 1 / 16
    r = paired_test([0.1, 0.2, 0.3, 0.4, 0.5], "signflip")
    assert r.p == 1 / 16 and r.floor == 1 / 16 and r.at_floor
    assert paired_test([0.1, 0.2, 0.3, 0.4, 0.5], "wilcoxon").floor == 1 / 16
    assert paired_test([1, 2, 3, -1], "signflip").floor == 1 / 8


def test_signflip_monte_carlo_above_exact_limit():
    rng = np.random.default_rng(2)
    d = rng.normal(0.5, 1, EXACT_MAX_N + 4)
    r = paired_test(d, "signflip")
    assert r.p == paired_test(d, "signflip").p  # seeded: reproducible
    t = stats.ttest_1samp(d, 0).pvalue
    assert abs(r.p - t) < 0.05  # the permutation and t p-values agree roughly at n = 20
    null = paired_test(rng.normal(0, 1, 40), "signflip")
    assert 0 < null.p <= 1 and r.floor < 1e-4


def test_wilcoxon_matches_scipy():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.45, 0.7])
    assert paired_test(d, "wilcoxon").p == pytest.approx(stats.wilcoxon(d).pvalue)
    assert paired_test([0.0, 0.0, 1.0, 2.0], "wilcoxon").p is None  # 2 non-zero differences
    r = paired_test([1.0, 1.0, 1.0, 2.0, 3.0], "wilcoxon")  # ties, n = 5: exact, at its floor
    assert r.p == 1 / 16 and r.floor == 1 / 16 and r.at_floor


@pytest.mark.parametrize("levels", [[115, 116, 115, 121, 123], [100] * 5, [115] * 5, [120, 121, 122, 123, 124]])
def test_wilcoxon_ranks_the_same_image_count_as_a_tie_at_every_accuracy_level(levels):
    # +1, +1, +1, +1, -1 images out of 180: four positive and one negative difference of equal
    # size, whose floats differ in the last bit by level. With mid-ranks the signed-rank p is
    # P(#positive in {0, 1, 4, 5}) = 12/32, as scipy gives on the counts themselves.
    n_images, moved = 180, [1, 1, 1, 1, -1]
    arm = {(i, i): (b + m) / n_images for i, (b, m) in enumerate(zip(levels, moved))}
    ref = {(i, i): b / n_images for i, b in enumerate(levels)}
    r = paired_values(arm, ref, "wilcoxon")
    assert r.p == pytest.approx(12 / 32) == pytest.approx(stats.wilcoxon(moved).pvalue)
    assert r.estimate == pytest.approx(3 / 5 / n_images)


def test_wilcoxon_claims_no_floor_its_p_is_below(monkeypatch):
    # a scipy whose normal approximation (ties) gives p = 0.043 < 1/16 at n = 5: no floor then
    from types import SimpleNamespace

    import regablate.report.paired as paired

    monkeypatch.setattr(paired.stats, "wilcoxon", lambda d: SimpleNamespace(pvalue=0.043))
    r = paired_test([1.0, 1.0, 1.0, 2.0, 3.0], "wilcoxon")
    assert r.p == 0.043 and r.floor is None and not r.at_floor


def test_welch_groups():
    assert welch_test([1, 2], [1, 2, 3]).p is None
    # one constant group, the other with spread: Welch's T is the one-sample T of the other
    # group against the constant, on its n - 1 degrees of freedom: a valid test
    r = welch_test([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    assert r.p == pytest.approx(stats.ttest_1samp([0.1, 0.2, 0.3], 0.5).pvalue)
    assert r.reason is None and r.lo < r.estimate < r.hi
    # ... also when its spread is float rounding (it counts as exactly constant)
    wobbly = [0.1 + 0.2, 0.3, 0.3]
    assert len(set(wobbly)) == 2
    assert welch_test(wobbly, [0.4, 0.5, 0.7]).p == pytest.approx(
        stats.ttest_1samp([0.4, 0.5, 0.7], 0.3).pvalue)
    # both constant: no spread to test against, however far apart
    for b in ([0.1, 0.1, 0.1], [0.5, 0.5, 0.5 + 1e-17], [0.7, 0.7, 0.7, 0.7]):
        r = welch_test([0.5, 0.5, 0.5], b)
        assert r.p is None and r.reason == "values equal up to float rounding within each group"
    a, b = [1.0, 2.0, 3.5], [0.1, 0.2, 0.6]
    r = welch_test(a, b)
    assert r.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert r.lo < r.estimate < r.hi


def test_unknown_test_named():
    with pytest.raises(ValueError, match="allowed: t, signflip, wilcoxon"):
        paired_test([1, 2, 3], "sign")


def test_to_json_plain():
    j = paired_test([1.0, 2.0], "signflip").to_json()
    assert j["p"] is None and j["reason"].startswith("fewer") and j["floor"] == 0.5
    assert paired_test([], "t").to_json()["estimate"] is None
