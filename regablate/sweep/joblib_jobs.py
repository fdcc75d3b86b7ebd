"""Hydra's joblib launcher (loky worker processes), with every job's end said as under the other
launchers.

Hydra's own `launch` runs `Parallel(...)(execute_job ...)` and nothing else, so:
- a worker has no SIGTERM handler (`timeout`, `kill`): its run died `running`, with no last.pt;
- Ctrl-C made the parent abort joblib, which SIGKILLs every worker while it writes its run's
  interrupt record: runs were left `running`, some with no checkpoint;
- a worker killed (out of memory, `kill -9`) made loky SIGKILL the others too and joblib raise
  a page of traceback;
- after a `kill -9` of the parent, orphaned workers went on to start the jobs queued for them.

Here each job runs under `stop_on_signals` (SIGINT and SIGTERM stop its run as Ctrl-C does:
checkpointed, recorded `interrupted`, returned as a `RunInterrupted` result). The parent, on its
first SIGINT or SIGTERM, does not abort: it marks the batch stopped (a file the workers look at
before each job), sends SIGTERM to the workers that are running a job (they may not share its
process group: `kill PID`), waits for them to return, and then raises the signal's
KeyboardInterrupt, so the sweep ends as under the basic launcher (the command that continues it).
A second signal aborts at once. A job whose worker finds the batch stopped does not start; one
whose worker finds the parent gone (`kill -9`) ends the worker. A worker that dies ends the batch with every job accounted for: completed runs
as such, the runs left `running` recorded `interrupted` and counted with the reason, the jobs
that never started counted too; the sweeper's closing line continues them (exit 1).
`hydra.launcher.n_jobs` must be a whole number other than 0 (negative: joblib's count back from
the cores, -1 all of them). Imported by regablate's sweeper (`regablate.sweep.refusing`) only
when a sweep uses the joblib launcher.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides

# the plugin's logger, as Hydra's own launch logs under it
log = logging.getLogger("hydra_plugins.hydra_joblib_launcher._core")


def check_n_jobs(value: Any) -> None:
    from regablate.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, int) or value == 0:
        raise ConfigError("hydra.launcher.n_jobs", value, "must be a whole number of worker processes other "
                          "than 0 (negative counts back from the cores: -1 is one per core)")


def _stopped(ret_overrides: Sequence[str], run_dir: str | None, idx: int, why: str) -> JobReturn:
    from regablate.errors import JobLost

    ret = JobReturn(overrides=list(ret_overrides), status=JobStatus.FAILED)
    ret.return_value = JobLost(run_dir or f"job {idx}", why, label="not started")
    return ret


def _job(idx: int, overrides: Sequence[str], hydra_context: Any, config: Any, task_function: Any,
         singleton_state: dict, batch: str, parent: int) -> JobReturn:
    """One job in a worker: Hydra's `execute_job`, stopped by SIGINT or SIGTERM as Ctrl-C stops
    a run; not started when the batch was stopped or the sweep's process is gone."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    from regablate.errors import RunInterrupted
    from regablate.training.job import stop_on_signals

    if os.getppid() != parent:  # the sweep's process is gone (kill -9): nobody to return to
        os._exit(0)
    if os.path.exists(os.path.join(batch, "stop")):
        return _stopped(overrides, None, idx, "the sweep was stopped before it began")
    mark = os.path.join(batch, str(os.getpid()))
    open(mark, "w").close()  # noqa: SIM115 — the parent signals the workers that hold a job
    try:
        with stop_on_signals({signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}):
            return execute_job(idx, overrides, hydra_context, config, task_function, singleton_state)
    except KeyboardInterrupt as e:
        from regablate.sweep.submitit_jobs import _run_dir

        ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
        run_dir = _run_dir(_Context(hydra_context, config), overrides, idx)
        ret.return_value = RunInterrupted(run_dir or f"job {idx}", getattr(e, "signal_name", "SIGINT"))
        return ret
    finally:
        os.unlink(mark)


class _Context:
    """What `submitit_jobs._run_dir` reads of a launcher."""

    def __init__(self, hydra_context: Any, config: Any) -> None:
        self.hydra_context, self.config = hydra_context, config


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """hydra_joblib_launcher's `launch`, with the jobs' ends said (see the module doc)."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, setup_globals
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    from regablate.errors import Terminated

    setup_globals()
    assert launcher.config is not None and launcher.task_function is not None and launcher.hydra_context is not None
    joblib_cfg = dict(launcher.joblib)
    check_n_jobs(joblib_cfg.get("n_jobs"))
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    joblib_cfg["backend"] = "loky"  # the threading backend cannot run Hydra jobs
    process_joblib_cfg(joblib_cfg)
    log.info("Joblib.Parallel({}) is launching {} jobs".format(
        ",".join(f"{k}={v}" for k, v in joblib_cfg.items()), len(job_overrides)))
    log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#{} : {}".format(idx, " ".join(filter_overrides(overrides))))

    batch = tempfile.mkdtemp(prefix="regablate-joblib-")
    received: list[int] = []

    def stop(signum, frame):
        if received:  # a second signal: now
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        received.append(signum)
        Path(batch, "stop").touch()
        for name in os.listdir(batch):
            if name.isdigit():
                try:
                    os.kill(int(name), signal.SIGTERM)
                except OSError:
                    pass  # its job just ended

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    jobs = [(initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
    try:
        runs = Parallel(**joblib_cfg)(
            delayed(_job)(idx, overrides, launcher.hydra_context, launcher.config, launcher.task_function,
                          Singleton.get_state(), batch, os.getpid())
            for idx, overrides in jobs)
    except TerminatedWorkerError as e:
        runs = [_after_a_worker_died(launcher, overrides, idx, e) for idx, overrides in jobs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(batch, ignore_errors=True)
    if received:
        raise Terminated() if received[0] == signal.SIGTERM else KeyboardInterrupt()
    return runs


def _after_a_worker_died(launcher: Any, overrides: Sequence[str], idx: int, error: Exception) -> JobReturn:
    """Job `idx` of a batch whose worker pool broke: completed if its run says so; a run left
    `running` is recorded interrupted and counted; a job with no run was not started."""
    import json
    import re

    from regablate.errors import JobLost
    from regablate.sweep.submitit_jobs import _run_dir, record_interrupted

    codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(error))
    died = f"a worker process died ({codes.group(1) if codes else 'killed'}: out of memory, or a kill)"
    run_dir = _run_dir(launcher, overrides, idx)
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        status = summary["status"]
    except (TypeError, OSError, ValueError, KeyError):
        summary, status = {}, None
    if status in ("completed", "diverged"):
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    if status is None:
        ret.return_value = JobLost(run_dir, died, label="not started")
    elif status in ("failed", "interrupted"):  # it ended so before the pool broke: its result was lost
        ret.return_value = JobLost(run_dir, str(summary.get("error") or status), label=status)
    else:
        record_interrupted(Path(run_dir), f"stopped with its worker pool: {died}")
        ret.return_value = JobLost(run_dir, f"{died}; joblib stops every worker with it", label="stopped")
    return ret
