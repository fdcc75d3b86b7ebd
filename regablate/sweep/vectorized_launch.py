"""What `hydra/launcher=vectorized` does (the plugin is `hydra_plugins.regablate_vectorized`): a
sweep's compatible jobs train as one stacked model.

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

`executor=slurm` sends each chunk to SLURM as one submitit job (`regablate.sweep.vectorized_slurm`).
Refused and ordinary jobs are handled here as under `local`, the ordinary ones in this process
while SLURM trains the chunks. The job configs (composed once, derived, emitted) are
`regablate.sweep.vectorized_compose`'s.

The plugin makes a `VectorizedLaunch` when Hydra makes the launcher for a sweep; torch and the
trainer are imported only when a sweep is launched.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

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
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from regablate.sweep import vectorized_slurm
from regablate.sweep.vectorized_compose import (
    Job,
    refusal,
    remember_compositions,
    resolved_config,
    save_yaml,
    to_yaml,
)

# the plugin's logger, as before this logic left hydra_plugins/: log configs and job logs name it
log = logging.getLogger("hydra_plugins.regablate_vectorized.vectorized_launcher")

EXECUTORS = ("local", "slurm")
SINGLES = ("auto", "stacked", "ordinary")  # how a chunk of one member trains (`_trains_ordinary`)


class VectorizedLaunch:
    """The launch of the plugin's VectorizedLauncher, which hands it its settings, setup,
    `composes_every_job_first` and `launch`."""

    def __init__(self, max_members: int | None = None, memory_fraction: float = 0.5,
                 single: str = "auto", executor: str = "local", slurm: Any = None) -> None:
        self.executor, self.slurm, self.single = executor, slurm, single
        self.submitted: list[tuple[list[Any], list[Job]]] = []  # chunks sent to SLURM
        self.max_members, self.memory_fraction = max_members, memory_fraction
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from regablate.errors import ConfigError

        if self.max_members is not None and self.max_members < 1:  # here, not in __init__: Hydra
            raise ConfigError("hydra.launcher.max_members", self.max_members, "must be >= 1 (or null: "
                              "as many as fit)")  # wraps what that raises in "Error in call to target"
        if not 0 < self.memory_fraction <= 1:
            raise ConfigError("hydra.launcher.memory_fraction", self.memory_fraction, "must be in (0, 1]")
        if self.executor not in EXECUTORS:
            raise ConfigError("hydra.launcher.executor", self.executor, "allowed: " + ", ".join(EXECUTORS))
        if self.single not in SINGLES:
            raise ConfigError("hydra.launcher.single", self.single, "allowed: " + ", ".join(SINGLES))
        self.slurm_params = vectorized_slurm.slurm_parameters(self.slurm) if self.executor == "slurm" else {}
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        remember_compositions(hydra_context.config_loader)

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
                results[job.idx] = self.refuse(job, kind)
            else:
                members.append(kind)
        by_job = {job.idx: job for job in jobs}
        self.submitted = []
        for number, grp in enumerate(grouping.group(members), 1):
            results.update(self._launch_group(number, grp, by_job))
        pending = vectorized_slurm.submit(self) if self.submitted else None
        for job, reason in ordinary:  # in this process, while SLURM trains the chunks
            log.info(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))}  [ordinary: {reason}]")
            results[job.idx] = self._run_ordinary(job)
        if pending is not None:
            results.update(vectorized_slurm.collect(self, pending))
        return [results[job.idx] for job in jobs]

    def _compose(self, idx: int, overrides: list[str]) -> Job:
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
        return Job(idx, overrides, config, Path(config.hydra.runtime.output_dir))

    def _task_container(self, job: Job) -> dict[str, Any]:
        """The task's config resolved (HydraConfig set as for the job). Keeps the task's config
        (a copy of every key but `hydra`: copying `hydra` too and deleting it costs 3x) and
        HydraConfig's node for `open_job`."""
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

    def _classify(self, job: Job, shared: dict) -> Any:
        """A grouping.Member, the RunRefused that refuses the job, or the reason the job runs
        the ordinary way. Resolves the job's config (once: an ordinary job's task gets it).
        `shared`: data sets by `grouping.data_key`, so members of one data set hold one copy."""
        from regablate.errors import ConfigError
        from regablate.training.settings import load_settings
        from regablate.vectorized.grouping import make_member, not_stackable

        try:
            cfg = self._task_container(job)
        except Exception as e:  # an interpolation that does not resolve, say
            return f"config does not resolve ({type(e).__name__})"
        job.resolved = resolved_config(cfg)
        refused = refusal(job.run_dir, cfg)
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
    def _launch_group(self, number: int, members: list[Any], by_job: dict[int, Job]) -> dict[int, JobReturn]:
        from regablate.vectorized import budget, grouping

        limit = self.max_members or budget.default_max_members(members, self.memory_fraction)
        parts = grouping.chunks(members, limit)
        jobs = " ".join(f"#{m.job}" for m in members)
        log.info(f"Stacked group {number}: K={len(members)} members in {len(parts)} chunk(s) "
                 f"of <= {limit}: {jobs}")
        for m in members:
            log.info(f"\t#{m.job} : {' '.join(filter_overrides(by_job[m.job].overrides))}")
        if members[0].chunk and len(parts) > 1:
            log.info(f"  continues a chunk interrupted after epoch {members[0].chunk[0]} in {len(parts)} "
                     "smaller chunks, each member from its own state and generators")
        results = {}
        for c, part in enumerate(parts, 1):
            if self.executor == "slurm":  # trained by `vectorized_slurm.submit`'s job, which claims the run dirs
                self.submitted.append((part, [by_job[m.job] for m in part]))
            elif self._trains_ordinary(part):
                job = by_job[part[0].job]
                log.info(f"  chunk {c}/{len(parts)}: K=1, #{job.idx} trains the ordinary way "
                         f"(hydra.launcher.single={self.single})")
                results[job.idx] = self._run_ordinary(job)
            else:
                results.update(self._launch_chunk(part, [by_job[m.job] for m in part], c, len(parts)))
        return results

    def _trains_ordinary(self, part: list[Any]) -> bool:
        """Whether a chunk trains as its one member's ordinary run, the same run without the
        stacked path. `single=auto`: a conv member on a GPU does (at K = 1 the stacked form's
        per-step work, a member axis around every kernel, is not amortised: resnet20 ran at 0.63x
        its plain loop on an H100), the rest stay stacked (a stacked MLP alone beats the ordinary
        trainer on a CPU: its gradients by hand, no torch optimiser). A chunk that continues an
        interrupted stacked chunk stays stacked whatever `single` says (its last.pt is the chunk's)."""
        if len(part) != 1 or self.single == "stacked" or part[0].resume is not None or part[0].chunk:
            return False
        return self.single == "ordinary" or (part[0].conv and part[0].x.device.type == "cuda")

    def _launch_chunk(self, members: list[Any], jobs: list[Job], c: int, n: int) -> dict[int, JobReturn]:
        """Claim every member's run dir, train those claimed while holding them; a member
        refused here (another process took its dir since) is left untouched."""
        from regablate.rundir.claim import RunRefused, claim

        results, kept_members, kept_jobs = {}, [], []
        with ExitStack() as held:
            for m, job in zip(members, jobs):
                try:
                    held.enter_context(claim(m.run_dir, m.s.trainer.resume))
                except RunRefused as e:
                    results[job.idx] = self.refuse(job, e)
                else:
                    kept_members.append(m)
                    kept_jobs.append(job)
            if kept_members:
                results.update(self._train_chunk(kept_members, kept_jobs, c, n))
        return results

    def _train_chunk(self, members: list[Any], jobs: list[Job], c: int, n: int) -> dict[int, JobReturn]:
        from regablate.training.job import describe
        from regablate.vectorized.trainer import VectorizedTrainer

        assert self.config is not None and self.hydra_context is not None
        rets = [self.open_job(job) for job in jobs]
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        threads = max(m.s.trainer.threads for m in members)
        if threads:  # as regablate.cli.run.place_job does for an ordinary job
            import torch

            torch.set_num_threads(threads)
        failed = None
        try:
            summaries, stats = VectorizedTrainer(members).fit()
        except Exception as e:
            failed = _without_frames(e)  # its frames hold the chunk's model, data and step
            hint = _memory_hint(e, len(members))
            log.error(f"  chunk {c}/{n} failed: {type(e).__name__}: {e}{hint}")
            if hint and len(members) > 1:  # the sweep's closing command continues in smaller chunks
                failed.continue_with = {"hydra.launcher.max_members": len(members) // 2}
            from regablate.config.objective import value as objective_value
            from regablate.rundir.scan import ended as ended_with

            for ret, m in zip(rets, members):  # a member whose run ended before the failure keeps its end
                ended = ended_with(m.run_dir)
                ret.status, ret.return_value = ((JobStatus.COMPLETED, objective_value(ended, m.s.trainer.objective))
                                                if ended else (JobStatus.FAILED, failed))
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
        if failed is not None:  # what the failed chunk held goes back before the next one starts
            _release_memory(members[0].x.device)
        for ret, job in zip(rets, jobs):
            self.hydra_context.callbacks.on_job_end(config=job.config, job_return=ret)
        return {job.idx: ret for job, ret in zip(jobs, rets)}

    def open_job(self, job: Job, write: bool = True) -> JobReturn:
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
                save_yaml(task_cfg, "config.yaml", out)
                save_yaml(hydra_cfg, "hydra.yaml", out)
                save_yaml(config.hydra.overrides.task, "overrides.yaml", out)
            elif write:  # regablate's: the member's run dir is held (`_launch_chunk` claimed it)
                write_hydra_files(job.run_dir, task_cfg, hydra_cfg, config.hydra.overrides.task, to_yaml=to_yaml)
            self.hydra_context.callbacks.on_job_start(config=config, task_function=self.task_function)
            ret.task_name = JobRuntime.instance().get("name")
            return ret
        finally:
            HydraConfig.instance().cfg = previous

    # -- refused, and the ordinary way ------------------------------------------------------
    def refuse(self, job: Job, refused: Exception) -> JobReturn:
        """A refused job's return: FAILED with the RunRefused; it ran nothing and wrote nothing."""
        log.info(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))}  [refused: {refused.why}]")
        ret = JobReturn(overrides=OmegaConf.to_container(job.config.hydra.overrides.task),
                        working_dir=os.getcwd(), status=JobStatus.FAILED)
        ret.return_value = refused
        return ret

    def _run_ordinary(self, job: Job) -> JobReturn:
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


def _memory_hint(e: Exception, k: int) -> str:
    """For a chunk that ran out of memory: how the sweep continues in smaller chunks (its
    members start again stacked, or continue from their stacked checkpoint where the chunk wrote
    one, in the smaller chunks)."""
    from regablate.training.experiment import out_of_memory

    if not out_of_memory(e):
        return ""
    if k == 1:
        return " (one member alone did not fit: lower trainer.batch_size or trainer.eval_batch_size)"
    return (f" (K={k} members did not fit; continue with hydra.launcher.max_members={k // 2} "
            "trainer.resume=auto)")


def _without_frames(e: BaseException) -> BaseException:
    """`e` and the exceptions it chains, their tracebacks dropped (they hold every frame's locals)."""
    seen, x = set(), e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        x.__traceback__ = None
        x = x.__cause__ or x.__context__
    return e


def _release_memory(device: Any) -> None:
    """Collect the failed chunk's objects and hand CUDA's cached blocks back."""
    import gc

    import torch

    gc.collect()
    if getattr(device, "type", None) == "cuda":
        torch.cuda.empty_cache()
