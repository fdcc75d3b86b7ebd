"""Hydra's submitit launchers (submitit_local, submitit_slurm, regablate's `cluster`), waiting for
every job of a batch and saying in one line why a job did not return.

Hydra's own `launch` collects `[job.results()[0] for job in jobs]`: the first job that ends
without a result (scancel, a node failure, a time limit hit before the job could write one)
raises submitit's UncompletedJobError with a page of log, and the launcher stops waiting for
the jobs still running. Here every job is waited for; one that returned nothing becomes a
FAILED JobReturn holding a `JobLost` with the scheduler's word for it (`cancelled (SLURM state
CANCELLED by 0)`), and a run it left `running` (killed before its own SIGTERM handler could
record it) is recorded `interrupted`, so that `trainer.resume=auto` continues it. An sbatch that
refuses the jobs (a partition, a GPU request, more CPUs than a node has) is one line naming
the settings to change (`UsageError`, exit 2).

The jobs themselves stop on SIGTERM, SIGUSR2 and preemption through `regablate.cli.run`.
Imported by regablate's sweeper (`regablate.sweep.refusing`) only when a sweep uses a submitit
launcher; `sbatch_refusal`, `never_starts`, `record_interrupted` and `job_state` serve the
vectorized launcher's SLURM chunks too (`regablate.sweep.vectorized_slurm`).
"""

import contextlib
import io
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

# the plugin's logger, as before this logic left hydra_plugins/: log configs and job logs name it
log = logging.getLogger("hydra_plugins.regablate_sweeper.submitit_jobs")

# what sbatch says -> the launcher settings that decide it
_SBATCH_SETTINGS = (
    ("partition", ("partition",)),
    ("gres", ("gpus_per_node", "gres", "gpus_per_task")),
    ("generic resource", ("gpus_per_node", "gres", "gpus_per_task")),
    ("memory", ("mem_gb",)),
    ("cpu count", ("cpus_per_task",)),
    ("account", ("account",)),
    ("qos", ("qos",)),
    ("time limit", ("timeout_min",)),
    ("constraint", ("constraint",)),
)


def is_submitit(launcher: Any) -> bool:
    return type(launcher).__module__.startswith("hydra_plugins.hydra_submitit_launcher")


# why a pending job will never start (squeue's reason): the settings that decide it
_NEVER_STARTS = {
    "PartitionConfig": ("partition", "cpus_per_task", "mem_gb", "gpus_per_node", "nodes", "tasks_per_node"),
    "PartitionNodeLimit": ("partition", "nodes"),
    "PartitionTimeLimit": ("partition", "timeout_min"),
    "BadConstraints": ("constraint", "cpus_per_task", "mem_gb", "gpus_per_node"),
    "InvalidAccount": ("account",),
    "InvalidQOS": ("qos",),
    "ReqNodeNotAvail": ("exclude", "constraint"),
}


