"""The `vectorized` Hydra launcher: a sweep's compatible jobs train as one stacked model.

    regablate run -m hydra/launcher=vectorized +reg=none,dropout,batchnorm seed=0,1,2,3,4

Only jobs of regablate's own task function (`regablate.cli.run.hydra_main`) stack: a sweep of any
other Hydra app (one that reuses regablate's configs, say) runs through its own task function,
job by job, exactly as under Hydra's basic launcher.

Every job's config is composed as BasicLauncher composes it (same sweep dir, same subdir
numbering, the same `.hydra/` files and job log) and resolved once. A job whose run dir
`regablate.rundir.claim` refuses (it holds a run, or another process writes it) is refused here: nothing
is written, and its JobReturn is FAILED with the RunRefused. Jobs that can share a stacked model
are grouped (`regablate.vectorized.grouping`), split into chunks of at most `max_members`, and
each chunk claims its members' run dirs and trains as one job of K members that writes every
member's own run dir. Any other job (another model, a regulariser without a stacked form, an
invalid config, a run that trainer.resume=auto skips or continues) runs the ordinary way, through
`hydra.core.utils.run_job` and the task function, with a one-line note; the task gets the config
already resolved.

`executor=slurm` sends each chunk to SLURM as one submitit job (`regablate.vectorized.remote`,
one job array per sweep): the job claims the members' run dirs, writes Hydra's files, trains the
chunk and stops on SIGTERM/SIGUSR2 with every member `interrupted`; the launcher waits for every
chunk and makes each member's JobReturn from its summary.json (a job that returned nothing:
JobLost, its runs left `running` recorded `interrupted`). Refused and ordinary jobs are handled
here as under `local`, the ordinary ones in this process while SLURM trains the chunks.

This module is imported by Hydra's plugin discovery on every `regablate` command, so it
imports torch and the trainer only when a sweep is launched. Hydra executes it without an
entry in sys.modules, so no `from __future__ import annotations` here: dataclasses would fail.
"""

import copy
import functools
import logging
import os
import pickle
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class VectorizedLauncherConf:
    _target_: str = "hydra_plugins.regablate_vectorized.vectorized_launcher.VectorizedLauncher"
    # OmegaConf reads this dataclass: Optional, not `int | None`
    max_members: Optional[int] = None  # noqa: UP045  members per chunk; null = as many as fit in memory
    memory_fraction: float = 0.5  # share of free memory the default max_members may plan for
    # local: chunks train in this process; slurm: each chunk is one SLURM job, through submitit
    executor: str = "local"
    # submitit's settings of those jobs: partition, timeout_min, cpus_per_task, mem_gb,
    # gpus_per_node, and any other of submitit's SlurmExecutor (account, qos, constraint, ...)
    # (hydra.launcher.slurm.partition=gpu, or +hydra.launcher.slurm.qos=high for one not listed)
    slurm: dict[str, Any] = field(default_factory=lambda: {
        "partition": None, "timeout_min": 60, "cpus_per_task": None, "mem_gb": None,
        "gpus_per_node": None})


ConfigStore.instance().store(group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf,
                             provider="regablate")


@dataclass
class _Job:
    idx: int
    overrides: list[str]
    config: DictConfig  # the job's full config, hydra.runtime.output_dir set
    run_dir: Path
    resolved: Optional[DictConfig] = None  # noqa: UP045  the task's config, resolved once
    task: Optional[DictConfig] = None  # noqa: UP045  the task's config without `hydra`, unresolved
    hydra: Optional[DictConfig] = None  # noqa: UP045  HydraConfig's copy of the job's `hydra` node


EXECUTORS = ("local", "slurm")


def _slurm_parameters(slurm: Any) -> dict:
    """hydra.launcher.slurm as submitit.AutoExecutor's parameters (`partition` ->
    `slurm_partition`); a ConfigError naming a key submitit does not know."""
    import submitit

    from regablate.errors import ConfigError

    given = OmegaConf.to_container(slurm, resolve=True) if isinstance(slurm, DictConfig) else dict(slurm or {})
    generic = submitit.AutoExecutor._valid_parameters()
    specific = submitit.SlurmExecutor._valid_parameters()
    params = {"name": "regablate-stacked"}
    for key, value in given.items():
        if value is None:  # not set: submitit's default
            continue
        bare = key[len("slurm_"):] if key.startswith("slurm_") else key
        if key in generic:
            params[key] = value
        elif bare in specific:
            params[f"slurm_{bare}"] = value
        else:
            raise ConfigError(f"hydra.launcher.slurm.{key}", value,
                              "not a setting of submitit's SLURM executor; allowed: "
                              + ", ".join(sorted(generic | specific)))
    return params


