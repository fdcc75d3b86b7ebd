"""Sweeps on a real SLURM cluster keep every promise the laptop keeps.

Runs against whatever SLURM `sinfo` answers from (`make test-slurm` first stands up a one-node
cluster on this machine with tests/slurm/start_local_slurm.sh); skipped where there is none,
so `make test` without SLURM skips it. It stands up nothing itself.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ENV


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = pytest.mark.skipif(not _slurm_answers(), reason="no SLURM answers here (sinfo); "
                                "`make test-slurm` stands one up on a Debian machine")

TINY = ("dataset=tiny_binary", "trainer.max_epochs=2", "trainer.progress=none", "trainer.tensorboard=false")
# long enough to be cancelled in the middle: about 0.2 s an epoch with two jobs on two cores
SLOW = ("dataset.n=2000", "dataset.n_test=200", "model.hidden=[256,256]", "trainer.max_epochs=30",
        "trainer.early_stopping.patience=0", "trainer.progress=plain", "trainer.tensorboard=false",
        "trainer.checkpoint_every_s=0", "sched=cosine")


def regablate(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regablate", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def statuses(sweep: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["status"] for p in sorted(sweep.glob("*/summary.json"))}


def last_line(r: subprocess.CompletedProcess) -> str:
    return r.stderr.strip().splitlines()[-1]


def fingerprint(root: Path) -> dict[str, str]:
    """Every file under `root`, logs included (submitit's own folder aside) -> its sha1."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".submitit" not in p.parts}


def sacct_states(array_id: str, tasks: int = 1) -> dict[str, str]:
    """The jobs' final states as accounting has them, once it lists `tasks` of them (a job that
    returned its result may still be RUNNING there, or not listed yet, for a few seconds)."""
    for _ in range(60):
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", array_id, "-o", "JobID,State"], capture_output=True,
                             text=True, timeout=60).stdout
        states = dict(line.split("|", 1) for line in out.split() if "|" in line)
        if len(states) >= tasks and not any(s in ("RUNNING", "PENDING", "COMPLETING") for s in states.values()):
            break
        time.sleep(1)
    return states


def array_id(sweep: Path) -> str:
    return next(p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit() and "_" in p.name)


