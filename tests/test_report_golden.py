"""`regablate report`'s output, byte for byte, on fixed fixtures: captured from the report as it
was before it was rebuilt on regablate.report.frames, and checked after. Set REGABLATE_REGOLD=1 to
rewrite the files in tests/golden/report/ (only after a deliberate change of output)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from report_fixtures import DROPOUT, L2, NONE, ablation, write_failed_early, write_run

from regablate.report.command import main

GOLDEN = Path(__file__).parent / "golden" / "report"
CASES = {
    "sweep": ["multirun"],
    "runs": ["multirun", "--runs"],
    "welch_test_sorted": ["multirun", "--unpaired", "--metric", "test", "--sort", "gap"],
    "filtered": ["multirun", "--filter", "reg=dropout"],
    "lrs": ["lrs"],
    "lrs_runs": ["lrs", "--runs", "--sort", "optim.lr"],
    "baseline_named": ["lrs", "--baseline", "l2 lr=0.01"],
}
FORMATS = {"table": "txt", "markdown": "md", "csv": "csv", "latex": "tex", "json": "json"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    where = ablation(root / "multirun", {"none": NONE, "dropout": DROPOUT, "l2": L2},
                     warnings=("w1",))
    write_run(where / "90", reg=("dropout",), seed=5, status="diverged")
    write_run(where / "91", reg=("dropout",), seed=6, status="running")
    write_run(where / "92", reg=("l2",), seed=7, status="failed")
    write_failed_early(where / "93", reg=("l2",), seed=8)
    (where / "94").mkdir()
    (where / "94" / "summary.json").write_text("{not json")
    for lr in (0.01, 0.1):
        for reg in ((), ("l2",)):
            for seed in range(3):
                write_run(root / "lrs" / f"{lr}-{len(reg)}-{seed}", reg=reg, seed=seed,
                          val=0.8 + len(reg) * lr + 0.003 * seed, extra={"ece": 0.01 * seed},
                          config={"optim": {"lr": lr}})
    return root


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES)
def test_output_is_unchanged(root, case, fmt, tmp_path, monkeypatch):
    monkeypatch.chdir(root)
    out = tmp_path / "out"
    assert main([*CASES[case], "--format", fmt, "--out", str(out)]) == 0
    text = out.read_text().replace(str(root), "<ROOT>")
    golden = GOLDEN / f"{case}.{FORMATS[fmt]}"
    if os.environ.get("REGABLATE_REGOLD"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()
