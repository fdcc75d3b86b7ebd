"""which_regulariser: the components of a regulariser stack, from a factorial design.

STUDY: its sweeps (the overrides after `+experiment=which_regulariser`) and its reports.
extras(out): no figure of its own (the report's plots); the effects' facts and checked claims.
"""

from __future__ import annotations

import json
from pathlib import Path

from studylib import Report, Study, Sweep, arm_facts, claims, factorial_facts, fmt, groups

STUDY = Study(  # a factorial design: every arm runs the same >= 2 seeds
    sweeps=[Sweep(smoke=("seed=0,1",))],
    reports=[Report("", plots=True), Report("test", ("--metric", "test"))])


def extras(out: Path) -> dict:
    """From the components tables (val: report.json, test: report_test.json): '{c}.{kind}' =
    Δ [95% CI] and '.p' = Holm p ('test.' first for the test split; interactions 'c_x_d'), the
    full stack minus none paired over seeds, and each arm's val acc."""
    facts, eff, phi = factorial_facts(out)
    facts.update(arm_facts(out))  # each arm's val acc ('{arm}.val') among them
    facts["min_train_acc"] = fmt(min(r["train"]["acc"] for r in json.loads(
        (out / "report.json").read_text())["runs"] if r["status"] == "completed"))

    def sign(k: str) -> int:  # +1 / -1: the 95% interval lies above / below 0; 0: it contains 0
        e = eff.get(k)
        return 0 if not e else 1 if e["lo"] > 0 else -1 if e["hi"] < 0 else 0

    facts["_claims"] = claims(lambda: [
        ("l2 alone raises val and test acc (add-one-in)", sign("l2.add_one_in") == sign("test.l2.add_one_in") == 1),
        ("dropout alone: 95% interval contains 0 on val and test", sign("dropout.add_one_in") ==
         sign("test.dropout.add_one_in") == 0),
        ("batch norm and label smoothing alone lower val and test acc",
         all(sign(f"{p}{c}.add_one_in") == -1 for p in ("", "test.") for c in ("batchnorm", "label_smoothing"))),
        ("dropout has the largest Shapley value, positive, on val and test",
         all(sign(f"{p}dropout.shapley") == 1 and max(phi[p], key=phi[p].get) == "dropout" for p in ("", "test."))),
        ("dropout x batch norm and dropout x label smoothing interact positively, dropout x l2 negatively",
         all(sign(f"{p}dropout_x_{c}.interaction") == s for p in ("", "test.")
             for c, s in (("batchnorm", 1), ("label_smoothing", 1), ("l2", -1)))),
        ("full stack vs none: interval contains 0 on val, below 0 on test",
         sign("full_minus_none") == 0 and sign("test.full_minus_none") == -1),
        ("every run fits the training set (train acc >= 0.99)", float(facts["min_train_acc"]) >= 0.99),
        ("l2 alone is the best arm by mean val acc", max(groups(out), key=lambda g: g["val"]["acc"]["mean"])["name"] == "l2"),
        ("all six interactions: Holm p < 0.05 on val", all(e["p_holm"] < 0.05 for k, e in eff.items()
                                                           if k.endswith(".interaction") and "." not in k[:k.index("_x_")])),
        # the table's interaction is the whole difference of differences (the ±½-coded
        # coefficient); Yates' interaction effect is half that
        ("five of the six interactions exceed l2's main effect in size as the table gives them, three at "
         "Yates' half", [sum(abs(e["delta"]) / h > eff["l2.main"]["delta"] for k, e in eff.items()
                             if k.endswith(".interaction") and not k.startswith("test.")) for h in (1, 2)] == [5, 3]),
    ])
    return facts