def _resolved_config(container: dict) -> Optional[DictConfig]:  # noqa: UP045
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


def _parse(overrides: Sequence[str]) -> Optional[list]:  # noqa: UP045
    """Hydra's parse of the overrides; None if they cannot be parsed here (Hydra reports that
    itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(overrides=list(overrides))
    except Exception:
        return None


def _shape_of(loader: Any, parsed: list) -> tuple:
    return tuple((o.key_or_group, None) if _plain_value(o, loader) else o.input_line for o in parsed)


def _shape(loader: Any, overrides: list[str]) -> Optional[tuple]:  # noqa: UP045
    """The overrides with plain values blanked out: jobs of one shape compose the same config
    up to those values. None if they cannot be parsed here (Hydra reports that itself)."""
    parsed = _parse(overrides)
    return None if parsed is None else _shape_of(loader, parsed)


def _copy(cfg: DictConfig) -> DictConfig:
    """copy.deepcopy(cfg), three times faster: a pickle round trip, which OmegaConf supports
    and which keeps every node's state as deepcopy does (flags, types, metadata); deepcopy
    itself if some value does not pickle."""
    try:
        return pickle.loads(pickle.dumps(cfg))
    except Exception:
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


def _to_yaml(cfg: Any) -> str:
    """`OmegaConf.to_yaml(cfg)`, emitted by libyaml where it is installed (the same text, a
    third of the time: 30 jobs' three `.hydra` files took 0.4 s)."""
    dumper = _c_dumper()
    if dumper is None:
        return OmegaConf.to_yaml(cfg)
    import yaml

    return yaml.dump(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True), Dumper=dumper,
                     default_flow_style=False, allow_unicode=True, sort_keys=False)


