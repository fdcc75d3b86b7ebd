"""cifar10_small_data: which regulariser helps a resnet20 most on 5,000 CIFAR-10 images (GPU).

STUDY: its sweep (`+experiment=cifar10_small_data`: six arms, stacked) and its reports, each
arm against `none`. extras(out): each arm's facts; its claims are written with the findings,
once the runs exist.
"""

from __future__ import annotations

import json
from pathlib import Path

from studylib import Report, Study, Sweep, arm_facts, claims, fmt

STUDY = Study(sweeps=[Sweep(smoke=("seed=0,1",))],  # the report's baseline: the arm `none`
              reports=[Report("", plots=True), Report("test", ("--metric", "test"))])


def extras(out: Path) -> dict:
    """arm_facts, the number of completed runs and of seeds, and the lowest and highest final
    train acc of the completed runs."""
    facts = arm_facts(out)
    runs = [r for r in json.loads((out / "report.json").read_text())["runs"] if r["status"] == "completed"]
    train = [r["train"]["acc"] for r in runs]
    facts["runs"], facts["seeds"] = str(len(runs)), str(len({r["seed"] for r in runs}))
    facts["min_train_acc"], facts["max_train_acc"] = fmt(min(train)), fmt(max(train))
    facts["_claims"] = claims(lambda: [])
    return facts
