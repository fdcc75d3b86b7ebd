"""cifar10_recipe: which parts of the standard CIFAR-10 recipe carry a resnet20's gain (GPU).

STUDY: its sweep (`+experiment=cifar10_recipe`, a 2^4 factorial, stacked) and its reports.
extras(out): the components' facts (the report's effects plot and curves are its figures); its
claims are written with the findings, once the runs exist.
"""

from __future__ import annotations

from pathlib import Path

from studylib import Report, Study, Sweep, arm_facts, claims, factorial_facts, run_facts

STUDY = Study(sweeps=[Sweep(smoke=("seed=0,1",))],
              reports=[Report("", plots=True), Report("test", ("--metric", "test"))])


def extras(out: Path) -> dict:
    """factorial_facts, arm_facts and run_facts."""
    facts = {**factorial_facts(out)[0], **arm_facts(out), **run_facts(out)}
    facts["_claims"] = claims(lambda: [])
    return facts