def _save_yaml(cfg: Any, filename: str, output_dir: Path) -> None:
    """hydra.core.utils._save_config, with `_to_yaml`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(str(output_dir / filename), "w", encoding="utf-8") as file:
        file.write(_to_yaml(cfg))


def _refusal(run_dir: Path, cfg: dict) -> Any:
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


class VectorizedLauncher(Launcher):
    def __init__(self, max_members: int | None = None, memory_fraction: float = 0.5,
                 executor: str = "local", slurm: Any = None) -> None:
        super().__init__()
        self.executor, self.slurm = executor, slurm
        self.submitted: list[tuple[list[Any], list[_Job]]] = []  # chunks sent to SLURM
        if max_members is not None and max_members < 1:
            raise ValueError(f"hydra.launcher.max_members must be >= 1, got {max_members}")
        if not 0 < memory_fraction <= 1:
            raise ValueError(f"hydra.launcher.memory_fraction must be in (0, 1], got {memory_fraction}")
        self.max_members, self.memory_fraction = max_members, memory_fraction
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from regablate.errors import ConfigError

        if self.executor not in EXECUTORS:  # here, not in __init__: Hydra wraps what that raises
            raise ConfigError("hydra.launcher.executor", self.executor, "allowed: " + ", ".join(EXECUTORS))
        self.slurm_params = _slurm_parameters(self.slurm) if self.executor == "slurm" else {}
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self._remember_compositions(hydra_context.config_loader)

    def _remember_compositions(self, loader: Any) -> None:
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

    # -- the sweep ---------------------------------------------------------------------------
    def _runs_regablate(self) -> bool:
        """Whether the task function is regablate's own (hydra.main hands it over undecorated)."""
        from regablate.cli.run import hydra_main

        return self.task_function is getattr(hydra_main, "__wrapped__", None)

    def composes_every_job_first(self, batch: Sequence[Sequence[str]]) -> bool:
        """Whether `launch` composes every job of the batch before it runs any (regablate's own
        jobs; another task's go through BasicLauncher, which composes each as it runs it), so
        the sweeper's validation of the batch would only compose it twice."""
        return self._runs_regablate()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher

        from regablate.rundir.claim import RunRefused
        from regablate.vectorized import grouping

        if not self._runs_regablate():
            log.info("The task function is not regablate's: every job runs through it, as under "
                     "the basic launcher")
            basic = BasicLauncher()
            basic.setup(hydra_context=self.hydra_context, task_function=self.task_function, config=self.config)
            return basic.launch(job_overrides, initial_job_idx)
        # every job composed before anything else: a composition error stops the batch here,
        # as Hydra's validation of the batch would (the sweeper skips it: composes_every_job_first)
        jobs = [self._compose(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, stacked where they can share a model")
        members, ordinary, results = [], [], {}
        shared: dict = {}  # the members' data sets, one per distinct dataset and data_seed
        for job in jobs:
            kind = self._classify(job, shared)
            if isinstance(kind, str):
                ordinary.append((job, kind))
            elif isinstance(kind, RunRefused):
                results[job.idx] = self._refuse(job, kind)
            else:
                members.append(kind)
        by_job = {job.idx: job for job in jobs}
        self.submitted = []
        for number, grp in enumerate(grouping.group(members), 1):
            results.update(self._launch_group(number, grp, by_job))
        pending = self._submit() if self.submitted else None
        for job, reason in ordinary:  # in this process, while SLURM trains the chunks
            log.info(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))}  [ordinary: {reason}]")
            results[job.idx] = self._run_ordinary(job)
        if pending is not None:
            results.update(self._collect(pending))
        return [results[job.idx] for job in jobs]

    def _compose(self, idx: int, overrides: list[str]) -> _Job:
        """The job's config as BasicLauncher and run_job make it (job id/num, output dir)."""
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        out = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                           str(OmegaConf.select(config, "hydra.sweep.subdir")))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(out)
        return _Job(idx, overrides, config, Path(config.hydra.runtime.output_dir))

    def _task_container(self, job: _Job) -> dict[str, Any]:
        """The task's config resolved (HydraConfig set as for the job). Keeps the task's config
        (a copy of every key but `hydra`: copying `hydra` too and deleting it costs 3x) and
        HydraConfig's node for `_open_job`."""
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(job.config)
        job.hydra = HydraConfig.instance().cfg
        try:
            task = OmegaConf.masked_copy(job.config, [k for k in job.config if k != "hydra"])
            OmegaConf.set_struct(task, OmegaConf.is_struct(job.config))
            job.task = task
            return OmegaConf.to_container(task, resolve=True)
        finally:
            HydraConfig.instance().cfg = previous

    def _classify(self, job: _Job, shared: dict) -> Any:
        """A grouping.Member, the RunRefused that refuses the job, or the reason the job runs
        the ordinary way. Resolves the job's config (once: an ordinary job's task gets it).
        `shared`: data sets by `grouping.data_key`, so members of one data set hold one copy."""
        from regablate.config.settings import load_settings
        from regablate.errors import ConfigError
        from regablate.vectorized.grouping import make_member, not_stackable

        try:
            cfg = self._task_container(job)
        except Exception as e:  # an interpolation that does not resolve, say
            return f"config does not resolve ({type(e).__name__})"
        job.resolved = _resolved_config(cfg)
        refused = _refusal(job.run_dir, cfg)
        if refused is not None:
            return refused
        hydra_job = job.config.hydra.job
        if (job.run_dir / "summary.json").exists():
            # trainer.resume=auto: a member of an interrupted stacked chunk is stacked again, as
            # that chunk, from its last.pt; any other run is skipped or continued the ordinary way
            from regablate.vectorized.resume import ORDINARY, resume_member

            if hydra_job.chdir or hydra_job.env_set:
                return ORDINARY
            try:
                s = load_settings(cfg)
            except ConfigError:
                return ORDINARY
            if not_stackable(s):
                return ORDINARY
            try:
                return resume_member(job.idx, cfg, job.run_dir, s, shared)
            except Exception as e:  # the ordinary run meets it again and reports it
                return f"{ORDINARY} ({type(e).__name__}: {e})"
        if hydra_job.chdir or hydra_job.env_set:
            return "hydra.job.chdir / env_set are per job"
        try:
            s = load_settings(cfg)
        except ConfigError:
            return "invalid config (recorded in its run dir)"
        reason = not_stackable(s)
        if reason:
            return reason
        try:
            return make_member(job.idx, cfg, job.run_dir, s, shared)
        except ConfigError:
            return "invalid config (recorded in its run dir)"
        except Exception as e:  # the ordinary run meets it again and records it
            return f"could not be built ({type(e).__name__}: {e})"

    # -- stacked groups ----------------------------------------------------------------------
    def _launch_group(self, number: int, members: list[Any], by_job: dict[int, _Job]) -> dict[int, JobReturn]:
        from regablate.vectorized import budget, grouping

        limit = self.max_members or budget.default_max_members(members[0], self.memory_fraction)
        parts = grouping.chunks(members, limit)
        jobs = " ".join(f"#{m.job}" for m in members)
        log.info(f"Stacked group {number}: K={len(members)} members in {len(parts)} chunk(s) "
                 f"of <= {limit}: {jobs}")
        for m in members:
            log.info(f"\t#{m.job} : {' '.join(filter_overrides(by_job[m.job].overrides))}")
        results = {}
        for c, part in enumerate(parts, 1):
            if self.executor == "slurm":  # trained by `_submit`'s job, which claims the run dirs
                self.submitted.append((part, [by_job[m.job] for m in part]))
            else:
                results.update(self._launch_chunk(part, [by_job[m.job] for m in part], c, len(parts)))
        return results

    def _launch_chunk(self, members: list[Any], jobs: list[_Job], c: int, n: int) -> dict[int, JobReturn]:
        """Claim every member's run dir, train those claimed while holding them; a member
        refused here (another process took its dir since) is left untouched."""
        from regablate.rundir.claim import RunRefused, claim

        results, kept_members, kept_jobs = {}, [], []
        with ExitStack() as held:
            for m, job in zip(members, jobs):
                try:
                    held.enter_context(claim(m.run_dir, m.s.trainer.resume))
                except RunRefused as e:
                    results[job.idx] = self._refuse(job, e)
                else:
                    kept_members.append(m)
                    kept_jobs.append(job)
            if kept_members:
                results.update(self._train_chunk(kept_members, kept_jobs, c, n))
        return results

    def _train_chunk(self, members: list[Any], jobs: list[_Job], c: int, n: int) -> dict[int, JobReturn]:
        from regablate.cli.run import describe
        from regablate.vectorized.trainer import VectorizedTrainer

        assert self.config is not None and self.hydra_context is not None
        rets = [self._open_job(job) for job in jobs]
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        threads = max(m.s.trainer.threads for m in members)
        if threads:  # as regablate.cli.run.place_job does for an ordinary job
            import torch

            torch.set_num_threads(threads)
        try:
            summaries, stats = VectorizedTrainer(members).fit()
        except Exception as e:
            log.error(f"  chunk {c}/{n} failed: {type(e).__name__}: {e}")
            for ret in rets:
                ret.status, ret.return_value = JobStatus.FAILED, e
        else:
            k = len(members)
            log.info(f"  chunk {c}/{n}: K={k}, {stats.steps} steps in {stats.seconds:.1f} s: "
                     f"{stats.per_member_step_s * 1e3:.3f} ms per member-step, "
                     f"{k * stats.steps / max(stats.seconds, 1e-9):,.0f} member-steps/s")
            from regablate.config.objective import value as objective_value

            for ret, summary, m in zip(rets, summaries, members):  # what hydra_main returns
                ret.status = JobStatus.COMPLETED
                ret.return_value = objective_value(summary, m.s.trainer.objective)
                if m.s.trainer.progress != "none":
                    print(describe(summary, m.run_dir), flush=True)
        for ret, job in zip(rets, jobs):
            self.hydra_context.callbacks.on_job_end(config=job.config, job_return=ret)
        return {job.idx: ret for job, ret in zip(jobs, rets)}

    # -- chunks as SLURM jobs (executor=slurm) ----------------------------------------------
    def _specs(self, members: list[Any], jobs: list[_Job]) -> list[Any]:
        """What the chunk's job needs of each member: its resolved config, run dir and Hydra's
        files as text (written there, once the job holds the dir)."""
        from regablate.vectorized.remote import Spec

        specs = []
        for m, job in zip(members, jobs):
            config = job.config
            task_cfg = job.task
            if task_cfg is None:
                task_cfg = copy.deepcopy(config)
                with read_write(task_cfg), open_dict(task_cfg):
                    del task_cfg["hydra"]
            hydra_cfg = job.hydra if job.hydra is not None else config.hydra
            files = {"config.yaml": _to_yaml(task_cfg), "hydra.yaml": _to_yaml(hydra_cfg),
                     "overrides.yaml": _to_yaml(config.hydra.overrides.task)}
            subdir = None if config.hydra.output_subdir is None else str(config.hydra.output_subdir)
            specs.append(Spec(job.idx, m.cfg, str(job.run_dir), files, subdir))
        return specs

    def _submit(self) -> list[Any]:
        """Every chunk of `self.submitted` as one SLURM job (one job array, one sbatch); an
        sbatch that refuses them, or a job SLURM will never start, is one line (UsageError)."""
        import contextlib
        import io

        import submitit
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        from hydra_plugins.regablate_sweeper.submitit_jobs import _never_starts, sbatch_refusal
        from regablate.errors import UsageError
        from regablate.vectorized.remote import train_chunk

        assert self.config is not None
        folder = Path(str(self.config.hydra.sweep.dir)) / ".submitit" / "%j"
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**self.slurm_params)
        chunks = [self._specs(members, jobs) for members, jobs in self.submitted]
        cpus = self.slurm_params.get("cpus_per_task")
        # the settings by the names sbatch_refusal knows, to be named as hydra.launcher.slurm.*
        named = {k[len("slurm_"):] if k.startswith("slurm_") else k: v for k, v in self.slurm_params.items()}

        def one_line(text: str) -> str:
            return text.replace("hydra.launcher.", "hydra.launcher.slurm.")

        said = io.StringIO()  # submitit prints sbatch's stderr itself before raising it
        try:
            with contextlib.redirect_stderr(said):
                jobs = executor.map_array(train_chunk, chunks, [cpus] * len(chunks))
        except (FailedJobError, FailedSubmissionError) as e:
            raise UsageError(one_line(sbatch_refusal(str(e) or said.getvalue(), named))) from None
        never = _never_starts(str(jobs[0].job_id).split("_")[0], named) if jobs else None
        if never:
            raise UsageError(one_line(never))
        log.info(f"{len(chunks)} stacked chunk(s) submitted to SLURM as job array "
                 f"{str(jobs[0].job_id).split('_')[0]}: {folder.parent}")
        return jobs

    def _collect(self, submitted_jobs: list[Any]) -> dict[int, JobReturn]:
        """Wait for every chunk's job; each member's JobReturn from its run's summary.json."""
        from hydra_plugins.regablate_sweeper.submitit_jobs import _record_interrupted, _state
        from regablate.errors import JobLost

        assert self.config is not None and self.hydra_context is not None
        results = {}
        for (members, jobs), sjob in zip(self.submitted, submitted_jobs):
            try:
                outcome, lost = sjob.result(), None
            except Exception as e:  # UncompletedJobError, FailedJobError: it returned nothing
                outcome, state = {}, _state(sjob)
                label = ("timed out" if "TIMEOUT" in state else
                         "cancelled" if "CANCEL" in state or "PREEMPT" in state else "failed")
                why = (f"{label} (SLURM state {state})" if state not in ("UNKNOWN", "")
                       else f"{label}: {type(e).__name__}")
                if type(e).__name__ == "FailedJobError":  # it raised outside the chunk: its last line
                    lines = [ln for ln in str(e).splitlines() if ln.strip()]
                    why = f"failed: {lines[-1].strip()}" if lines else why
                lost = (label, why)
            for m, job in zip(members, jobs):
                kind, value = outcome.get(job.idx, ("lost", None))
                if kind == "refused":
                    results[job.idx] = self._refuse(job, value)
                    continue
                if kind == "lost":
                    label, why = lost or ("failed", "the chunk's job returned no outcome for it")
                    _record_interrupted(job.run_dir, why)
                    value = JobLost(str(job.run_dir), why, label)
                results[job.idx] = self._member_return(m, job, kind, value)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return results

    def _member_return(self, m: Any, job: _Job, kind: str, value: Any) -> JobReturn:
        """The JobReturn of a member its chunk's job trained (kind "ran": as its summary.json
        says), failed, was interrupted in, or lost."""
        from regablate.cli.run import describe
        from regablate.config.objective import value as objective_value
        from regablate.errors import JobFailed, RunInterrupted
        from regablate.rundir.untrusted import RefusedValue, load_json_safe, read_bounded

        assert self.hydra_context is not None
        ret = self._open_job(job, write=False)
        ret.status = JobStatus.FAILED
        if kind == "ran":
            try:
                summary = load_json_safe(read_bounded(job.run_dir / "summary.json", within=job.run_dir))
            except (OSError, RefusedValue) as e:
                summary = {"status": "failed", "error": f"its summary.json could not be read ({e})"}
            status = summary.get("status") if isinstance(summary, dict) else None
            if status == "completed":
                ret.status = JobStatus.COMPLETED
                ret.return_value = objective_value(summary, m.s.trainer.objective)
                if m.s.trainer.progress != "none":
                    print(describe(summary, m.run_dir), flush=True)
            elif status == "interrupted":
                ret.return_value = RunInterrupted(str(job.run_dir), str(summary.get("error", "a signal")))
            else:
                ret.return_value = JobFailed(str(summary.get("error") if isinstance(summary, dict) else "")
                                             or f"{job.run_dir}: run status {status!r}")
        elif kind == "interrupted":
            ret.return_value = RunInterrupted(str(job.run_dir), str(value))
        else:  # failed (the job's error), lost (JobLost)
            ret.return_value = value
        self.hydra_context.callbacks.on_job_end(config=job.config, job_return=ret)
        return ret

    def _open_job(self, job: _Job, write: bool = True) -> JobReturn:
        """What run_job does before calling the task: Hydra's files, the job log, callbacks.
        HydraConfig's node is the one `_task_container` made for this job (set_config copies
        it); it is this job's alone, so it is the return's hydra_cfg without another copy.
        write=False: no files (a chunk's SLURM job wrote them, holding the run dir)."""
        from regablate.rundir.claim import write_hydra_files

        assert self.hydra_context is not None
        config = job.config
        previous = HydraConfig.instance().cfg
        if job.hydra is None:
            HydraConfig.instance().set_config(config)
        else:
            HydraConfig.instance().cfg = job.hydra
        try:
            ret = JobReturn()
            task_cfg = job.task
            if task_cfg is None:
                task_cfg = copy.deepcopy(config)
                with read_write(task_cfg), open_dict(task_cfg):
                    del task_cfg["hydra"]
            ret.cfg = task_cfg
            hydra_cfg = HydraConfig.instance().cfg
            ret.hydra_cfg = hydra_cfg
            ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
            job.run_dir.mkdir(parents=True, exist_ok=True)
            ret.working_dir = os.getcwd()
            configure_log(config.hydra.job_logging, config.hydra.verbose)
            if write and config.hydra.output_subdir is not None:  # Hydra's own way, where a config asks for it
                out = job.run_dir / str(config.hydra.output_subdir)
                _save_yaml(task_cfg, "config.yaml", out)
                _save_yaml(hydra_cfg, "hydra.yaml", out)
                _save_yaml(config.hydra.overrides.task, "overrides.yaml", out)
            elif write:  # regablate's: the member's run dir is held (`_launch_chunk` claimed it)
                write_hydra_files(job.run_dir, task_cfg, hydra_cfg, config.hydra.overrides.task, to_yaml=_to_yaml)
            self.hydra_context.callbacks.on_job_start(config=config, task_function=self.task_function)
            ret.task_name = JobRuntime.instance().get("name")
            return ret
        finally:
            HydraConfig.instance().cfg = previous

    # -- refused, and the ordinary way ------------------------------------------------------
    def _refuse(self, job: _Job, refused: Exception) -> JobReturn:
        """A refused job's return: FAILED with the RunRefused; it ran nothing and wrote nothing."""
        log.info(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))}  [refused: {refused.why}]")
        ret = JobReturn(overrides=OmegaConf.to_container(job.config.hydra.overrides.task),
                        working_dir=os.getcwd(), status=JobStatus.FAILED)
        ret.return_value = refused
        return ret

    def _run_ordinary(self, job: _Job) -> JobReturn:
        """run_job as BasicLauncher calls it; the task reads the config resolved in _classify."""
        assert self.config is not None and self.hydra_context is not None
        task, resolved = self.task_function, job.resolved
        if resolved is not None:  # .hydra/config.yaml is written unresolved, as Hydra writes it
            task = functools.wraps(task)(lambda unresolved: self.task_function(resolved, unresolved))
        ret = run_job(hydra_context=self.hydra_context, task_function=task,
                      config=job.config, job_dir_key="hydra.sweep.dir",
                      job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret
