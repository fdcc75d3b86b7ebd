"""`hydra.sweeper.seeds=auto`: a sweep that adds seeds in rounds until each arm is decided.

The sweep's jobs without seeds are its arms (an arm's label: the overrides in which it differs
from the others, `+reg=dropout`, `reg.dropout.p=0.95`). Round 1 runs seeds 0..min_seeds−1 of
every arm; after each round each arm is compared, paired over seeds, with the reference arm
(default: the arm without a regulariser, else the first) by `regablate.sweep.sequential`'s
group-sequential test (O'Brien–Fleming-type alpha spending within an arm, Bonferroni over arms:
family-wise error ≤ alpha over arms and looks), and the next round runs the next seeds of the
reference and of the arms still undecided, until all are decided or max_seeds is reached. Each
round is one launcher batch. Every job runs with `trainer.resume=auto`, so the same command
re-run after a kill (or the one that continues it: operational settings do not tell arms apart)
replays the rounds from the run dirs (finished runs are not repeated) and reaches the same
decisions. `sequential.json` at the sweep root holds the settings and every look.

With an ablation design (`hydra.sweeper.design`) each look decides the design's own contrasts:
`leave_one_out` compares every arm with the full stack S (S∖c − S is −(v(S) − v(S∖c)): S∖c
decided `worse` means c helps; ∅ − S, the whole stack), `add_one_in` with none ({c} − ∅, S − ∅),
and `factorial` decides each component's main effect, per seed d_c = mean_{A∋c} v(A) −
mean_{A∌c} v(A) over all 2^k arms (`main_effects`), by the same test with the components as its
"arms" (Bonferroni over k); every arm then runs every round's seeds while any component is
undecided. Other sweep axes beside a design (each cell would need its own decisions) and another
reference are refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

from regablate.errors import ConfigError, UsageError
from regablate.rundir.group import is_operational
from regablate.rundir.group import override_key as _key

SPLITS = ("val", "test", "gap")


def settings_of(reference_label: str, *, metric: str, min_seeds: int, max_seeds: int, step: int,
                alpha: float, delta, contrast: str = "arm") -> object:
    """`regablate.report.sequential_state.Settings` from the sweeper's keys; a bad value is one line."""
    from regablate.report.sequential_state import Settings

    if metric not in SPLITS:
        raise ConfigError("hydra.sweeper.metric", metric, f"allowed: {', '.join(SPLITS)}")
    try:
        return Settings(reference=reference_label, metric=metric, min_seeds=min_seeds,
                        max_seeds=max_seeds, step=step, alpha=alpha, delta=delta, contrast=contrast)
    except ValueError as e:
        raise UsageError(f"hydra.sweeper.seeds=auto: {e}") from None


def arm_labels(jobs: list[list[str]]) -> dict[str, list[str]]:
    """{label: the job's overrides} for the sweep's seedless jobs; a label is the overrides in
    which the job differs from the others (all of them for a single job)."""
    common = set.intersection(*(set(j) for j in jobs)) if len(jobs) > 1 else set()
    out: dict[str, list[str]] = {}
    for job in jobs:
        label = " ".join(o for o in job if o not in common) or " ".join(job) or "(all defaults)"
        out[label] = job
    return out


def pick_reference(labels: dict[str, list[str]], given) -> str:
    """The reference arm: `given` (a label), else the arm without a regulariser, else the first."""
    if given is not None:
        if given not in labels:
            raise ConfigError("hydra.sweeper.reference", given, "one of the arms: " +
                              "; ".join(labels))
        return given
    for label, job in labels.items():
        regs = [o.split("=", 1)[1] for o in job if _key(o) == "reg" and "=" in o]
        if not regs or regs[-1] in ("none", "[]", "{}"):
            return label
    return next(iter(labels))


def design_reference(labels: dict[str, list[str]], ablation: dict, given) -> str:
    """The label of the arm a design sweep's seeds=auto compares the others with (see the module
    doc); what it cannot decide is refused in one line."""
    from regablate.sweep.designs import reg_override

    design, arms = ablation["design"], ablation["arms"]
    if len(labels) != len(arms):
        raise UsageError(f"hydra.sweeper.seeds=auto with hydra.sweeper.design={design} decides one "
                         f"design's contrasts ({len(arms)} arms), not {len(labels)} arms: sweep the other "
                         "axes in sweeps of their own")
    want = reg_override(arms[0] if design == "leave_one_out" else ())  # S, or ∅ (a factorial's, nominal)
    reference = next(label for label, job in labels.items() if want in job)
    if given is not None and given != reference:
        what = "decides main effects" if design == "factorial" else f"compares each arm with {reference!r}"
        raise ConfigError("hydra.sweeper.reference", given, f"the {design} design {what} (its contrasts): "
                          "leave hydra.sweeper.reference out")
    return reference


def main_effects(values: dict, components: list[str], arm_of: dict, reference: str) -> tuple[dict, float]:
    """A factorial's per-seed main effects as `add_look` takes them: ({reference: {seed: 0},
    c: {seed: d_c}}, the size of the arms' values), d_c = mean_{A∋c} v(A) − mean_{A∌c} v(A)
    over the seeds every arm holds; `values`: {arm label: {seed: value}}, `arm_of`: {arm
    label: frozenset of its components}."""
    import math

    seeds = sorted(set.intersection(*(set(v) for v in values.values()))) if values else []
    out: dict = {reference: {seed: 0.0 for seed in seeds}}
    for c in components:
        out[c] = {seed: math.fsum(values[a][seed] for a in arm_of if c in arm_of[a]) / (len(arm_of) / 2)
                  - math.fsum(values[a][seed] for a in arm_of if c not in arm_of[a]) / (len(arm_of) / 2)
                  for seed in seeds}
    return out, max((abs(values[a][seed]) for a in values for seed in seeds), default=0.0)


