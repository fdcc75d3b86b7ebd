"""Hydra's joblib launcher (`hydra/launcher=joblib`), with every job's end said as under the
other launchers.

Hydra's own `launch` runs `joblib.Parallel(...)(execute_job ...)` and nothing else, so:
- a worker had no SIGTERM handler (`timeout`, `kill`): its run died `running`, with no last.pt;
- Ctrl-C made the parent abort joblib, which SIGKILLs every worker while it writes its run's
  interrupt record: runs were left `running`, some with no checkpoint; an idle worker hit by
  Ctrl-C broke the pool the same way;
- a worker killed (out of memory, `kill -9`) made loky SIGKILL the others too and joblib raise
  a page of traceback;
- after a `kill -9` of the parent, orphaned workers went on to start the jobs queued for them.

Here the jobs go to loky's reusable executor (joblib's own process pool), `n_jobs` workers
(joblib's count: -1 one per core), each of which ignores SIGINT and SIGTERM except while it
runs a job: a job runs under `stop_on_signals` (SIGINT and SIGTERM stop its run as Ctrl-C
does: checkpointed, recorded `interrupted`, returned as a `RunInterrupted` result). The parent,
on its first SIGINT or SIGTERM, marks the batch stopped (a file each job looks at once its
handlers are in place, so none slips through), cancels the jobs not started, sends SIGTERM to
the workers running one (listed by a file each writes while it runs a job: they may not share
the parent's process group, `kill PID`), waits for them to return, and raises the signal's
KeyboardInterrupt, so the sweep ends as under the basic launcher (the command that continues
it). A second signal stops at once. A worker that finds the sweep's process gone (`kill -9`)
exits instead of starting a job. A worker that dies ends the batch with every job accounted
for, once the pool's other workers are gone: completed runs as such, the runs left `running`
recorded `interrupted` and counted with the reason, the jobs that never started counted too;
the sweeper's closing line continues them (exit 1). `hydra.launcher.n_jobs` must be a whole
number other than 0; joblib's other settings (batching, pre-dispatch, memmapping) do not apply
to one job per task. Imported by regablate's sweeper (`regablate.sweep.refusing`) and the Optuna
sweeper only when a sweep uses the joblib launcher.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides

# the plugin's logger, as Hydra's own launch logs under it
log = logging.getLogger("hydra_plugins.hydra_joblib_launcher._core")


def is_joblib(launcher: Any) -> bool:
    return type(launcher).__module__.startswith("hydra_plugins.hydra_joblib_launcher")


def check_settings(settings: dict) -> None:
    """The launcher's settings: `n_jobs` a whole number other than 0; a key the joblib launcher
    does not know (`+hydra.launcher.njobs=2`) refused, never silently ignored."""
    import dataclasses

    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

    from regablate.errors import ConfigError, UsageError

    known = [f.name for f in dataclasses.fields(JobLibLauncherConf) if f.name != "_target_"]
    if unknown := [k for k in settings if k not in known]:
        raise UsageError(f"hydra.launcher.{unknown[0]}: not a setting of hydra/launcher=joblib; "
                         f"its settings: {', '.join(known)}")
    n_jobs = settings.get("n_jobs")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
        raise ConfigError("hydra.launcher.n_jobs", n_jobs, "must be a whole number of worker processes other "
                          "than 0 (negative counts back from the cores: -1 is one per core)")


def _idle(parent: int) -> None:
    """A worker's initializer: SIGINT and SIGTERM are ignored except while it runs a job (an idle
    worker killed by Ctrl-C breaks the pool, and loky SIGKILLs the busy ones); what a job imports
    (torch, the trainer) is imported now, under that cover (a stop inside `import torch` was no
    run's to record); and a worker whose sweep's process is gone (`kill -9`) exits once idle,
    as it ignores SIGTERM."""
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from regablate.training.job import JOBLIB_WORKER

    os.environ[JOBLIB_WORKER] = "1"  # its runs return a stop as a result (regablate.cli.run)
    import regablate.cli.run  # noqa: F401 — torch, Hydra's app and the trainer
    import regablate.training.loop  # noqa: F401

    def orphaned() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent and not _BUSY:
                os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()


_BUSY: list[int] = []  # the job this worker runs, if any


def _job(idx: int, overrides: Sequence[str], hydra_context: Any, config: Any, task_function: Any,
         singleton_state: dict, batch: str, parent: int) -> JobReturn:
    """One job in a worker: Hydra's `execute_job`, stopped by SIGINT or SIGTERM as Ctrl-C stops
    a run; not started when the batch was stopped; never when the sweep's process is gone."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    from regablate.errors import RunInterrupted
    from regablate.sweep.submitit_jobs import record_unstarted
    from regablate.training.job import stop_on_signals

    if os.getppid() != parent:  # the sweep's process is gone (kill -9): nobody to return to
        os._exit(0)
    mark = os.path.join(batch, str(os.getpid()))
    open(mark, "w").close()  # noqa: SIM115 — the parent signals the workers that hold a job
    _BUSY.append(idx)
    try:
        with stop_on_signals({signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}):
            if os.path.exists(os.path.join(batch, "stop")):  # after the handlers: none slips by
                return _not_started(overrides, idx)
            return execute_job(idx, overrides, hydra_context, config, task_function, singleton_state)
    except KeyboardInterrupt as e:  # the worker's signals are ignored again here
        how = getattr(e, "signal_name", "SIGINT")
        ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
        run_dir = record_unstarted(_Context(hydra_context, config), overrides, idx, how)
        ret.return_value = RunInterrupted(run_dir or f"job {idx}", how)
        return ret
    finally:
        os.unlink(mark)
        _BUSY.clear()


class _Context:
    """What `submitit_jobs._run_dir` reads of a launcher."""

    def __init__(self, hydra_context: Any, config: Any) -> None:
        self.hydra_context, self.config = hydra_context, config


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """hydra_joblib_launcher's `launch`, with the jobs' ends said (see the module doc)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, setup_globals
    from joblib import effective_n_jobs
    from joblib.externals.loky import get_reusable_executor
    from joblib.externals.loky.process_executor import BrokenProcessPool

    from regablate.errors import Terminated

    setup_globals()
    assert launcher.config is not None and launcher.task_function is not None and launcher.hydra_context is not None
    check_settings(dict(launcher.joblib))
    workers = min(effective_n_jobs(launcher.joblib.get("n_jobs")), len(job_overrides))
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"Joblib's loky executor ({workers} workers) is launching {len(job_overrides)} jobs")
    log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#{} : {}".format(idx, " ".join(filter_overrides(overrides))))

    batch = tempfile.mkdtemp(prefix="regablate-joblib-")
    received: list[int] = []
    futures: list = []

    def stop(signum, frame):
        if received:  # a second signal: now
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        received.append(signum)
        Path(batch, "stop").touch()
        for f in futures:
            f.cancel()  # those not started
        for pid in _busy(batch):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass  # its job just ended

    jobs = [(initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        executor = get_reusable_executor(max_workers=workers, initializer=_idle, initargs=(os.getpid(),))
        futures += [executor.submit(_job, idx, overrides, launcher.hydra_context, launcher.config,
                                    launcher.task_function, Singleton.get_state(), batch, os.getpid())
                    for idx, overrides in jobs]
        pending = set(futures)
        while pending:  # in slices, so that a signal is handled at once
            _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        try:
            runs = [_not_started(o, i) if f.cancelled() else f.result() for f, (i, o) in zip(futures, jobs, strict=True)]
        except BrokenProcessPool as e:
            _wait_for_the_workers(batch)
            runs = [_after_the_pool_broke(launcher, overrides, idx, e) for idx, overrides in jobs]
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        previous = {}
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(batch, ignore_errors=True)
    if received:
        raise Terminated() if received[0] == signal.SIGTERM else KeyboardInterrupt()
    return runs


def _busy(batch: str) -> list[int]:
    """The pids of the workers running a job of this batch (each holds a file named so)."""
    try:
        return [int(name) for name in os.listdir(batch) if name.isdigit()]
    except OSError:
        return []


def _wait_for_the_workers(batch: str, limit_s: float = 30.0) -> None:
    """Until the workers that ran jobs are gone (loky kills them after the pool breaks, but after
    it has failed the futures): their runs' locks are free to record."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in _busy(batch)):
        time.sleep(0.1)


def _not_started(overrides: Sequence[str], idx: int) -> JobReturn:
    """A job the stopped batch did not start."""
    from regablate.errors import JobLost

    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret.return_value = JobLost(f"job {idx}", "the sweep was stopped before it began", label="not started")
    return ret


def _after_the_pool_broke(launcher: Any, overrides: Sequence[str], idx: int, error: Exception) -> JobReturn:
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
