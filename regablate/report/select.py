"""Which runs, in which groups, under which names, compared with which baseline.

Filters (`--filter KEY=V1,V2`) keep runs whose KEY equals one of the values; KEY is `reg`
(the stack as shown, e.g. `dropout+l2` or `none`, or the name given on the command line,
e.g. `dropout_l2`), a summary field (`status`, `seed`, `dataset`, ...) or a flattened config key
(`optim.lr`). Numbers compare as numbers (`optim.lr=1e-2` matches 0.01).

Groups are runs sharing a group id (same config up to seeds and operational settings; see
regablate.rundir.group and collect). A group's name is its stack's names sorted and joined with `+`
(`none` when empty; stack_name, shared with TensorBoard's `reg` hparam), followed by the settings that tell it apart when several groups share that stack, shortest key
first (`dropout p=0.3`), floats to 4 significant digits (`l2 lam=0.0001235`; more only where 4
would give two groups one name); a group without such a setting (another dataset's) does not
name it.
Seeds and operational settings are never compared: not in names, columns or baseline matching.

Baseline: `--baseline NAME` for every group; else the only group with an empty stack; else,
when there are several (say one per learning rate), the empty-stack group whose settings
outside `reg.*` equal the group's own; a group with no such match gets no comparison.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from regablate.report.collect import Run
from regablate.rundir.group import NOT_IN_GROUP, stack_name

SUMMARY_KEYS = ("status", "group", "dataset", "model", "task", "metric", "seed", "data_seed")
_MISSING = object()


class SelectError(ValueError):
    """Bad --filter or --baseline value; the message names option, value and what is allowed."""


@dataclass(frozen=True)
class Filter:
    key: str
    values: tuple


def parse_filter(text: str) -> Filter:
    key, eq, values = text.partition("=")
    key = key.strip()
    vals = tuple(v.strip() for v in values.split(",") if v.strip())
    if not eq or not key or not vals:
        raise SelectError(f"--filter {text!r}: expected KEY=VALUE[,VALUE...], e.g. reg=dropout")
    return Filter(key, vals)


def check_filters(filters: list[Filter], runs: list[Run]) -> None:
    """Every filter key must name a field some run has."""
    known = {"reg", *SUMMARY_KEYS}.union(*(r.config for r in runs))
    dotted = sorted(k for k in set().union(*(r.config for r in runs)) if "." in k)
    tops = sorted({k.split(".")[0] for k in dotted})
    for f in filters:
        if f.key not in known:
            raise SelectError(f"--filter {f.key}=...: unknown key {f.key!r}; allowed: "
                              f"{', '.join(['reg', *SUMMARY_KEYS])}, or a flattened config key "
                              f"under {', '.join(tops) or '-'} (e.g. {dotted[0] if dotted else '-'})")


def label_value(value, digits: int | None = 4) -> str:
    """A setting as a label shows it: a float to `digits` significant digits (0.0001235, 1e-07,
    0.5), anything else as text; the one formatting of labels (the report's group names, the
    frames' `label`, plots, TensorBoard). `digits=None`: the float as Python writes it."""
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}g}"
    return str(value)


def _same(value, wanted: str) -> bool:
    if value is _MISSING:
        return False
    if str(value) == wanted:
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


def _reg_given(run: Run) -> list[str]:
    return [o.split("=", 1)[1] for o in run.overrides if o.lstrip("+~").startswith("reg=")]


def matches(run: Run, f: Filter) -> bool:
    if f.key == "reg":
        names = {stack_name(run.stack), *_reg_given(run)}
        return any(set(v.split("+")) == set(n.split("+")) for v in f.values for n in names)
    if f.key == "group":  # the report's id, or the one in summary.json
        return any(_same(g, v) for g in (run.group, run.summary["group"]) for v in f.values)
    value = run.summary.get(f.key, _MISSING) if f.key in SUMMARY_KEYS else _MISSING
    if value is _MISSING:
        value = run.config.get(f.key, _MISSING)
    return any(_same(value, v) for v in f.values)


@dataclass(eq=False)
class Group:
    """Runs of one config over seeds; only the completed ones are averaged."""

    id: str
    runs: list = field(default_factory=list)
    name: str = ""
    baseline: Group | None = None

    @property
    def done(self) -> list:
        return [r for r in self.runs if r.done]

    @property
    def stack(self) -> tuple:
        return self.runs[0].stack

    @property
    def config(self) -> dict:
        return self.runs[0].config


