"""`regablate plan`: seeds needed from a pilot sweep (regablate.report.plan)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate, stats

from regablate.report.plan import detectable_delta, main, n_needed, t_power
from tests.report_fixtures import DROPOUT, L2, NONE, ablation


def power_by_integration(n: int, effect: float, alpha: float) -> float:
    """Two-sided paired t-test power, independently of scipy's nct: T = (Z + λ)/√(V/df) with
    Z ~ N(0, 1), V ~ χ²_df, λ = effect·√n, so P(|T| > c) = E_V[Φ(λ − c√(V/df)) + Φ(−λ − c√(V/df))]."""
    df, lam = n - 1, effect * math.sqrt(n)
    c = stats.t.isf(alpha / 2, df)

    def f(v):
        k = c * math.sqrt(v / df)
        return (stats.norm.cdf(lam - k) + stats.norm.cdf(-lam - k)) * stats.chi2.pdf(v, df)

    lo, hi = stats.chi2.ppf(1e-13, df), stats.chi2.isf(1e-13, df)  # where V's mass lies
    return integrate.quad(f, lo, hi, limit=200, epsabs=1e-12)[0]


@pytest.mark.parametrize("sd,delta,power,alpha", [(1.0, 1.0, 0.8, 0.05), (0.02, 0.01, 0.8, 0.025),
                                                  (0.5, 1.5, 0.9, 0.05 / 3), (3.0, 0.4, 0.8, 0.01)])
def test_n_needed_is_the_smallest_n_with_the_power(sd, delta, power, alpha):
    n = n_needed(sd, delta, power, alpha)
    assert power_by_integration(n, delta / sd, alpha) >= power - 1e-9
    if n > 3:
        assert power_by_integration(n - 1, delta / sd, alpha) < power
    z = stats.norm.isf(alpha / 2) + stats.norm.ppf(power)
    closed = (z * sd / delta) ** 2 + stats.norm.isf(alpha / 2) ** 2 / 2  # Guenther's correction
    assert abs(n - closed) <= 1.5
    assert t_power(n, delta / sd, alpha) == pytest.approx(power_by_integration(n, delta / sd, alpha),
                                                          abs=1e-6)


def test_never_fewer_seeds_than_the_report_tests():
    """A huge effect needs 2 seeds by the t-test's power, but the report gives no test below 3."""
    assert power_by_integration(2, 20.0, 0.05) >= 0.8 and n_needed(0.001, 0.02) == 3


def test_extreme_deltas():
    """A delta far below the differences' sd needs more seeds than the cap (its normal answer,
    ((z·sd/delta)², overflowed a float); one far above needs the fewest (scipy's nct gives nan
    that far in a tail, which read as power 0)."""
    for delta in (1e-300, 5e-324, 1e-12):
        with pytest.raises(ValueError, match="more than 1000000 seeds"):
            n_needed(0.02, delta)
    assert t_power(2, 1e300, 0.05) == 1.0 and t_power(2, 1e-300, 0.05) == pytest.approx(0.05)
    assert n_needed(0.02, 1e300) == 3 and n_needed(1e-300, 1.0) == 3


def test_extreme_deltas_in_the_table(tmp_path, capsys):
    ablation(tmp_path, {"none": NONE, "dropout": DROPOUT})
    (tiny,) = _json(capsys, [str(tmp_path), "--delta", "1e-300", "--format", "json"])
    assert tiny["n_needed"] is None and tiny["reason"] == "more than 1000000 seeds"
    (huge,) = _json(capsys, [str(tmp_path), "--delta", "1e300", "--format", "json"])
    assert huge["n_needed"] == 3 and huge["reason"] is None


def test_detectable_delta_has_the_power():
    d = detectable_delta(0.02, 5, 0.8, 0.025)
    assert power_by_integration(5, d / 0.02, 0.025) == pytest.approx(0.8, abs=1e-6)
    with pytest.raises(ValueError):
        detectable_delta(0.0, 5)


def _json(capsys, argv) -> list:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_pilot_sweep_json(tmp_path, capsys):
    ablation(tmp_path, {"none": NONE, "dropout": DROPOUT, "l2": L2})
    rows = _json(capsys, [str(tmp_path), "--delta", "0.01", "--format", "json"])
    assert [r["label"] for r in rows] == ["dropout", "l2"]
    for r, arm in zip(rows, (DROPOUT, L2), strict=True):
        d = np.array([a[1] - b[1] for a, b in zip(arm, NONE, strict=True)])
        assert set(r) == {"label", "n_pilot", "sd_diff", "n_needed", "detectable_delta", "reason"}
        assert r["n_pilot"] == 5 and r["sd_diff"] == pytest.approx(d.std(ddof=1))
        n = r["n_needed"]
        level = 0.05 / 2  # Holm's smallest level over 2 comparisons
        effect = 0.01 / r["sd_diff"]
        assert power_by_integration(n, effect, level) >= 0.8 > power_by_integration(n - 1, effect,
                                                                                    level)
        assert power_by_integration(5, r["detectable_delta"] / r["sd_diff"], level) == \
            pytest.approx(0.8, abs=1e-6)
    more = _json(capsys, [str(tmp_path), "--delta", "0.01", "--power", "0.9", "--alpha", "0.01",
                          "--format", "json"])
    assert all(m["n_needed"] > r["n_needed"] for m, r in zip(more, rows, strict=True))


def test_table_and_reasons(tmp_path, capsys):
    same = [(0.99, v + 2 / 144, 0.8) for _, v, _ in NONE]  # equal differences, up to rounding
    ablation(tmp_path, {"none": NONE, "dropout": same, "l2": L2[:1]})
    assert main([str(tmp_path), "--delta", "0.01"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["group", "pilot", "n", "sd", "of", "diff", "n",
                                           "needed", "detectable", "Δ"]
    assert "dropout: differences equal up to float rounding: no spread to plan from" in out
    assert "l2: 1 paired seed in the pilot: no sd (2 at least)" in out
    assert "α/2 = 0.025" in out


@pytest.mark.parametrize("argv,message", [
    (["--delta", "0.01"], "the following arguments are required: DIR"),
    (["{d}", "--delta", "-1"], "--delta -1.0: a finite positive number"),
    (["{d}", "--delta", "inf"], "--delta inf: a finite positive number (the difference to detect"),
    (["{d}", "--delta", "0.1", "--power", "1.5"], "--power 1.5: a number in (0, 1)"),
    (["{d}", "--delta", "0.1", "--format", "csv"], "invalid choice: 'csv'"),
    (["{d}/nowhere", "--delta", "0.1"], "no such file or directory"),
    (["{d}", "--delta", "0.1", "--baseline", "l1"], "--baseline 'l1': no such group"),
])
def test_errors_one_line_exit_2(tmp_path, capsys, argv, message):
    ablation(tmp_path, {"none": NONE, "dropout": DROPOUT})
    assert main([a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("regablate plan: error: ") and message in err
    assert err.count("\n") == 1


def test_no_baseline(tmp_path, capsys):
    ablation(tmp_path, {"dropout": DROPOUT, "l2": L2})
    assert main([str(tmp_path), "--delta", "0.1"]) == 2
    assert "no baseline group (empty stack)" in capsys.readouterr().err
    rows = _json(capsys, [str(tmp_path), "--delta", "0.01", "--baseline", "l2", "--format",
                          "json"])
    assert [r["label"] for r in rows] == ["dropout"]
