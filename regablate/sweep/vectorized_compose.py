"""The vectorized launcher's job configs (`regablate.sweep.vectorized_launch`): each job composed
once per process, a job differing from a composed one only in plain values derived from it by
Hydra's own override step, Hydra's `.hydra/` files emitted by libyaml, and the refusal of a run
dir that `regablate.rundir.claim` would refuse.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write


@dataclass
class Job:
    idx: int
    overrides: list[str]
    config: DictConfig  # the job's full config, hydra.runtime.output_dir set
    run_dir: Path
    resolved: DictConfig | None = None  # the task's config, resolved once
    task: DictConfig | None = None  # the task's config without `hydra`, unresolved
    hydra: DictConfig | None = None  # HydraConfig's copy of the job's `hydra` node


def resolved_config(container: dict) -> DictConfig | None:
    """The resolved task config as a DictConfig that resolves nothing again; None if a value
    still reads as an interpolation (a literal "${" from an escaped `\\${`)."""
    return None if "${" in repr(container) else OmegaConf.create(container, flags={"struct": True})


_PRIMITIVE = (int, float, str, bool, type(None))


def _plain_value(o: Any, loader: Any) -> bool:
    """A `key=value` override of a config value (not a group, no +/++/~ prefix, not hydra's,
    not a sweep) whose value is a scalar."""
    return (not (o.is_add() or o.is_force_add() or o.is_delete() or o.is_hydra_override()
                 or o.is_sweep_override()) and o.package is None
            and not loader.repository.group_exists(o.key_or_group)
            and isinstance(o.value(), _PRIMITIVE))


def _parse(overrides: Sequence[str]) -> list | None:
    """Hydra's parse of the overrides; None if they cannot be parsed here (Hydra reports that
    itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(overrides=list(overrides))
    except Exception:
        return None


def _shape_of(loader: Any, parsed: list) -> tuple:
    return tuple((o.key_or_group, None) if _plain_value(o, loader) else o.input_line for o in parsed)


def _shape(loader: Any, overrides: list[str]) -> tuple | None:
    """The overrides with plain values blanked out: jobs of one shape compose the same config
    up to those values. None if they cannot be parsed here (Hydra reports that itself)."""
    parsed = _parse(overrides)
    return None if parsed is None else _shape_of(loader, parsed)


def _copy(cfg: DictConfig) -> DictConfig:
    """copy.deepcopy(cfg): every node's state kept (flags, types, metadata). Not a pickle round
    trip, though that is faster: the package never unpickles (tests/test_hostile_checkpoints.py)."""
    return copy.deepcopy(cfg)


def _derive(base_overrides: list[str], base: DictConfig, overrides: list[str]) -> DictConfig:
    """The composition of `overrides` from the composition `base` of `base_overrides` (of the
    same shape): the differing plain values applied by Hydra's own override step, and
    hydra.overrides.task and hydra.job.override_dirname as Hydra sets them."""
    old, new = _parse(base_overrides), _parse(overrides)
    assert old is not None and new is not None
    return _derive_parsed(old, base, new)


def _derive_parsed(old: list, base: DictConfig, new: list) -> DictConfig:
    """`_derive` of overrides already parsed."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

    changed = [n for o, n in zip(old, new) if o.input_line != n.input_line]
    cfg = _copy(base)
    with read_write(cfg), open_dict(cfg):
        ConfigLoaderImpl._apply_overrides_to_config(changed, cfg)
        app = [o for o in new if not o.is_hydra_override()]
        cfg.hydra.overrides.task = [o.input_line for o in app]
        dirname = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=app, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
    return cfg


def remember_compositions(loader: Any) -> None:
    """Hydra's basic sweeper composes every job of a batch to validate it ("this repeats work
    the launcher will do"), then drops the result (regablate's sweeper leaves that to this
    launcher: `composes_every_job_first`); composing is most of a small job's set-up.
    The launcher keeps those compositions (keyed by master config and overrides, handed
    out as deep copies, `_copy`) so each job is composed once per process, not twice; and a job
    whose overrides differ from a composed one's only in plain values (`seed=3` against
    `seed=0`) is that composition with Hydra's own override step applied (`_derive`), done
    again at each request: one deep copy each time, where keeping it would cost two."""
    compose = loader.load_sweep_config
    kept: dict[tuple, DictConfig] = {}
    bases: dict[tuple, tuple[list, DictConfig]] = {}

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key not in kept:
            parsed = _parse(sweep_overrides)
            shape = _shape_of(loader, parsed) if parsed is not None else None
            base = bases.get((id(master_config), shape)) if shape is not None else None
            if base is not None:
                return _derive_parsed(base[0], base[1], parsed)  # a fresh copy, handed out as it is
            cfg = compose(master_config=master_config, sweep_overrides=sweep_overrides)
            if shape is not None:
                bases[id(master_config), shape] = (parsed, cfg)
            kept[key] = cfg
        return _copy(kept[key])

    loader.load_sweep_config = load_sweep_config


@functools.lru_cache(maxsize=1)
def _c_dumper() -> Any:
    """OmegaConf's YAML dumper (its representers) on libyaml's emitter, or None without libyaml."""
    import yaml
    from omegaconf._utils import get_omega_conf_dumper

    if not yaml.__with_libyaml__:
        return None
    python = get_omega_conf_dumper()
    dumper = type("OmegaConfCDumper", (yaml.CDumper,), {})
    for kind, representer in python.yaml_representers.items():
        dumper.add_representer(kind, representer)
    for kind, representer in python.yaml_multi_representers.items():
        dumper.add_multi_representer(kind, representer)
    return dumper


def to_yaml(cfg: Any) -> str:
    """`OmegaConf.to_yaml(cfg)`, emitted by libyaml where it is installed (the same text, a
    third of the time: 30 jobs' three `.hydra` files took 0.4 s)."""
    dumper = _c_dumper()
    if dumper is None:
        return OmegaConf.to_yaml(cfg)
    import yaml

    return yaml.dump(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True), Dumper=dumper,
                     default_flow_style=False, allow_unicode=True, sort_keys=False)


def save_yaml(cfg: Any, filename: str, output_dir: Path) -> None:
    """hydra.core.utils._save_config, with `to_yaml`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(str(output_dir / filename), "w", encoding="utf-8") as file:
        file.write(to_yaml(cfg))


def refusal(run_dir: Path, cfg: dict) -> Any:
    """The RunRefused that `claim` raises for this existing run dir now, else None (it
    touches nothing: an existing dir is only locked and looked at)."""
    from regablate.rundir.claim import RunRefused, claim

    if not run_dir.is_dir():
        return None
    trainer = cfg.get("trainer")
    try:
        with claim(run_dir, trainer.get("resume", "never") if isinstance(trainer, dict) else "never"):
            return None
    except RunRefused as e:
        return e