def _value(run, split: str):
    """The run's metric on `split` (val/test: the primary metric; gap), None unless completed."""
    s = run.summary
    if s.get("status") != "completed":
        return None
    if split == "gap":
        return s.get("gap")
    metric = s.get("metric")
    part = s.get(split)
    return part.get(metric) if isinstance(part, dict) else None


def _arm_part(overrides) -> frozenset:
    """The overrides that say which arm a job is: its own less `seed=` and operational settings
    (`trainer.resume=auto`, `trainer.progress=...`: the command that continues a sweep adds them)."""
    return frozenset(o for o in overrides if _key(o) != "seed" and not is_operational(o))


def values(sweep_dir: Path, labels: dict[str, list[str]], split: str) -> tuple[dict, bool | None]:
    """({label: {seed: value}}, higher_is_better) from the run dirs under `sweep_dir`; a run
    belongs to the arm whose overrides are its own, both less `seed=` and operational settings."""
    from regablate.report.collect import collect

    arm_of = {_arm_part(job): label for label, job in labels.items()}
    runs, _ = collect([sweep_dir])
    out: dict[str, dict] = {label: {} for label in labels}
    higher = None
    for run in runs:
        label = arm_of.get(_arm_part(run.overrides))
        seed = run.summary.get("seed")
        if label is None or not isinstance(seed, int):
            continue
        value = _value(run, split)
        if value is not None:
            out[label][seed] = value
            hib = run.summary.get("higher_is_better")
            higher = (hib if split != "gap" else False) if isinstance(hib, bool) else higher
    return out, higher


def prepare_rounds(jobs: list[list[str]], given_reference, ablation: dict | None = None,
                   **keys) -> tuple[dict, str, object]:
    """(arm labels, the reference's label, Settings) of the sweep's seedless `jobs` (of the
    design in `ablation`, its ablation.json doc, if any); a sweep of fewer than two arms or a bad
    setting is refused in one line."""
    labels = arm_labels(jobs)
    if len(labels) < 2:
        raise UsageError("hydra.sweeper.seeds=auto compares arms with a reference: sweep at least two "
                         "arms, e.g. +reg=none,dropout")
    reference = (pick_reference(labels, given_reference) if ablation is None
                 else design_reference(labels, ablation, given_reference))
    contrast = "main_effect" if ablation is not None and ablation["design"] == "factorial" else "arm"
    return labels, reference, settings_of(reference, contrast=contrast, **keys)


def run_rounds(launch, sweep_dir: Path, jobs: list[list[str]], given_reference,
               ablation: dict | None = None, **keys) -> list:
    """Run the rounds; `launch(batch) -> list[JobReturn]` runs one batch of override lists.
    Returns every batch's returns. Writes sequential.json after each look."""
    from dataclasses import replace

    from regablate.report.sequential_state import FILE, SequentialState
    from regablate.sweep.sequential import add_look, plan_next_round

    labels, reference, settings = prepare_rounds(jobs, given_reference, ablation, **keys)
    main = settings.contrast == "main_effect"
    if main:  # the components are what is decided; every arm runs every round
        from regablate.sweep.designs import reg_override

        arm_of = {label: frozenset(a) for a in map(tuple, ablation["arms"])
                  for label, job in labels.items() if reg_override(a) in job}
        state = SequentialState(settings, list(ablation["components"]))
    else:
        state = SequentialState(settings, [label for label in labels if label != reference])
    returns, launched = [], {label: set() for label in labels}
    while todo := plan_next_round(state):
        if main:
            todo = {label: sorted({s for v in todo.values() for s in v}) for label in labels}
        batch = [[*labels[label], f"seed={seed}", "trainer.resume=auto"]
                 for label, seeds in todo.items() for seed in seeds]
        returns.append(launch(batch))
        for label, seeds in todo.items():
            launched[label].update(seeds)
        got, higher = values(sweep_dir, labels, settings.metric)
        got = {label: {seed: v for seed, v in by_seed.items() if seed in launched[label]}
               for label, by_seed in got.items()}  # a replay sees only this round's seeds so far
        if higher is not None and higher != state.settings.higher_is_better:
            state = SequentialState(replace(state.settings, higher_is_better=higher), state.arms,
                                    state.looks)
        look = add_look(state, *(main_effects(got, state.arms, arm_of, reference) if main else (got,)))
        state.save(sweep_dir / FILE)
        shown = "; ".join(f"{label}: {a.decision or '–'} (n={a.n}"
                          + (f", Δ={a.estimate:+.4g}" if a.estimate is not None else "")
                          + (f", p={a.p:.3g})" if a.p is not None else ")")
                          for label, a in look.items())
        what = "on the main effects" if main else f"vs {reference}"
        print(f"regablate: seeds=auto look {len(state.looks)} {what}: {shown}", file=sys.stderr)
    return returns
