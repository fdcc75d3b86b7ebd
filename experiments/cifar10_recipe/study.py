"""cifar10_recipe: which parts of the standard CIFAR-10 recipe carry a resnet20's gain (GPU).

STUDY: its sweep (`+experiment=cifar10_recipe`, a 2^4 factorial, stacked) and its reports.
extras(out): the components' facts (the report's effects plot and curves are its figures); its
claims are written with the findings, once the runs exist.
"""

from __future__ import annotations

from pathlib import Path

from studylib import Report, Study, Sweep, by_name, ci, claims, factorial_facts, groups, run_facts

STUDY = Study(sweeps=[Sweep(smoke=("seed=0,1",))],
              reports=[Report("", plots=True), Report("test", ("--metric", "test"))])


def extras(out: Path) -> dict:
    """factorial_facts, each arm's test acc ('{arm}.test') and run_facts."""
    facts, _, _ = factorial_facts(out)
    for name, g in by_name(groups(out, "test")).items():
        facts[f"{name.replace('+', '_')}.test"] = ci(g["test"]["acc"])
    facts.update(run_facts(out))
    facts["_claims"] = claims(lambda: [])
    return facts
