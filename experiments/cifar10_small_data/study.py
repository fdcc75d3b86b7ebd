"""cifar10_small_data: which regulariser helps a resnet20 most on 5,000 CIFAR-10 images (GPU).

STUDY: its sweep (`+experiment=cifar10_small_data`: six arms, stacked) and its reports, each
arm against `none`. extras(out): each arm's facts; its claims are written with the findings,
once the runs exist.
"""

from __future__ import annotations

from pathlib import Path

from studylib import Report, Study, Sweep, arm_facts, claims, run_facts

STUDY = Study(sweeps=[Sweep(smoke=("seed=0,1",))],  # the report's baseline: the arm `none`
              reports=[Report("", plots=True), Report("test", ("--metric", "test"))])


def extras(out: Path) -> dict:
    """arm_facts and run_facts."""
    facts = {**arm_facts(out), **run_facts(out)}
    facts["_claims"] = claims(lambda: [])
    return facts
