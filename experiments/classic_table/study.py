"""classic_table: the usual regularisers, one at a time and in pairs, on a small tabular MLP.

STUDY: its sweeps (the overrides after `+experiment=classic_table`) and its reports.
extras(out): no figure of its own (the report's plots); its facts and checked claims.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from studylib import (
    Report,
    Study,
    Sweep,
    arm_facts,
    by_name,
    claims,
    fmt,
    groups,
)

STUDY = Study(
    sweeps=[Sweep(smoke=("++reg={},{dropout:{p:0.4},weight_decay:{lam:1e-3}},{batchnorm:{}}",))],
    reports=[Report("", plots=True), Report("test", ("--metric", "test"))])


def extras(out: Path) -> dict:
    gs = by_name(groups(out))
    facts = arm_facts(out)
    for name, g in gs.items():
        facts[f"{name.replace('+', '_')}.best_epoch"] = f"{g['best_epoch']:.0f}"  # mean best-val-loss epoch
    def p_holm(name: str) -> float:
        vs = gs[name]["vs_baseline"] if name in gs else None
        return vs["val_acc"]["p_holm"] if vs else math.nan

    def worse(name: str) -> bool:
        return name in gs and gs[name]["vs_baseline"]["val_acc"]["delta"] < 0 and p_holm(name) < 0.05

    facts["_claims"] = claims(lambda: [
        ("weight decay 1e-3: no significant change in val acc (Holm p >= 0.05)", not p_holm("weight_decay") < 0.05),
        ("dropout 0.4: no significant change in val acc", not p_holm("dropout") < 0.05),
        ("dropout + weight decay: no significant change in val acc", not p_holm("dropout+weight_decay") < 0.05),
        ("batch norm: val acc significantly lower", worse("batchnorm")),
        ("batch norm + weight decay: val acc significantly lower", worse("batchnorm+weight_decay")),
        ("dropout's best epoch is later than the baseline's", gs["dropout"]["best_epoch"] > gs["none"]["best_epoch"]),
    ])
    doc = json.loads((out / "report.json").read_text())
    facts["min_train_acc"] = fmt(min(r["train"]["acc"] for r in doc["runs"] if r["status"] == "completed"))
    return facts
