"""Ablation designs over a stack S = {c1..ck}: which arms (sub-stacks) each design runs, and the
ablation.json a design sweep leaves at its root, read back.

    arms("factorial", ["dropout", "l2"])      # [(), ("dropout",), ("l2",), ("dropout", "l2")]
    arms("leave_one_out", ["a", "b", "c"])    # S, S∖a, S∖b, S∖c, ∅
    arms("add_one_in", ["a", "b", "c"])       # ∅, {a}, {b}, {c}, S
    validate("factorial", ["dropout"], seeds=[0, 1, 2])   # UsageError, one line

Designs: `factorial` runs all 2^k subsets (k <= 8); `leave_one_out` the full stack, the stack
minus each component, and none (k + 2 arms); `add_one_in` none, each component alone, and the
full stack (k + 2 arms). Every arm runs the same seeds (paired: a seed is a block). Other sweep
axes multiply the design; each of their cells is analysed on its own (regablate.report.effects).

The sweep root's `ablation.json` (the design, the components, the arms, the seeds and the
sweep's overrides; written once by the sweeper, regablate.sweep.designs) is read as data from
someone else (bounded, typed). Standard library only.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from regablate.errors import ConfigError, UsageError

__all__ = ["DESIGNS", "MAX_FACTORIAL", "ABLATION_JSON", "KEY", "SCHEMA", "arms", "validate",
           "infer_design", "read_ablation_json", "find_ablation_json"]

DESIGNS = ("factorial", "leave_one_out", "add_one_in")
MAX_FACTORIAL = 8          # 2^8 = 256 arms
ABLATION_JSON = "ablation.json"
KEY = "hydra.sweeper.design"
SCHEMA = 1
_BAD_NAME = set("+,=[]{}()'\" \t\n/\\")


def _check_design(design) -> str:
    if design not in DESIGNS:
        raise ConfigError(KEY, design, f"allowed: {', '.join(DESIGNS)}")
    return design


def _check_components(design: str, components) -> tuple[str, ...]:
    comps = tuple(components or ())
    if not comps:
        raise UsageError(f"{KEY}={design} needs a stack to ablate: +reg=[dropout,l2,...] with "
                         "at least two regularisers, not +reg=none")
    for c in comps:
        if not isinstance(c, str) or not c or c == "none" or _BAD_NAME & set(c):
            raise UsageError(f"{KEY}={design}: {c!r} is not a regulariser name; give the "
                             "stack as +reg=[dropout,l2,...]")
    if len(set(comps)) != len(comps):
        twice = sorted({c for c in comps if comps.count(c) > 1})
        raise UsageError(f"{KEY}={design}: {', '.join(twice)} named twice in the stack; name "
                         "each regulariser once in +reg=[...]")
    if len(comps) < 2:
        raise UsageError(f"{KEY}={design} needs at least two regularisers in the stack "
                         f"(+reg=[{comps[0]},...]); for one, sweep +reg=none,{comps[0]} "
                         "without a design")
    if design == "factorial" and len(comps) > MAX_FACTORIAL:
        raise UsageError(f"{KEY}=factorial over {len(comps)} regularisers is "
                         f"2^{len(comps)} = {2 ** len(comps)} arms (at most {MAX_FACTORIAL} "
                         f"regularisers); use {KEY}=leave_one_out ({len(comps) + 2} arms)")
    return comps


def arms(design: str, components) -> list[tuple[str, ...]]:
    """The stacks a design runs, each a tuple of components in the order given.

    factorial: every subset, by size (∅ first, S last); leave_one_out: S, S∖c for each c, ∅;
    add_one_in: ∅, {c} for each c, S. Raises ConfigError / UsageError (one line) for an
    unknown design or a stack it cannot ablate (fewer than two components, a repeated one,
    factorial over more than 8)."""
    design = _check_design(design)
    comps = _check_components(design, components)
    if design == "factorial":
        return [a for r in range(len(comps) + 1) for a in itertools.combinations(comps, r)]
    if design == "leave_one_out":
        return [comps, *(tuple(x for x in comps if x != c) for c in comps), ()]
    return [(), *((c,) for c in comps), comps]


def validate(design: str, components, seeds=None) -> tuple[str, ...]:
    """Refuse, in one line naming what to change, a design command that does not make sense:
    an unknown design, a stack of fewer than two components (`+reg=none` included), factorial
    over more than 8, or no `seed=` sweep (every arm must run the same >= 2 seeds). Returns
    the components."""
    design = _check_design(design)
    comps = _check_components(design, components)
    seeds = [] if seeds is None else list(seeds)
    if len(seeds) != len(set(map(repr, seeds))):
        raise UsageError(f"{KEY}={design}: seed= names a seed twice; give distinct seeds, "
                         "e.g. seed=0,1,2,3,4")
    if len(seeds) < 2:
        got = f"seed={seeds[0]}" if seeds else "no seed= sweep"
        raise UsageError(f"{KEY}={design} pairs every arm over seeds, and {got} gives one: "
                         "add a seed sweep, e.g. seed=0,1,2,3,4 (3 or more for p-values)")
    return comps


def infer_design(present, components=None) -> str | None:
    """The design whose arms are exactly the stacks `present` (iterables of names), over
    `components` (default: every name present); None when no design has exactly those
    arms. Where two designs have the same arms (k = 2: all three), factorial is named."""
    have = {frozenset(a) for a in present}
    comps = tuple(sorted(set().union(*have))) if components is None else tuple(components)
    for design in DESIGNS:
        try:
            want = {frozenset(a) for a in arms(design, comps)}
        except (ConfigError, UsageError):
            return None
        if want == have:
            return design
    return None


def _doc_error(path, why: str) -> UsageError:
    from regablate.errors import escape_control

    return UsageError(escape_control(f"{path}: {why}"))


def read_ablation_json(root) -> dict | None:
    """root/ablation.json as a checked dict, None when there is none. Read as data from
    someone else (regular file, size cap, inside `root`, plain JSON values); a file that is
    unreadable or not an ablation raises a UsageError naming it."""
    from regablate.rundir.untrusted import (
        SMALL_CAP,
        RefusedFile,
        RefusedValue,
        load_json_safe,
        read_bounded,
    )

    path = Path(root) / ABLATION_JSON
    if not path.exists() and not path.is_symlink():
        return None
    try:
        doc = load_json_safe(read_bounded(path, SMALL_CAP, within=root))
    except FileNotFoundError:
        return None
    except (RefusedFile, RefusedValue) as e:
        raise _doc_error(path, getattr(e, "reason", None) or str(e)) from None
    except OSError as e:
        raise _doc_error(path, e.strerror or str(e)) from None
    if not isinstance(doc, dict):
        raise _doc_error(path, "not an ablation (a JSON object is expected)")
    if doc.get("schema") != SCHEMA:
        raise _doc_error(path, f"schema {doc.get('schema')!r}; this version reads {SCHEMA}")
    design, comps, listed = doc.get("design"), doc.get("components"), doc.get("arms")
    try:
        if not isinstance(comps, list) or not isinstance(listed, list) or \
                not all(isinstance(a, list) for a in listed):
            raise UsageError("components and arms must be lists")
        want = arms(design, comps)
    except (ConfigError, UsageError) as e:
        raise _doc_error(path, f"not a valid ablation ({e})") from None
    if {frozenset(a) for a in listed} != {frozenset(a) for a in want}:
        raise _doc_error(path, f"its arms are not those of {design} over {'+'.join(comps)}")
    for key in ("seeds", "overrides"):
        if not isinstance(doc.get(key, []), list):
            raise _doc_error(path, f"{key} must be a list")
    return doc


def find_ablation_json(run_dir, levels: int = 4) -> Path | None:
    """The sweep root above a run dir that holds ablation.json (the nearest within `levels`
    parents), or None."""
    d = Path(run_dir)
    for _ in range(levels):
        d = d.parent
        if (d / ABLATION_JSON).exists():
            return d
        if d.parent == d:
            break
    return None