def differing(configs: list[dict]) -> list[str]:
    """Config keys (seeds and operational ones aside) whose value is not the same in all of
    `configs`."""
    keys = dict.fromkeys(k for c in configs for k in c if k not in NOT_IN_GROUP)
    return [k for k in keys if len({repr(c.get(k, _MISSING)) for c in configs}) > 1]


def _unused(key: str, configs: list[dict]) -> bool:
    """A regulariser setting that is off (0) wherever it is present: only present or absent,
    it tells nothing (the ViT-only reg.dropout.attn=0 of an MLP's dropout, say)."""
    return key.startswith("reg.") and all(c[key] in (0, None, False) for c in configs if key in c)


def config_columns(groups: list[Group], per_run: bool) -> list[str]:
    """Settings that differ between the runs (or groups) shown, stable within each group."""
    configs = [r.config for g in groups for r in g.runs]
    if per_run:
        return [k for k in differing(configs) if not _unused(k, configs)]
    inside = {k for g in groups for k in differing([r.config for r in g.runs])}
    return [k for k in differing([g.config for g in groups]) if k not in inside and not _unused(k, configs)]


def short_keys(keys: list[str]) -> dict:
    """Shortest dotted suffix that is still unique: reg.dropout.p -> p, dataset.name -> dataset."""
    trimmed = {k: k.removesuffix(".name") for k in keys}
    out = {}
    for key, name in trimmed.items():
        parts = name.split(".")
        for i in range(len(parts) - 1, -1, -1):
            tail = ".".join(parts[i:])
            if sum(t == tail or t.endswith("." + tail) for t in trimmed.values()) == 1:
                out[key] = tail
                break
        else:
            out[key] = key
    return out


def make_groups(runs: list[Run]) -> list[Group]:
    """Groups by group id, named; order: baseline first, then by stack."""
    by_id: dict[str, Group] = {}
    for run in runs:
        by_id.setdefault(run.group, Group(run.group)).runs.append(run)
    by_stack = defaultdict(list)
    for g in by_id.values():
        by_stack[g.stack].append(g)
    for stack, same in by_stack.items():
        keys = differing([g.config for g in same]) if len(same) > 1 else []
        short = short_keys(keys)
        keys.sort(key=lambda k: (len(short[k]), short[k]))
        for digits in (4, None):  # full precision only where 4 digits would merge groups
            for g in same:
                extra = [f"{short[k]}={label_value(g.config[k], digits)}" for k in keys
                         if k in g.config]
                g.name = " ".join([stack_name(stack), *extra])
            if len({g.name for g in same}) == len(same):
                break
    names = defaultdict(list)
    for g in by_id.values():
        names[g.name].append(g)
    for same in names.values():
        if len(same) > 1:  # nothing in the config tells them apart
            for g in same:
                g.name += f" [{g.id[:8]}]"
    return sorted(by_id.values(), key=lambda g: (len(g.stack), g.name))


def _outside_reg(g: Group) -> dict:
    return {k: v for k, v in g.config.items() if not k.startswith("reg.") and k not in NOT_IN_GROUP}


def assign_baselines(groups: list[Group], pool: list[Group], name: str | None) -> None:
    """Set `g.baseline` for each of `groups` from the groups in `pool` (see module doc)."""
    if name is not None:
        found = [b for b in pool if name in (b.name, b.id, *(r.summary["group"] for r in b.runs))]
        if not found:
            allowed = ", ".join(repr(b.name) for b in pool)
            raise SelectError(f"--baseline {name!r}: no such group; groups: {allowed}")
        chosen = {g.id: found[0] for g in groups}
    else:
        empty = [b for b in pool if not b.stack]
        chosen = {}
        for g in groups:
            match = empty if len(empty) == 1 else [
                b for b in empty if _outside_reg(b) == _outside_reg(g)]
            chosen[g.id] = match[0] if len(match) == 1 else None
    for g in groups:
        b = chosen[g.id]
        g.baseline = None if b is None or b.id == g.id else b


def choose(runs: list[Run], filters: list[Filter], baseline: str | None) -> list[Group]:
    """The groups shown, named and given their baselines: the one selection the CLI and
    regablate.summarize share. Reg filters pick the groups shown, never their baselines' pool.
    Returns [] when no group matches the filters."""
    check_filters(filters, runs)
    pool = make_groups([r for r in runs if all(matches(r, f) for f in filters if f.key != "reg")])
    shown = [g for g in pool if all(matches(g.runs[0], f) for f in filters if f.key == "reg")]
    if shown:
        assign_baselines(shown, pool, baseline)
    return shown