def _largest_node(partition: str | None) -> tuple[int, int] | None:
    """(CPUs, memory in MB) of the largest node of the partition (the default one), from sinfo."""
    import subprocess

    cmd = ["sinfo", "-h", "-N", "-o", "%c %m %P"] + (["-p", partition] if partition else [])
    try:
        rows = [ln.split() for ln in subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        return None
    if not partition:
        rows = [r for r in rows if len(r) == 3 and r[2].endswith("*")] or rows
    sizes = [(int(r[0]), int(r[1])) for r in rows if len(r) >= 2 and r[0].isdigit() and r[1].isdigit()]
    return (max(c for c, _ in sizes), max(m for _, m in sizes)) if sizes else None


def _too_big(params: dict) -> list[str]:
    """The settings that ask for more than the largest node of the partition has."""
    node = _largest_node(params.get("partition"))
    if node is None:
        return []
    cpus, mem_mb = node
    keys = []
    if (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1) > cpus:
        keys.append("cpus_per_task")
    if params.get("mem_gb") and params["mem_gb"] * 1024 > mem_mb:
        keys.append("mem_gb")
    return keys


def _named(keys: Sequence[str], params: dict) -> str:
    keys = [k for k in keys if params.get(k) not in (None, "", {}, [])
            and not (k in ("nodes", "tasks_per_node") and params[k] == 1)]
    named = ", ".join(f"hydra.launcher.{k}={params[k]}" for k in keys)
    return f" (set by {named})" if named else ""


def _cluster_hint() -> str:
    return "; change those settings for this cluster (sinfo shows its partitions, CPUs and memory)"


def sbatch_refusal(stderr: str, params: dict) -> str:
    """One line: what sbatch said, and the launcher settings (with their values) to change."""
    said: list[str] = []
    for line in stderr.splitlines():
        line = re.sub(r"^(sbatch: error: )+", "", line.strip())
        line = re.sub(r"^Batch job submission failed: ", "", line).strip()
        if line and line.lower() not in (s.lower() for s in said):
            said.append(line)
    text = "; ".join(said) or "no reason given"
    keys: list[str] = []
    for words, settings in _SBATCH_SETTINGS:
        if words in text.lower():
            keys += [k for k in settings if k not in keys]
    if not keys and "node configuration is not available" in text.lower():  # which: what no node has
        keys = _too_big(params) or ["cpus_per_task", "mem_gb", "gpus_per_node", "nodes", "tasks_per_node"]
    return f"sbatch refused the sweep's jobs: {text}{_named(keys, params)}{_cluster_hint()}"


def never_starts(array_id: str, params: dict) -> str | None:
    """The one-line refusal of a submitted array that SLURM will never start (it asks for more
    than any node of the partition has: squeue's reason PartitionConfig, ...), else None.
    Asked of squeue a few times in the first seconds, while the controller places the jobs."""
    import subprocess
    import time

    for attempt in range(4):
        try:
            out = subprocess.run(["squeue", "-h", "-j", array_id, "-o", "%r"], capture_output=True,
                                 text=True, timeout=30).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return None
        never = [r for r in out if r in _NEVER_STARTS]
        if never:
            subprocess.run(["scancel", array_id], capture_output=True, timeout=30)
            keys = (_too_big(params) if never[0] == "PartitionConfig" else []) or _NEVER_STARTS[never[0]]
            return (f"SLURM will never start the sweep's jobs (squeue: {never[0]}: no node of the "
                    f"partition has what they ask for){_named(keys, params)}"
                    f"{_cluster_hint()}; the jobs were cancelled")
        if not out or any(r not in ("None", "Priority", "Resources") for r in out) or attempt == 3:
            return None
        time.sleep(1)
    return None


def _job_config(launcher: Any, overrides: Sequence[str], idx: int) -> Any:
    """Job `idx`'s config as Hydra's run_job composes it (its job number set)."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = idx
        cfg.hydra.job.id = f"job_id_for_{idx}"
    return cfg


def _dir_of(cfg: Any) -> str:
    return os.path.abspath(os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                        str(OmegaConf.select(cfg, "hydra.sweep.subdir"))))


def _run_dir(launcher: Any, overrides: Sequence[str], idx: int) -> str | None:
    """The run dir job `idx` was given, as Hydra's run_job computes it."""
    try:
        return _dir_of(_job_config(launcher, overrides, idx))
    except Exception:
        return None


def job_state(job: Any) -> str:
    try:
        return str(job.state)
    except Exception:
        return "UNKNOWN"


def _lost(launcher: Any, overrides: Sequence[str], idx: int, job: Any, error: Exception) -> JobReturn:
    """The FAILED JobReturn of a job that returned nothing; its run, if left `running`, is
    recorded `interrupted` (the job is gone: its lock went with it)."""
    from regablate.errors import JobLost

    state = job_state(job)
    label = ("timed out" if "TIMEOUT" in state else "cancelled" if "CANCEL" in state or "PREEMPT" in state
             else "failed")
    if isinstance(error, _Vanished):  # scancel of a task still inside its pending array record
        state, label = "CANCELLED (before it was scheduled: no squeue or sacct record)", "cancelled"
    why = f"{label} (SLURM state {state})" if state not in ("UNKNOWN", "") else f"{label}: {type(error).__name__}"
    if "FailedJobError" == type(error).__name__:  # the job raised outside the task: its last line
        lines = [ln for ln in str(error).splitlines() if ln.strip()]
        why = f"failed: {lines[-1].strip()}" if lines else why
    run_dir = _run_dir(launcher, overrides, idx)
    if run_dir is not None:
        record_interrupted(Path(run_dir), why)
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret.return_value = JobLost(run_dir, why, label)
    return ret


def record_interrupted(run_dir: Path, why: str) -> None:
    """A run left `running` by a job that is gone is recorded `interrupted` (it is resumable
    from its last checkpoint); anything else in the dir is left as it is."""
    import json

    from regablate.rundir.atomic import write_json
    from regablate.rundir.claim import RunRefused, claim

    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        return
    try:
        with claim(run_dir, "auto"):
            summary = json.loads(summary_file.read_text())
            if summary.get("status") == "running":
                write_json(summary_file, {**summary, "status": "interrupted",
                                          "error": f"interrupted: the job was {why}"})
    except (RunRefused, OSError, ValueError):
        pass


def record_unstarted(launcher: Any, overrides: Sequence[str], idx: int, how: str) -> str | None:
    """Job `idx`, stopped by a signal before its run held its dir (while Python, torch and Hydra
    started; SLURM's time-limit warning can come seconds after the start): its run recorded
    `interrupted`, as one stopped a moment later is, so that status and the report count it;
    nothing where the run already has a summary.json or another process holds the dir. Returns
    the run dir (None where the job's config does not compose: its own error says why)."""
    from regablate.cli.run import _failed_summary
    from regablate.rundir.claim import RunRefused, claim

    try:
        cfg = _job_config(launcher, overrides, idx)
        run_dir = Path(_dir_of(cfg))
        container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                           resolve=True)
    except Exception:  # noqa: BLE001
        return None
    try:
        with claim(run_dir, "auto"):
            if not (run_dir / "summary.json").exists():
                _failed_summary(run_dir, container, f"interrupted by {how} before training began", status="interrupted")
    except (RunRefused, OSError):
        pass
    return str(run_dir)


