"""Sweeps end the same way under every launcher: one closing line, the right exit code, no
traceback; nothing is written into a run dir before its lock is held; jobs take the CPUs they
were given; signals to a submitit job record its run `interrupted`."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ENV, compose_cfg, run_cli, run_patched
from regablate.errors import ConfigError, JobLost, RunInterrupted, SweepFailed, Terminated
from regablate.rundir.claim import RunRefused
from regablate.training.loop import train

TINY = ("dataset=tiny_binary", "trainer.max_epochs=2", "trainer.progress=none", "trainer.tensorboard=false")
# a job that runs long enough to be signalled in the middle (about 0.1 s an epoch)
SLOW = ("dataset.n=2000", "dataset.n_test=200", "model.hidden=[256,256]", "trainer.max_epochs=8",
        "trainer.early_stopping.patience=0", "trainer.progress=plain", "trainer.tensorboard=false",
        "trainer.checkpoint_every_s=0", "sched=cosine", "trainer.threads=1")


def fingerprint(root: Path) -> dict[str, str]:
    """Every file under `root`, logs included (submitit's own folder aside) -> its sha1."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".submitit" not in p.parts}


def statuses(sweep: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["status"] for p in sorted(sweep.glob("*/summary.json"))}


def last_line(r: subprocess.CompletedProcess) -> str:
    return r.stderr.strip().splitlines()[-1]


# -- item 1: errors cross process boundaries -----------------------------------------------------

@pytest.mark.parametrize("error", [
    ConfigError("reg.dropout.p", 1.5, "must be in [0, 1)"), RunInterrupted("sweep/1", "SIGTERM"),
    JobLost("sweep/2", "cancelled (SLURM state CANCELLED)", "cancelled"), SweepFailed("2 of 4", 2, True),
    RunRefused(Path("sweep/0"), "already holds a run (summary.json)"), Terminated("SIGUSR2")])
def test_every_error_a_job_returns_survives_a_pickle_round_trip(error):
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error) and vars(again) == vars(error)


