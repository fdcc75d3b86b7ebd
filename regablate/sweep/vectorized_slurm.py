"""The vectorized launcher's chunks as SLURM jobs (`hydra.launcher.executor=slurm`,
`regablate.sweep.vectorized_launch`): each chunk is one submitit job (`regablate.vectorized.remote`,
one job array per sweep) that claims the members' run dirs, writes Hydra's files, trains the
chunk and stops on SIGTERM/SIGUSR2 with every member `interrupted`; the launcher waits for every
chunk and makes each member's JobReturn from its summary.json (a job that returned nothing:
JobLost, its runs left `running` recorded `interrupted`). An sbatch that refuses the jobs, or an
array SLURM will never start, is one line (`regablate.sweep.submitit_jobs`).

`launcher` below is the `VectorizedLaunch` whose `submitted` chunks these are.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from regablate.sweep.vectorized_compose import Job, to_yaml

# the plugin's logger, as before this logic left hydra_plugins/: log configs and job logs name it
log = logging.getLogger("hydra_plugins.regablate_vectorized.vectorized_launcher")


def slurm_parameters(slurm: Any) -> dict:
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


def specs(members: list[Any], jobs: list[Job]) -> list[Any]:
    """What the chunk's job needs of each member: its resolved config, run dir and Hydra's
    files as text (written there, once the job holds the dir)."""
    from regablate.vectorized.remote import Spec

    out = []
    for m, job in zip(members, jobs):
        config = job.config
        task_cfg = job.task
        if task_cfg is None:
            task_cfg = copy.deepcopy(config)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
        hydra_cfg = job.hydra if job.hydra is not None else config.hydra
        files = {"config.yaml": to_yaml(task_cfg), "hydra.yaml": to_yaml(hydra_cfg),
                 "overrides.yaml": to_yaml(config.hydra.overrides.task)}
        subdir = None if config.hydra.output_subdir is None else str(config.hydra.output_subdir)
        out.append(Spec(job.idx, m.cfg, str(job.run_dir), files, subdir))
    return out


def submit(launcher: Any) -> list[Any]:
    """Every chunk of `launcher.submitted` as one SLURM job (one job array, one sbatch); an
    sbatch that refuses them, or a job SLURM will never start, is one line (UsageError)."""
    import contextlib
    import io

    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    from regablate.errors import UsageError
    from regablate.sweep.submitit_jobs import never_starts, sbatch_refusal
    from regablate.vectorized.remote import train_chunk

    assert launcher.config is not None
    folder = Path(str(launcher.config.hydra.sweep.dir)) / ".submitit" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**launcher.slurm_params)
    chunks = [specs(members, jobs) for members, jobs in launcher.submitted]
    cpus = launcher.slurm_params.get("cpus_per_task")
    # the settings by the names sbatch_refusal knows, to be named as hydra.launcher.slurm.*
    named = {k[len("slurm_"):] if k.startswith("slurm_") else k: v for k, v in launcher.slurm_params.items()}

    def one_line(text: str) -> str:
        return text.replace("hydra.launcher.", "hydra.launcher.slurm.")

    said = io.StringIO()  # submitit prints sbatch's stderr itself before raising it
    try:
        with contextlib.redirect_stderr(said):
            jobs = executor.map_array(train_chunk, chunks, [cpus] * len(chunks))
    except (FailedJobError, FailedSubmissionError) as e:
        raise UsageError(one_line(sbatch_refusal(str(e) or said.getvalue(), named))) from None
    never = never_starts(str(jobs[0].job_id).split("_")[0], named) if jobs else None
    if never:
        raise UsageError(one_line(never))
    log.info(f"{len(chunks)} stacked chunk(s) submitted to SLURM as job array "
             f"{str(jobs[0].job_id).split('_')[0]}: {folder.parent}")
    return jobs


def collect(launcher: Any, submitted_jobs: list[Any]) -> dict[int, JobReturn]:
    """Wait for every chunk's job; each member's JobReturn from its run's summary.json."""
    from regablate.errors import JobLost
    from regablate.sweep.submitit_jobs import job_state, record_interrupted

    assert launcher.config is not None and launcher.hydra_context is not None
    results = {}
    for (members, jobs), sjob in zip(launcher.submitted, submitted_jobs):
        try:
            outcome, lost = sjob.result(), None
        except Exception as e:  # UncompletedJobError, FailedJobError: it returned nothing
            outcome, state = {}, job_state(sjob)
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
                results[job.idx] = launcher.refuse(job, value)
                continue
            if kind == "lost":
                label, why = lost or ("failed", "the chunk's job returned no outcome for it")
                record_interrupted(job.run_dir, why)
                value = JobLost(str(job.run_dir), why, label)
            results[job.idx] = member_return(launcher, m, job, kind, value)
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return results


def member_return(launcher: Any, m: Any, job: Job, kind: str, value: Any) -> JobReturn:
    """The JobReturn of a member its chunk's job trained (kind "ran": as its summary.json
    says), failed, was interrupted in, or lost."""
    from regablate.config.objective import value as objective_value
    from regablate.errors import JobFailed, RunInterrupted
    from regablate.rundir.untrusted import RefusedValue, load_json_safe, read_bounded
    from regablate.training.job import describe

    assert launcher.hydra_context is not None
    ret = launcher.open_job(job, write=False)
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
    launcher.hydra_context.callbacks.on_job_end(config=job.config, job_return=ret)
    return ret