def epochs_done(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.csv").read_text().splitlines()) - 1
    except OSError:
        return 0


def test_a_cluster_sweep_completes_then_a_resubmission_is_refused_changing_no_byte(tmp_path):
    args = ("run", "-m", "hydra/launcher=cluster", "+reg=none,dropout", "seed=0,1", *TINY, "hydra.sweep.dir=sweep")
    r = regablate(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert statuses(sweep) == dict.fromkeys("0123", "completed")
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert {s["threads"] for s in summaries} == {1}  # cluster.yaml: cpus_per_task=1
    assert not list(sweep.glob("*/*.log"))
    states = sacct_states(array_id(sweep), tasks=4)
    assert sorted(states.values()) == ["COMPLETED"] * 4, states
    before = fingerprint(sweep)
    again = regablate(*args, cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert last_line(again).startswith("regablate: error: 4 of 4 jobs refused, their run dirs untouched")
    assert fingerprint(sweep) == before


def test_one_bad_value_is_one_line_and_the_other_jobs_complete(tmp_path):
    r = regablate("run", "-m", "hydra/launcher=submitit_slurm", "+reg=dropout", "reg.dropout.p=0.2,0.3,1.5",
                  *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last_line(r) == ("regablate: error: 1 of 3 jobs did not complete: 1 failed "
                            "(sweep/2: invalid config: reg.dropout.p=1.5: must be in [0, 1))")
    assert statuses(tmp_path / "sweep") == {"0": "completed", "1": "completed", "2": "failed"}
    # no cpus_per_task asked: SLURM gives a job one CPU, and torch one thread (not the node's cores)
    threads = {json.loads(p.read_text()).get("threads") for p in (tmp_path / "sweep").glob("[01]/summary.json")}
    assert threads == {1}


def test_scancel_of_one_of_four_jobs_ends_with_one_line_and_its_command_completes_the_run(tmp_path):
    """A 4-job submitit_slurm sweep with one scancel ends with one line, the cancelled run
    interrupted, and the printed command completes it to the numbers of an uninterrupted run."""
    args = ("run", "-m", "hydra/launcher=submitit_slurm", "+reg=none,dropout", "seed=0,1", *SLOW,
            "hydra.sweep.dir=sweep")
    proc = subprocess.Popen([sys.executable, "-m", "regablate", *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep, cancelled = tmp_path / "sweep", None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if epochs_done(sweep / "1") >= 2:
            cancelled = f"{array_id(sweep)}_1"
            subprocess.run(["scancel", cancelled], check=True, timeout=60)
            break
        time.sleep(0.2)
    _, err = proc.communicate(timeout=600)
    assert cancelled, err[-3000:]
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("regablate: error: 1 of 4 jobs did not complete: 1 interrupted (sweep/1: by SIGTERM); "
                           "continue them with: regablate run -m "), line
    assert statuses(sweep) == {"0": "completed", "1": "interrupted", "2": "completed", "3": "completed"}
    assert (sweep / "1" / "checkpoints" / "last.pt").exists()
    assert sacct_states(cancelled.split("_")[0])[cancelled].startswith("CANCELLED")
    command = shlex.split(line.split("continue them with: ", 1)[1])
    assert command[-2:] == ["hydra.sweep.dir=sweep", "trainer.resume=auto"]
    again = regablate(*command[1:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(sweep) == dict.fromkeys("0123", "completed")
    made = (sweep / "1" / ".hydra" / "overrides.yaml").read_text()
    assert "+reg=none" in made and "seed=1" in made
    full = regablate("run", "+reg=none", "seed=1", *SLOW, "trainer.threads=1", "hydra.run.dir=full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (sweep / "1", tmp_path / "full"))
    for key in ("best_epoch", "epochs_run", "train", "val", "test", "gap"):
        assert a[key] == b[key], key


def test_a_job_cancelled_before_it_ran_is_counted_as_cancelled_and_the_others_complete(tmp_path):
    args = ("run", "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.array_parallelism=1", "seed=0,1", *TINY,
            "hydra.sweep.dir=sweep")
    proc = subprocess.Popen([sys.executable, "-m", "regablate", *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep, deadline = tmp_path / "sweep", time.time() + 120
    while time.time() < deadline and not ((sweep / ".submitit").is_dir() and any(  # an array task's
            p.name[0].isdigit() and "_" in p.name for p in (sweep / ".submitit").iterdir())):  # folder
        time.sleep(0.1)
    pending = f"{array_id(sweep)}_1"  # one job at a time: the second waits for the first
    subprocess.run(["scancel", pending], check=True, timeout=60)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("regablate: error: 1 of 2 jobs did not complete: 1 cancelled (sweep/1: cancelled "
                           "(SLURM state CANCELLED"), line
    assert "continue them with: regablate run -m " in line
    assert statuses(sweep) == {"0": "completed"}


def test_a_job_that_reaches_its_time_limit_is_interrupted_not_failed(tmp_path):
    """SLURM sends SIGUSR2 signal_delay_s before the limit, and up to a minute earlier (its
    event loop's resolution): here 30 s after the job starts, or as early as its first seconds,
    before its run holds its run dir. Either way the run is recorded interrupted, not failed
    (each moment is tested deterministically without a cluster, in tests/test_sweep_endings.py)."""
    r = regablate("run", "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=1",
                  "hydra.launcher.signal_delay_s=30", *SLOW, "trainer.max_epochs=100000", "hydra.sweep.dir=sweep",
                  cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last_line(r).startswith("regablate: error: 1 of 1 jobs did not complete: 1 interrupted "
                                   "(sweep/0: by SIGUSR2 (time limit or preemption)); continue them with: ")
    summary = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    assert summary["error"] in ("interrupted by SIGUSR2 (time limit or preemption)",  # in training
                                "interrupted by SIGUSR2 (time limit or preemption) before training began"), summary


@pytest.mark.parametrize("setting,named", [
    ("hydra.launcher.partition=nope", "hydra.launcher.partition=nope"),
    ("hydra.launcher.cpus_per_task=4096", "hydra.launcher.cpus_per_task=4096"),
    ("hydra.launcher.mem_gb=100000", "hydra.launcher.mem_gb=100000"),
    ("trainer.device=cuda", "hydra.launcher.gpus_per_node=1"),
])
def test_settings_the_cluster_cannot_meet_are_one_line_naming_them(tmp_path, setting, named):
    if setting == "trainer.device=cuda" and "gpu" in subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True,
                                                                    text=True).stdout:
        pytest.skip("this cluster has GPUs")
    r = regablate("run", "-m", "hydra/launcher=cluster", setting, *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert named in r.stderr, r.stderr
    assert not list((tmp_path / "sweep").glob("*/summary.json"))
    pending = subprocess.run(["squeue", "-h", "-n", "regablate", "-o", "%i %r"], capture_output=True, text=True).stdout
    assert "PartitionConfig" not in pending