@pytest.mark.parametrize("launcher", [("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
                                      ("hydra/launcher=submitit_local",), ("hydra/launcher=vectorized",)],
                         ids=["joblib", "submitit_local", "vectorized"])  # basic: tests/test_cli.py
def test_one_invalid_value_in_a_parallel_sweep_is_one_line_and_the_good_jobs_complete(tmp_path, launcher):
    r = run_cli("run", "-m", *launcher, "+reg=dropout", "reg.dropout.p=0.2,0.3,1.5", *TINY,
                "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Error executing job" not in r.stderr
    assert last_line(r) == ("regablate: error: 1 of 3 jobs did not complete: 1 failed "
                            "(sweep/2: invalid config: reg.dropout.p=1.5: must be in [0, 1))")
    assert r.stderr.count("regablate: error") == 1
    assert statuses(tmp_path / "sweep") == {"0": "completed", "1": "completed", "2": "failed"}
    assert not list((tmp_path / "sweep").glob("*/*.log"))  # no (empty) job log, under any launcher


def test_a_job_failed_for_its_seed_is_a_failed_run_the_report_counts(tmp_path):
    # its summary.json held data_seed='x', which the report refused as unreadable: 1 failed
    # run under status, none in the report
    r = run_cli("run", "-m", "data_seed=x,y,0", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and "sweep/0: invalid config: data_seed='x'" in last_line(r), r.stderr
    summary = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["data_seed"] is None and summary["seed"] == 0
    report = run_cli("report", "sweep", cwd=tmp_path)
    assert report.returncode == 0 and "unreadable" not in report.stdout + report.stderr, report.stderr
    assert "runs: 1 completed · 0 running · 0 diverged · 2 failed" in report.stdout  # two jobs, not repeats


CRASHING = """
from torch import nn


class OutOfLuck(Exception):
    def __init__(self, what, how):
        super().__init__(f"{what} {how}")


class Net(nn.Module):
    def __init__(self, in_shape, out_dim, crash=False):
        super().__init__()
        self.crash, self.linear = crash, nn.Linear(in_shape[0], out_dim)

    def forward(self, x):
        if self.crash and self.training:
            raise OutOfLuck("out of", "luck")
        return self.linear(x)
"""


@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")], ids=["basic", "joblib"])
def test_a_crash_in_one_job_is_counted_with_its_reason_and_the_command_that_continues_it(tmp_path, launcher):
    (tmp_path / "crashing.py").write_text(CRASHING)
    r = subprocess.run([sys.executable, "-m", "regablate", "run", "-m", *launcher, "model=custom", "model.target=crashing:Net",
                        "+model.kwargs.crash=false,true", *TINY, "hydra.sweep.dir=sweep"],
                       cwd=tmp_path, env={**ENV, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = last_line(r)
    assert line.startswith("regablate: error: 1 of 2 jobs did not complete: 1 failed "
                           "(sweep/1: OutOfLuck: out of luck); continue them with: regablate run -m "), line
    assert line.endswith("hydra.sweep.dir=sweep trainer.resume=auto")
    assert statuses(tmp_path / "sweep") == {"0": "completed", "1": "failed"}


# -- item 8: nothing is written into a run dir before its lock is held ---------------------------

def hold(run_dir: Path) -> int:
    """Lock `run_dir` as a run writing it does (regablate.rundir.claim)."""
    run_dir.mkdir(parents=True)
    fd = os.open(run_dir, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_launch_refused_by_the_lock_writes_nothing_not_even_hydras_files(tmp_path):
    fd = hold(tmp_path / "run")
    try:
        r = run_cli("run", *TINY, "seed=7", "hydra.run.dir=run", cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "being written by another process" in r.stderr
        assert list((tmp_path / "run").iterdir()) == []  # no .hydra/config.yaml saying seed 7
    finally:
        os.close(fd)


def test_a_sweep_refused_by_the_lock_writes_nothing_into_the_held_run_dir(tmp_path):
    fd = hold(tmp_path / "sweep" / "0")
    try:
        r = run_cli("run", "-m", *TINY, "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    finally:
        os.close(fd)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert last_line(r).startswith("regablate: error: 1 of 2 jobs refused, their run dirs untouched "
                                   f"(is being written by another process: {tmp_path / 'sweep' / '0'})")
    assert list((tmp_path / "sweep" / "0").iterdir()) == []
    assert statuses(tmp_path / "sweep") == {"1": "completed"}


def test_the_run_dir_holds_hydras_files_and_no_empty_log_and_a_refused_run_leaves_no_folders(tmp_path):
    assert run_cli("run", *TINY, "seed=3", "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    hydra = tmp_path / "run" / ".hydra"
    assert OmegaConf.load(hydra / "config.yaml").seed == 3
    assert list(OmegaConf.load(hydra / "overrides.yaml"))[-1] == "seed=3"
    assert OmegaConf.load(hydra / "hydra.yaml").hydra.run.dir == "run"
    assert "data_seed: ${seed}" in (hydra / "config.yaml").read_text()  # unresolved, as Hydra writes it
    assert not list((tmp_path / "run").glob("*.log"))  # item 11: no job log that stays empty
    r = run_cli("run", *TINY, "+reg=dropout", "reg.dropout.p=1.5", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert not (tmp_path / "outputs").exists()  # not even an empty outputs/<date>/


# -- item 5: a refused resubmission under submitit changes no byte --------------------------------

def test_a_refused_submitit_resubmission_changes_no_byte_of_the_runs_logs_included(tmp_path):
    args = ("run", "-m", "hydra/launcher=submitit_local", "+reg=none,dropout", *TINY, "hydra.sweep.dir=sweep")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    before = fingerprint(tmp_path / "sweep")
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 2 and last_line(again).startswith("regablate: error: 2 of 2 jobs refused")
    assert fingerprint(tmp_path / "sweep") == before


# -- item 4: threads follow the CPUs the job was given ---------------------------------------------

@pytest.mark.parametrize("env,launcher,threads", [
    ({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "1"}, {}, 1),
    ({"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "1", "SLURM_CPUS_ON_NODE": "2"}, {"cpus_per_task": 1}, 1),
    ({"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "2"}, {"n_jobs": 2}, 1),
])
def test_auto_threads_follow_the_cpus_the_slurm_job_was_given(monkeypatch, env, launcher, threads):
    from regablate.cli.run import job_cpus, place_job

    for key in ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    place_job(compose_cfg(), OmegaConf.create({"launcher": launcher, "job": {"num": 0}}))
    assert seen == [threads] and job_cpus() == int(env.get("SLURM_CPUS_PER_TASK") or env["SLURM_CPUS_ON_NODE"])


def test_outside_slurm_the_cpus_are_the_processs_affinity(monkeypatch):
    from regablate.cli.run import job_cpus

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert job_cpus() == 1


# -- item 3: the cluster launcher as shipped -----------------------------------------------------

def test_the_cluster_launcher_asks_for_a_gpu_only_for_cuda_runs():
    from regablate.rundir.claim import gpus_for

    assert [gpus_for(d) for d in ("auto", "cpu", "cuda", "cuda:1")] == [None, None, 1, 1]
    text = (Path(__file__).parents[1] / "conf" / "hydra" / "launcher" / "cluster.yaml").read_text()
    cfg = OmegaConf.create(text.replace("# @package hydra.launcher\n", ""))
    assert cfg.partition is None and cfg.cpus_per_task == 1 and cfg.mem_gb == 4
    assert cfg._get_node("gpus_per_node")._value() == "${regablate_gpus:${trainer.device}}"


@pytest.mark.parametrize("stderr,named", [
    ("sbatch: error: invalid partition specified: gpu\nsbatch: error: Batch job submission failed: "
     "Invalid partition name specified", "(set by hydra.launcher.partition=gpu)"),
    ("sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification",
     "(set by hydra.launcher.gpus_per_node=1)"),
    ("sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job submission "
     "failed: Requested node configuration is not available", "(set by hydra.launcher.mem_gb=500)"),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not available",
     "(set by hydra.launcher.cpus_per_task=1, hydra.launcher.mem_gb=500, hydra.launcher.gpus_per_node=1)"),
])
def test_an_sbatch_refusal_is_one_line_naming_the_setting(monkeypatch, stderr, named):
    from regablate.sweep import submitit_jobs
    from regablate.sweep.submitit_jobs import sbatch_refusal

    monkeypatch.setattr(submitit_jobs, "_largest_node", lambda partition: None)  # no sinfo asked
    params = {"partition": "gpu", "gpus_per_node": 1, "mem_gb": 500, "cpus_per_task": 1, "nodes": 1}
    line = sbatch_refusal(stderr, params)
    assert "\n" not in line and line.startswith("sbatch refused the sweep's jobs: ") and named in line
    assert "sbatch: error" not in line and "Batch job submission failed" not in line


# -- item 2: SIGTERM and SIGUSR2 to a submitit job -------------------------------------------------

def holder_of(run_dir: Path) -> int | None:
    """The pid of the process that holds `run_dir` open (the job writing it)."""
    target = str(run_dir.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def epochs_done(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.csv").read_text().splitlines()) - 1
    except OSError:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_a_signalled_submitit_job_is_interrupted_and_the_printed_command_completes_it(tmp_path, sig):
    args = ("run", "-m", "hydra/launcher=submitit_local", "+reg=none,dropout", *SLOW, "hydra.sweep.dir=sweep")
    proc = subprocess.Popen([sys.executable, "-m", "regablate", *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = tmp_path / "sweep" / "1"
    deadline, pid = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None:
        if epochs_done(job) >= 2:
            pid = holder_of(job)
            if pid:
                os.kill(pid, sig)
                break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert pid, err[-3000:]
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGUSR2 (time limit or preemption)"
    assert line.startswith(f"regablate: error: 1 of 2 jobs did not complete: 1 interrupted (sweep/1: by {name}); "
                           "continue them with: regablate run -m "), line
    interrupted = json.loads((job / "summary.json").read_text())
    assert statuses(tmp_path / "sweep") == {"0": "completed", "1": "interrupted"}
    assert interrupted["error"] == f"interrupted by {name}" and (job / "checkpoints" / "last.pt").exists()
    if sig == signal.SIGUSR2:
        return  # the command that continues it: checked once, below
    command = shlex.split(line.split("continue them with: ", 1)[1])
    assert command[:3] == ["regablate", "run", "-m"] and command[-1] == "trainer.resume=auto"
    again = run_cli(*command[1:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(tmp_path / "sweep") == {"0": "completed", "1": "completed"}
    full = train(compose_cfg("+reg=dropout", *SLOW, "trainer.progress=none"), tmp_path / "full")
    resumed = json.loads((job / "summary.json").read_text())
    for key in ("best_epoch", "epochs_run", "train", "val", "test", "gap"):
        assert resumed[key] == full[key], key


# the job's own process, as a submitit job: SUBMITIT_FOLDER set, and the warning signal sent to
# itself at one moment before training began (the cluster test cannot time it that closely)
SIGNAL_AT = """
import os, signal, sys
import regablate.rundir.claim, regablate.training.loop
where = sys.argv.pop(1)
module = regablate.rundir.claim if where == "write_hydra_files" else regablate.training.loop
real = getattr(module, where)
def signalled(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGUSR2)
    return real(*args, **kwargs)
setattr(module, where, signalled)
from regablate.cli.main import main
sys.argv[0] = "regablate"
main()
"""


@pytest.mark.parametrize("where", ["write_hydra_files", "train"],
                         ids=["before-its-config-was-read", "before-its-first-epoch"])
def test_a_submitit_job_signalled_before_training_began_is_recorded_interrupted(tmp_path, where):
    env = {**ENV, "SUBMITIT_FOLDER": str(tmp_path / "submitit")}
    r = subprocess.run([sys.executable, "-c", SIGNAL_AT, where, "run", "-m", "+reg=dropout", *TINY,
                        "hydra.sweep.dir=sweep"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last_line(r).startswith("regablate: error: 1 of 1 jobs did not complete: 1 interrupted "
                                   "(sweep/0: by SIGUSR2 (time limit or preemption)); continue them with: ")
    summary = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["seed"] == 0 and summary["reg"] == ["dropout"]
    assert summary["error"] == "interrupted by SIGUSR2 (time limit or preemption) before training began"
    again = run_cli("run", "-m", "+reg=dropout", *TINY, "hydra.sweep.dir=sweep", "trainer.resume=auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(tmp_path / "sweep") == {"0": "completed"}


# -- the joblib launcher: signals and a worker that dies ----------------------------------------

JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "+reg=none,dropout", "seed=0,1")


def _joblib_sweep(tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "regablate", "run", "-m", *JOBLIB, *SLOW, *extra,
                             "trainer.max_epochs=60", "hydra.sweep.dir=sweep"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _both_training(tmp_path: Path, proc: subprocess.Popen) -> dict[str, int]:
    """The worker pids of jobs 0 and 1 once each has done 2 epochs."""
    jobs = {n: tmp_path / "sweep" / n for n in ("0", "1")}
    deadline, pids = time.time() + 120, {}
    while time.time() < deadline and proc.poll() is None and len(pids) < 2:
        for n, job in jobs.items():
            if n not in pids and epochs_done(job) >= 2 and (pid := holder_of(job)):
                pids[n] = pid
        time.sleep(0.05)
    return pids


@pytest.mark.parametrize("how", ["sigterm-to-the-sweep", "ctrl-c-to-the-group"])
def test_a_signalled_joblib_sweep_records_every_running_job_interrupted_and_continues(tmp_path, how):
    # before: the parent aborted joblib, which SIGKILLs every worker while it writes its record:
    # runs were left `running`, often with no last.pt (a worker had no SIGTERM handler at all)
    proc = _joblib_sweep(tmp_path)
    assert len(_both_training(tmp_path, proc)) == 2, proc.communicate(timeout=60)[1][-3000:]
    if how == "sigterm-to-the-sweep":
        proc.send_signal(signal.SIGTERM)  # `kill PID`: the workers are not signalled
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-3000:]
    said = "terminated (SIGTERM)" if how == "sigterm-to-the-sweep" else "interrupted"
    assert proc.returncode == 128 + (signal.SIGTERM if how == "sigterm-to-the-sweep" else signal.SIGINT), err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-2] == f"regablate: {said}" and lines[-1].startswith("continue with: regablate run -m "), err[-3000:]
    assert statuses(tmp_path / "sweep") == {"0": "interrupted", "1": "interrupted"}
    assert all((tmp_path / "sweep" / n / "checkpoints" / "last.pt").exists() for n in ("0", "1"))
    assert not (tmp_path / "sweep" / "2").exists() and not (tmp_path / "sweep" / "3").exists()
    if how == "sigterm-to-the-sweep":
        return  # the printed command: checked once
    again = run_cli(*shlex.split(lines[-1].split("continue with: ", 1)[1])[1:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(tmp_path / "sweep") == dict.fromkeys("0123", "completed")


def test_a_joblib_worker_killed_ends_the_sweep_in_one_line_with_every_job_accounted_for(tmp_path):
    # before: loky SIGKILLed the other worker too and joblib raised a page of traceback; the
    # healthy job was left `running` and the rest never ran, with no command to continue them
    proc = _joblib_sweep(tmp_path)
    pids = _both_training(tmp_path, proc)
    assert len(pids) == 2, proc.communicate(timeout=60)[1][-3000:]
    os.kill(pids["0"], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("regablate: error: 4 of 4 jobs did not complete: 2 stopped (sweep/0, sweep/1: a worker "
                           "process died (SIGKILL(-9): out of memory, or a kill); joblib stops every worker with it), "
                           "2 not started (sweep/2, sweep/3: a worker process died"), line
    assert "; continue them with: regablate run -m " in line
    assert statuses(tmp_path / "sweep") == {"0": "interrupted", "1": "interrupted"}  # none left `running`


def test_joblib_n_jobs_0_is_one_line_and_makes_nothing_and_one_worker_runs_every_job(tmp_path):
    r = run_cli("run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", *TINY, "seed=0,1",
                "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("regablate: error: invalid config: hydra.launcher.n_jobs=0: must be a whole number")
    assert not (tmp_path / "sweep").exists()
    # one worker (n_jobs=1, or -1 on a one-core machine): still a worker process, every job runs
    r = run_cli("run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", *TINY, "seed=0,1",
                "hydra.sweep.dir=one", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert statuses(tmp_path / "one") == {"0": "completed", "1": "completed"}


def test_a_second_sweep_into_a_dir_being_swept_is_refused_before_it_writes(tmp_path):
    # before: two sweeps started together each found no job in the dir, and the second's
    # multirun.yaml replaced the first's: its printed continue command then fit no run
    proc = _joblib_sweep(tmp_path)
    assert len(_both_training(tmp_path, proc)) == 2, proc.communicate(timeout=60)[1][-3000:]
    first = (tmp_path / "sweep" / "multirun.yaml").read_bytes()
    for other in (("+reg=l2", "seed=0,1"), ("+reg=none,dropout", "seed=0,1")):  # another sweep, or the same
        r = run_cli("run", "-m", *other, *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("regablate: error: hydra.sweep.dir=sweep is being swept by another process: "
                                   "wait for it to end (regablate status sweep)"), r.stderr
    assert (tmp_path / "sweep" / "multirun.yaml").read_bytes() == first
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert statuses(tmp_path / "sweep") == dict.fromkeys("0123", "completed")


@pytest.mark.parametrize("setting,said", [
    ("+hydra.sweeper.seed=auto", "hydra.sweeper.seed: not a setting of hydra/sweeper=regablate; its settings: "
                                 "max_batch_size, params, design, seeds, min_seeds"),
    ("+hydra.launcher.njobs=2", "hydra.launcher.njobs: not a setting of hydra/launcher=joblib; its settings: n_jobs, "),
    ("+hydra.launcher.bogus=1", "hydra.launcher.bogus: not a setting of VectorizedLauncher; its settings: max_members, "
                                "memory_fraction, single, executor, slurm")],
    ids=["sweeper", "joblib", "vectorized"])
def test_a_sweeper_or_launcher_setting_it_does_not_have_is_one_line_not_ignored(tmp_path, setting, said):
    # before: the sweeper and joblib ran the sweep as if the typo were not there (seed=auto: no rounds)
    launcher = {"+hydra.launcher.njobs=2": ("hydra/launcher=joblib",),
                "+hydra.launcher.bogus=1": ("hydra/launcher=vectorized",)}.get(setting, ())
    r = run_cli("run", "-m", *launcher, setting, *TINY, "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"regablate: error: {said}"), r.stderr
    assert not (tmp_path / "sweep").exists()


STOP_WHILE_OPENING = """
import os, signal, sys
import regablate.training.session as session
real = session.RunSession.__init__
def stopped(self, *args, **kwargs):  # summary.json already says running; the session is not yet
    os.kill(os.getpid(), signal.SIGINT)
    return real(self, *args, **kwargs)
session.RunSession.__init__ = stopped
from regablate.cli.main import main
sys.argv[0] = "regablate"
main()
"""


def test_a_stop_while_the_run_opens_its_files_is_recorded_interrupted(tmp_path):
    # before: summary.json stayed `running` (stale) when the stop came after it was written
    # and before the session could record a stop
    r = subprocess.run([sys.executable, "-c", STOP_WHILE_OPENING, "run", *TINY, "hydra.run.dir=run"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"] == "interrupted by the user (Ctrl-C)"
    again = run_cli("run", *TINY, "hydra.run.dir=run", "trainer.resume=auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


SIGNAL_BEFORE_CLAIM = """
import os, signal
import regablate.rundir.claim as claim_module
real = claim_module.claim
def signalled(*args, **kwargs):  # in the submitit job only: its warning signal before its run holds its dir
    if os.environ.get("SUBMITIT_FOLDER") and not os.environ.get("SIGNALLED_ONCE"):
        os.environ["SIGNALLED_ONCE"] = "1"
        os.kill(os.getpid(), signal.SIGUSR2)
    return real(*args, **kwargs)
claim_module.claim = signalled
"""


def test_a_submitit_job_signalled_before_its_run_holds_its_dir_is_recorded_interrupted(tmp_path):
    # SLURM's time-limit warning can come seconds after a job starts, before its run holds its
    # run dir: before, the sweep said interrupted but the run dir had no summary.json
    r = run_patched(SIGNAL_BEFORE_CLAIM, "run", "-m", "hydra/launcher=submitit_local", "+reg=dropout", *TINY,
                    "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last_line(r).startswith("regablate: error: 1 of 1 jobs did not complete: 1 interrupted "
                                   "(sweep/0: by SIGUSR2 (time limit or preemption)); continue them with: ")
    summary = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["reg"] == ["dropout"] and summary["seed"] == 0
    assert summary["error"] == "interrupted by SIGUSR2 (time limit or preemption) before training began"
    again = run_cli("run", "-m", "hydra/launcher=submitit_local", "+reg=dropout", *TINY, "hydra.sweep.dir=sweep",
                    "trainer.resume=auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(tmp_path / "sweep") == {"0": "completed"}


def test_a_process_pools_copy_of_regablates_task_writes_no_hydra_files_before_its_claim(tmp_path):
    # before: loky sends the task by value (pickle cannot find the undecorated function by its
    # name), so the workers' on_job_start took it for another app's task and wrote .hydra/ with
    # no claim: a job refused for a dir another job held wrote its seed over that run's files
    cloudpickle = pytest.importorskip("cloudpickle")
    from regablate.cli.run import RememberDir, hydra_main, is_ours

    sent = pickle.loads(cloudpickle.dumps(hydra_main.__wrapped__))
    assert sent is not hydra_main.__wrapped__ and is_ours(sent) and is_ours(hydra_main)
    config = OmegaConf.create({"seed": 1, "hydra": {"output_subdir": None,
                                                    "runtime": {"output_dir": str(tmp_path / "run")}}})
    RememberDir().on_job_start(config, task_function=sent)
    assert not (tmp_path / "run").exists()
    assert not is_ours(lambda cfg: None)  # another app's task on regablate's configs gets them


@pytest.mark.parametrize("mode", [("-m", "hydra.sweep.dir=sweep"), ("hydra.run.dir=sweep/0",)], ids=["sweep", "run"])
def test_a_ctrl_c_before_training_began_is_recorded_interrupted_under_the_basic_launcher(tmp_path, mode):
    # before: only submitit and joblib jobs were; the basic launcher left .hydra/ and no summary,
    # which the report counted as unreadable
    script = SIGNAL_AT.replace("signal.SIGUSR2", "signal.SIGINT")
    r = subprocess.run([sys.executable, "-c", script, "write_hydra_files", "run", *mode, "+reg=dropout", *TINY],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert r.returncode == 130 and "Traceback" not in r.stderr and "regablate: interrupted" in r.stderr, r.stderr[-3000:]
    summary = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    assert (summary["status"], summary["error"]) == ("interrupted", "interrupted by the user (Ctrl-C) before training began")
    again = run_cli("run", *mode, "+reg=dropout", *TINY, "trainer.resume=auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())["status"] == "completed"
