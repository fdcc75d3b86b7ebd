"""A run as a job in its process: the CPUs it may use (`job_cpus`), the cluster's stop signals
(`stop_on_cluster_signals`) and the one line that says how it ended (`describe`). Shared by
`regablate run`, the submitit launchers and the vectorised launcher's jobs; torch-free."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path


def job_cpus() -> int:
    """The CPUs this job may use: inside a SLURM job its allocation (SLURM_CPUS_PER_TASK, else
    SLURM_CPUS_ON_NODE: without task affinity a job sees every core of its node), else the
    process's CPU affinity (taskset, cgroup cpusets), else the machine's cores."""
    if os.environ.get("SLURM_JOB_ID"):
        for key in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
            value = os.environ.get(key, "")
            if value.isdigit() and int(value) > 0:
                return int(value)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def under_submitit() -> bool:
    """Whether this process is a submitit job (submitit_local, submitit_slurm, cluster)."""
    return bool(os.environ.get("SUBMITIT_FOLDER"))


JOBLIB_WORKER = "REGABLATE_JOBLIB_WORKER"  # set in regablate's joblib workers (regablate.sweep.joblib_jobs)


def returns_interruptions() -> bool:
    """Whether a sweep's job stopped by a signal in this process is a result the launcher reads
    (`RunInterrupted`, its run recorded `interrupted` even before training began), not an
    interrupt of the whole process: a submitit job, or a job in one of regablate's joblib workers."""
    return under_submitit() or bool(os.environ.get(JOBLIB_WORKER))


@contextmanager
def stop_on_cluster_signals():
    """Inside a submitit job: SIGTERM (scancel, preemption, the end of the time limit) and
    submitit's warning signal (SIGUSR2 by default: the time limit is near, or preemption) stop
    the run as Ctrl-C does: its last completed epoch is checkpointed and it is recorded
    `interrupted`. submitit's own handlers would let SIGTERM pass ("Bypassing signal") until
    SIGKILL, and answer SIGUSR2 with a requeue of the whole job; they are back once the run
    ends, so the job still returns its result."""
    if not under_submitit():
        yield
        return
    usr = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    with stop_on_signals({signal.SIGTERM: "SIGTERM", usr: f"{signal.Signals(usr).name} (time limit or preemption)"}):
        yield


@contextmanager
def stop_on_signals(names: dict):
    """While inside: each signal in `names` (signal -> how the run records it) stops the run as
    Ctrl-C does (SIGINT raises KeyboardInterrupt, the others `Terminated(name)`), once: a second
    signal must not cut short the checkpoint and record being written. The handlers before are
    back on the way out."""
    from regablate.errors import Terminated

    stopped = []

    def stop(signum, frame):
        if not stopped:
            stopped.append(signum)
            raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(names[signum])

    previous = {sig: signal.signal(sig, stop) for sig in names}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def describe(summary: dict, run_dir: Path) -> str:
    """One line: where the run is, how it ended, its metrics at the epoch scored (the best
    epoch's, or the final model's under trainer.restore_best=false)."""
    m = summary.get("metric")
    parts = [f"{summary['status']}: {run_dir}"]
    if summary.get("val"):
        best, scored = summary["best_epoch"], summary.get("metrics_epoch", summary["best_epoch"])
        parts.append(f"best epoch {best}/{summary['epochs_run']}" if scored in (None, best) else
                     f"metrics at epoch {scored}/{summary['epochs_run']} (best val epoch {best})")
        parts += [f"{split} {m} {summary[split][m]:.4f}" for split in ("train", "val", "test")]
        parts.append(f"gap {summary['gap']:+.4f}")
    if summary.get("error"):
        parts.append(summary["error"])
    return "  ".join(parts)