class _Job:
    """What each submitit job runs: the Hydra launcher's own call (compose, run_job, the task),
    with SIGTERM and submitit's warning signal stopping it from the job's first moment, as
    `regablate.training.job.stop_on_cluster_signals` does once the run holds its dir; a job stopped before
    its run began returns that, as a result. Without a `checkpoint` method: submitit does not
    requeue it (a requeued job would meet its own run dir, and the sweep had counted it)."""

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher

    def __call__(self, overrides: list, job_dir_key: str, job_num: int, job_id: str, singleton_state: dict) -> JobReturn:
        from regablate.errors import RunInterrupted
        from regablate.training.job import stop_on_cluster_signals

        try:
            with stop_on_cluster_signals():
                return self.launcher(overrides, job_dir_key, job_num, job_id, singleton_state)
        except KeyboardInterrupt as e:
            how = getattr(e, "signal_name", "SIGINT")
            ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
            run_dir = record_unstarted(self.launcher, overrides, job_num, how)
            ret.return_value = RunInterrupted(run_dir or f"job {job_num}", how)
            return ret


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """hydra_submitit_launcher's BaseSubmititLauncher.launch, waiting for every job."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    from regablate.errors import UsageError

    assert launcher.config is not None and len(job_overrides) > 0
    params = launcher.params
    specific_init_keys = {"max_num_timeout"}
    init_params = {"folder": params["submitit_folder"]}
    init_params.update(**{f"{launcher._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys})
    init_keys = specific_init_keys | {"submitit_folder"}
    executor = submitit.AutoExecutor(cluster=launcher._EXECUTOR, **init_params)
    baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{x if x in baseparams else f"{launcher._EXECUTOR}_{x}": y
                                  for x, y in params.items() if x not in init_keys})
    log.info(f"Submitit '{launcher._EXECUTOR}' sweep output dir : {launcher.config.hydra.sweep.dir}")
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in launcher.config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(launcher.config.hydra.sweep.mode), 8))
    job_params: list[Any] = []
    for idx, overrides in enumerate(job_overrides, initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    said = io.StringIO()  # submitit prints sbatch's stderr itself before raising it
    try:
        with contextlib.redirect_stderr(said):
            jobs = executor.map_array(_Job(launcher), *zip(*job_params))
    except (FailedJobError, FailedSubmissionError) as e:
        if launcher._EXECUTOR != "slurm":
            raise
        raise UsageError(sbatch_refusal(str(e) or said.getvalue(), params)) from None
    if launcher._EXECUTOR == "slurm" and jobs:
        never = never_starts(str(jobs[0].job_id).split("_")[0], params)
        if never:
            raise UsageError(never)
    returns = []
    for (overrides, _, idx, _, _), job in zip(job_params, jobs):
        if launcher._EXECUTOR == "slurm" and _vanished(job):
            returns.append(_lost(launcher, overrides, idx, job, _Vanished()))
            continue
        try:
            returns.append(job.results()[0])
        except Exception as e:  # UncompletedJobError, FailedJobError: the job returned nothing
            returns.append(_lost(launcher, overrides, idx, job, e))
    return returns


class _Vanished(Exception):
    """An array task cancelled before SLURM split it off its array: no squeue, no sacct record."""


VANISHED_AFTER_S = 20  # a task in neither squeue nor sacct this long is gone


def _known_to_slurm(job_id: str) -> bool:
    """Whether squeue or sacct has a record of `job_id` (an array task: ARRAY_TASK)."""
    import subprocess

    for cmd in (["squeue", "-h", "-j", job_id], ["sacct", "-n", "-X", "-j", job_id, "-o", "JobID"]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return True  # cannot tell: leave it to submitit's own wait
        if done.returncode != 0 or done.stdout.strip():  # an error (accounting down): cannot tell
            return True
    return False


def _vanished(job: Any) -> bool:
    """Wait for `job` to finish, as `job.results()` would, but say True instead of waiting for
    ever when the task has no record in squeue or sacct for VANISHED_AFTER_S seconds: a task
    of an array cancelled while the array was still one pending record never gets one, and
    submitit would wait on its state for good."""
    unknown_since = None
    while not job.done():
        if _known_to_slurm(str(job.job_id)):
            unknown_since = None
        elif unknown_since is None:
            unknown_since = time.monotonic()
        elif time.monotonic() - unknown_since > VANISHED_AFTER_S:
            return True
        time.sleep(2)
    return False

