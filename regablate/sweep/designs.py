"""A design sweep (`hydra.sweeper.design=...`): the sweeper's command with its one stack replaced by
the design's arms (regablate.report.designs: the designs and their arms), each job's overrides
without the settings of components its arm does not run, and the sweep root's `ablation.json`.

    design_arguments("factorial", overrides)   # ["+reg=none,dropout,l2,[dropout,l2]", ...], doc
    write_ablation_json(root, "factorial", ["dropout", "l2"], seeds=[0, 1, 2])

`ablation.json` (the design, the components, the arms, the seeds and the sweep's overrides) is
written once: an existing one that says the same (operational overrides such as
`trainer.resume=auto` aside) is kept, one that differs is refused. Standard library only (PyYAML
to read a preset's regularisers).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from regablate.errors import UsageError
from regablate.report.designs import (
    ABLATION_JSON,
    KEY,
    SCHEMA,
    arms,
    read_ablation_json,
    validate,
)

__all__ = ["reg_override", "ablation_doc", "write_ablation_json", "design_arguments",
           "without_absent_settings"]


def reg_override(arm) -> str:
    """The command-line override that runs one arm: `+reg=none`, `+reg=dropout`,
    `+reg=[dropout,l2]`."""
    arm = tuple(arm)
    if not arm:
        return "+reg=none"
    return f"+reg={arm[0]}" if len(arm) == 1 else f"+reg=[{','.join(arm)}]"


def ablation_doc(design: str, components, seeds, overrides=()) -> dict:
    """What ablation.json holds: {schema, design, components, arms (lists of names), seeds,
    overrides (the sweep's other overrides, as given)}; validated as `validate` does."""
    comps = validate(design, components, seeds)
    return {"schema": SCHEMA, "design": design, "components": list(comps),
            "arms": [list(a) for a in arms(design, comps)], "seeds": list(seeds),
            "overrides": [str(o) for o in overrides]}


def _same_doc(a: dict, b: dict) -> bool:
    """The same ablation: equal but for operational overrides (the command that continues an
    interrupted sweep adds `trainer.resume=auto`; `trainer.progress=plain` computes the same)."""
    from regablate.rundir.group import is_operational

    def science(doc: dict) -> str:
        overrides = doc.get("overrides")
        kept = [o for o in overrides if not (isinstance(o, str) and is_operational(o))] \
            if isinstance(overrides, list) else overrides
        return json.dumps({**doc, "overrides": kept}, sort_keys=True)

    return science(a) == science(b)


def write_ablation_json(root, design: str, components, seeds, overrides=()) -> Path:
    """Write root/ablation.json once, atomically (temp file, fsync, then a hard link that
    cannot replace an existing file). An existing one that says the same is kept; one that
    differs is refused with a UsageError (a sweep root holds one design). Returns its path."""
    from regablate.rundir.atomic import write_atomic

    doc = ablation_doc(design, components, seeds, overrides)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / ABLATION_JSON
    if path.exists() or path.is_symlink():
        _keep_same(root, doc)
        return path
    tmp = root / f".{ABLATION_JSON}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    text = json.dumps(doc, indent=1) + "\n"
    write_atomic(tmp, lambda f: f.write(text))
    try:
        os.link(tmp, path)
    except FileExistsError:
        _keep_same(root, doc)
    except OSError:  # no hard links on this file system: rename, after the check above
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _keep_same(root: Path, doc: dict) -> None:
    old = read_ablation_json(root)
    if old is None or not _same_doc(old, doc):
        what = "unreadable" if old is None else \
            f"design={old.get('design')} over {'+'.join(old.get('components') or [])}"
        raise UsageError(f"{root / ABLATION_JSON} already holds another ablation ({what}); "
                         "give this sweep its own hydra.sweep.dir")


def design_arguments(design: str, overrides, planned_seeds=None) -> tuple[list[str], dict]:
    """A design sweep's command, as the sweeper runs it: Hydra's parsed `overrides` of the
    command with the one `+reg=[c1,...,ck]` stack replaced by a sweep over the design's arms
    (`+reg=none,c1,[c1,c2],...`); returns those override strings and the ablation.json doc.
    Refuses in one line a stack given as a sweep or not at all, or no integer seed sweep.
    `planned_seeds`: the seeds a seeds=auto sweep may run (it gives no seed= sweep)."""
    stacks = [o for o in overrides if o.key_or_group == "reg"]
    if len(stacks) != 1 or stacks[0].is_sweep_override():
        raise UsageError(f"{KEY}={design} ablates one stack: give it as one +reg=[dropout,l2,...] "
                         "list, not as a sweep (the design makes the arms)")
    value = stacks[0].value()
    components = [value] if isinstance(value, str) else list(value)
    seeds = None if planned_seeds is None else list(planned_seeds)
    for o in overrides:
        if o.key_or_group == "seed":
            given = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
            try:
                seeds = [int(s) for s in given]
            except ValueError:
                raise UsageError(f"{KEY}={design}: seed={','.join(given)} is not a list of integer "
                                 "seeds; give e.g. seed=0,1,2,3,4") from None
    comps = validate(design, components, seeds)
    _refuse_overlap(design, comps)
    arm_sweep = ",".join(reg_override(a).split("=", 1)[1] for a in arms(design, comps))
    others = [o.input_line for o in overrides if o is not stacks[0]]
    return [f"+reg={arm_sweep}", *others], ablation_doc(design, comps, seeds, others)


def regularisers_of(preset: str, _seen: tuple = ()) -> frozenset | None:
    """The regularisers a `+reg=` preset runs: its own keys and those of the presets its
    `defaults` list (conf/reg/dropout_l2.yaml: dropout and l2); None for a preset that is not in
    the package's conf/reg (a user's own search path), which is then not checked."""
    import yaml

    from regablate.config.paths import CONF_DIR

    path = CONF_DIR / "reg" / f"{preset}.yaml"
    if preset in _seen or not path.is_file():
        return None
    doc = yaml.safe_load(path.read_text()) or {}
    out = {k for k in doc if k != "defaults"}
    for entry in doc.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            inner = regularisers_of(entry, (*_seen, preset))
            if inner is None:
                return None
            out |= inner
    return frozenset(out)


def _refuse_overlap(design: str, components) -> None:
    """Two components that run the same regulariser (dropout and dropout_l2) make arms that
    compose to one configuration: refused in one line."""
    runs = {c: regularisers_of(c) for c in components}
    for i, a in enumerate(components):
        for b in components[i + 1:]:
            both = (runs[a] or frozenset()) & (runs[b] or frozenset())
            if both:
                parts = sorted(frozenset().union(*(r for r in runs.values() if r)))
                raise UsageError(f"{KEY}={design}: the components {a} and {b} overlap (both run "
                                 f"{', '.join(sorted(both))}): arms would repeat each other; ablate "
                                 f"regularisers that do not share one, e.g. +reg=[{','.join(parts)}]")


def without_absent_settings(job: list[str]) -> list[str]:
    """One job's overrides less the settings of components its arm does not run
    (`reg.dropout.p=0.3` in the arm without dropout: its `reg` holds no `dropout`)."""
    arm: set[str] = set()
    for o in job:
        if o.startswith("+reg="):
            value = o.split("=", 1)[1].strip("[]")
            arm = {c.strip() for c in value.split(",") if c.strip() and c.strip() != "none"}

    def absent(o: str) -> bool:
        key = o.split("=", 1)[0].lstrip("+~")
        parts = key.split(".")
        return len(parts) >= 2 and parts[0] == "reg" and parts[1] not in arm

    return [o for o in job if not absent(o)]
