"""End to end: a real sweep through `regablate run -m`, then `regablate report` on its files."""

from __future__ import annotations

import json

import scipy.stats

from conftest import FAST, run_cli


def test_sweep_then_report_matches_scipy_and_plots(tmp_path):
    r = run_cli("run", "-m", "+reg=none,dropout", "seed=0,1,2", "dataset.n=300", "dataset.n_test=100",
                *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # a fourth job still being written: summary says running, metrics.csv has one row
    live = tmp_path / "sweep" / "6"
    (live / ".hydra").mkdir(parents=True)
    (live / ".hydra" / "config.yaml").write_text((tmp_path / "sweep" / "0" / ".hydra" / "config.yaml").read_text())
    first = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    (live / "summary.json").write_text(json.dumps({**first, "status": "running", "seed": 9,
                                                   "train": None, "val": None, "test": None, "gap": None}))
    r = run_cli("report", "sweep", "--format", "json", "--out", "r.json", "--plot", "plots", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")]
    gaps = {stack: {s["seed"]: s["gap"] for s in summaries if tuple(s["reg"]) == stack
                    and s["status"] == "completed"} for stack in ((), ("dropout",))}
    assert all(len(v) == 3 for v in gaps.values())
    groups = {tuple(g["reg"]): g for g in report["groups"]}
    assert groups[()]["statuses"] == {"completed": 3, "running": 1}  # counted, never averaged
    assert groups[()]["n"] == 3
    dropout = groups[("dropout",)]
    assert abs(dropout["gap"]["mean"] - sum(gaps[("dropout",)].values()) / 3) < 1e-12
    expected = scipy.stats.ttest_rel([gaps[("dropout",)][k] for k in (0, 1, 2)],
                                     [gaps[()][k] for k in (0, 1, 2)]).pvalue
    assert dropout["vs_baseline"]["gap"]["test"] == "paired t-test"
    assert abs(dropout["vs_baseline"]["gap"]["p"] - expected) < 1e-9
    plots = sorted(q.name for q in (tmp_path / "plots").iterdir())
    assert "gap.png" in plots and any(q.startswith("reliability_") for q in plots)
