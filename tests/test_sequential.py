"""Sequential seeds (regablate.sweep.sequential, its state regablate.report.sequential_state): error
rate by simulation, rounds, sequential.json."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from regablate.report.sequential_state import FILE, SequentialState, Settings, decide
from regablate.rundir.untrusted import RefusedFile
from regablate.sweep.sequential import (
    CODES,
    add_look,
    look_levels,
    plan_next_round,
    simulate,
    simulate_decisions,
    spend,
    t_boundaries,
)

S = Settings(reference="none", metric="val_acc")


def test_schedule_and_spending():
    assert S.schedule == [3, 5, 7, 9, 11, 13, 15, 17, 19, 20]
    assert Settings("r", min_seeds=4, max_seeds=10, step=3).schedule == [4, 7, 10]
    assert spend(1.0, 0.05) == pytest.approx(0.05) and spend(0.0, 0.05) == 0.0
    levels = look_levels(S.schedule, 20, 0.05 / 3, True)
    assert sum(levels) == pytest.approx(0.05 / 3) and levels[0] < 1e-9
    assert all(x >= 0 for x in levels)
    c = t_boundaries(S.schedule, 20, 0.05 / 3, True)
    assert c[0] > 1e4 and 2.5 < c[-1] < 3.2  # O'Brien–Fleming: no early stop on a whim
    assert t_boundaries(S.schedule, 20, 0.05 / 3, True) == c  # deterministic


def test_family_wise_error_holds_under_the_null():
    """3 arms vs a reference, no difference anywhere, 20,000 experiments: the share with any
    arm decided better or worse is ≤ α + 3 MC SE (measured: 0.047 at 100,000 experiments)."""
    r = simulate(S, arms=3, effect=0.0, experiments=20_000, seed=11)
    se = math.sqrt(0.05 * 0.95 / 20_000)
    assert r["any_better_or_worse"] <= 0.05 + 3 * se
    assert r["any_better_or_worse"] > 0.03  # not wastefully conservative either
    one = simulate(S, arms=1, effect=0.0, experiments=20_000, seed=12)  # one arm: all of α
    assert one["any_better_or_worse"] <= 0.05 + 3 * se


def test_a_factorials_main_effects_keep_the_family_wise_error():
    """seeds=auto on a 2^3 factorial: every arm's value ~ N(0, 1) per seed, no effect anywhere;
    the three main effects (regablate.sweep.seed_rounds.main_effects, per seed) decided by the
    same looks: 20,000 experiments, any component decided better or worse in ≤ α + 3 MC SE."""
    from itertools import product

    from regablate.sweep.seed_rounds import main_effects

    rng = np.random.default_rng(21)
    arms = [frozenset(c for c, on in zip("abc", bits) if on) for bits in product((0, 1), repeat=3)]
    values = rng.normal(0.0, 1.0, (20_000, len(arms), S.max_seeds))
    # the per-seed main effects, as main_effects computes them (checked against it on one experiment)
    with_c = np.stack([values[:, [c in a for a in arms]].mean(1) - values[:, [c not in a for a in arms]].mean(1)
                       for c in "abc"], axis=1)
    one = {str(i): dict(enumerate(values[0, i])) for i in range(len(arms))}
    got, _ = main_effects(one, list("abc"), {str(i): a for i, a in enumerate(arms)}, "0")
    assert [got[c][5] for c in "abc"] == pytest.approx(list(with_c[0, :, 5]))
    code, _ = simulate_decisions(S, with_c)
    wrong = np.isin(code, [CODES["better"], CODES["worse"]]).any(axis=1).mean()
    assert wrong <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 20_000) and wrong > 0.03


def test_power_and_seeds_beside_a_fixed_design():
    """True difference of 1 sd of the paired differences in each of 3 arms: per-arm power
    ≈ 0.94 after ≈ 14.6 seeds per arm (reference ≈ 16.5); a fixed-n paired t-test at α/3 needs
    19 seeds per arm for the same power."""
    r = simulate(S, arms=3, effect=1.0, experiments=20_000, seed=13)
    assert 0.92 < r["power"] < 0.97
    assert r["mean_seeds_per_arm"] < 15.5 and r["mean_seeds_reference"] < 17.5
    assert r["fixed_n_same_power"] >= 18
    assert 3 * r["mean_seeds_per_arm"] + r["mean_seeds_reference"] < 4 * r["fixed_n_same_power"]


def test_tost_equivalence_error_and_use():
    s = Settings(reference="none", delta=1.0)
    at_margin = simulate(s, arms=3, effect=1.0, experiments=20_000, seed=14)
    assert at_margin["equivalent"] <= 0.05 / 3 + 3 * math.sqrt(0.0167 / 60_000)
    null = simulate(s, arms=3, effect=0.0, experiments=5_000, seed=15)
    assert null["equivalent"] > 0.5  # equal arms are called equivalent, mostly


def _values(ref: np.ndarray, diffs: np.ndarray, n: int, labels: list) -> dict:
    out = {"none": {i: float(ref[i]) for i in range(n)}}
    for j, label in enumerate(labels):
        out[label] = {i: float(ref[i] + diffs[j, i]) for i in range(n)}
    return out


def test_state_follows_the_vectorised_simulation():
    """The scalar path (plan_next_round / add_look) decides as simulate_decisions does."""
    rng = np.random.default_rng(3)
    labels = ["a", "b", "c"]
    effects = np.array([0.0, 0.8, -1.2])[None, :, None]
    diffs = rng.normal(0, 1, (8, 3, 20)) + effects
    codes, used = simulate_decisions(S, diffs)
    names = {v: k for k, v in CODES.items()}
    for e in range(8):
        ref = rng.normal(0.8, 0.05, 20)
        state = SequentialState(S, labels)
        ran = {label: set() for label in ["none", *labels]}
        while todo := plan_next_round(state):
            for label, seeds in todo.items():
                assert not ran[label] & set(seeds)
                ran[label] |= set(seeds)
            vals = _values(ref, diffs[e], 20, labels)
            add_look(state, {k: {i: v for i, v in vals[k].items() if i in ran[k]} for k in vals})
        got = state.decisions()
        for j, label in enumerate(labels):
            assert got[label] == names[int(codes[e, j])], (e, label)
            assert len(ran[label]) == used[e, j]
        assert len(ran["none"]) == used[e].max()


def test_rounds_only_undecided_arms_get_seeds():
    state = SequentialState(S, ["big", "same"])
    assert plan_next_round(state) == {"none": [0, 1, 2], "big": [0, 1, 2], "same": [0, 1, 2]}
    ref = {i: 0.5 + 0.01 * math.sin(i) for i in range(20)}
    big = {i: ref[i] + 0.3 + 0.01 * math.cos(3 * i) for i in range(20)}
    same = {i: ref[i] + 0.01 * math.cos(5 * i) for i in range(20)}
    n = 3
    while True:
        add_look(state, {"none": dict(list(ref.items())[:n]), "big": dict(list(big.items())[:n]),
                         "same": dict(list(same.items())[:n])})
        todo = plan_next_round(state)
        if state.decisions()["big"] == "better":
            assert "big" not in todo
            break
        n = max(max(v) for v in todo.values()) + 1
    assert todo["none"] == todo["same"] == list(range(n, n + 2))
    arm = state.summary()[0]
    assert arm["label"] == "big" and arm["decision"] == "better" and arm["p"] < 0.05
    assert arm["ci95"][0] > 0 and arm["delta"] == pytest.approx(0.3, abs=0.02)


def test_worse_and_lower_is_better():
    s = Settings(reference="none", metric="val_mse", higher_is_better=False, max_seeds=9)
    state = SequentialState(s, ["higher_mse"])
    rng = np.random.default_rng(0)
    ref = rng.normal(1.0, 0.01, 9)
    arm = ref + 0.2 + rng.normal(0, 0.01, 9)
    while todo := plan_next_round(state):
        n = max(todo["none"]) + 1
        add_look(state, {"none": dict(enumerate(ref[:n])), "higher_mse": dict(enumerate(arm[:n]))})
    assert state.decisions() == {"higher_mse": "worse"}


def test_no_statistic_from_rounding_or_too_few_seeds():
    state = SequentialState(S, ["copy", "lost"])
    ref = {0: 100 / 144, 1: 101 / 144, 2: 119 / 144}
    copy = {k: v + 2 / 144 for k, v in ref.items()}  # equal differences, up to rounding
    looks = add_look(state, {"none": ref, "copy": copy, "lost": {0: 0.7, 1: 0.71}})
    assert looks["copy"].statistic is None
    assert looks["copy"].reason == "differences equal up to float rounding"
    assert looks["lost"].reason == "fewer than 3 seeds (n = 2)"
    assert decide(state.looks) == {"copy": "undecided", "lost": "undecided"}
    assert plan_next_round(state)["copy"] == [3, 4]
    # with a margin: an arm that trains exactly as the reference is equivalent (TOST's se is 0),
    # as the vectorised simulation decides it; equal differences outside ±δ stay undecided
    margin = SequentialState(Settings(reference="none", delta=0.005), ["same", "copy"])
    looks = add_look(margin, {"none": ref, "same": dict(ref), "copy": copy})
    assert (looks["same"].decision, looks["same"].p) == ("equivalent", None)
    assert looks["same"].reason == "differences equal up to float rounding, inside ±0.005: equivalent without a test"
    assert looks["copy"].decision == "undecided" and plan_next_round(margin) == {"none": [3, 4], "copy": [3, 4]}
    code, _ = simulate_decisions(Settings(reference="none", delta=0.005, max_seeds=3), np.zeros((1, 1, 3)))
    assert code[0, 0] == CODES["equivalent"]


def test_sequential_json_round_trip(tmp_path):
    state = SequentialState(Settings(reference="none", delta=0.01), ["a", "b"])
    rng = np.random.default_rng(1)
    ref = rng.normal(0.8, 0.01, 20)
    for n in (3, 5):
        add_look(state, {"none": dict(enumerate(ref[:n])),
                         "a": dict(enumerate(ref[:n] + rng.normal(0.02, 0.01, n))),
                         "b": {0: 0.1, 1: 0.2}})
    path = tmp_path / FILE
    state.save(path)
    tree = json.loads(path.read_text())
    assert tree["settings"]["delta"] == 0.01 and tree["schedule"][0] == 3
    assert set(tree["arms"][0]) >= {"label", "n", "decision", "delta", "ci95", "p"}
    assert tree["looks"][0]["arms"]["a"]["boundary"] > 1e4
    back = SequentialState.load(path)
    assert back.to_json() == state.to_json()
    assert plan_next_round(back) == plan_next_round(state)
    tree["looks"][0]["arms"]["a"]["decision"] = "maybe"
    path.write_text(json.dumps(tree))
    with pytest.raises(ValueError, match="look 0, arm 'a' malformed"):
        SequentialState.load(path)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(RefusedFile):
        SequentialState.load(fifo)
    path.write_text('{"schema": 1, "settings": {"reference": "none", "min_seeds": 1}}')
    with pytest.raises(ValueError, match="min_seeds=1"):
        SequentialState.load(path)


def test_settings_checked():
    for bad in ({"alpha": 0}, {"max_seeds": 2}, {"step": 0}, {"delta": -1.0}, {"min_seeds": 2}):
        with pytest.raises(ValueError, match="sequential settings"):
            Settings(reference="none", **bad)
    with pytest.raises(ValueError, match="arms"):
        SequentialState(S, ["none"])
