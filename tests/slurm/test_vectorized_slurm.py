"""A stacked (`hydra/launcher=vectorized`) sweep on a real SLURM cluster: each chunk is one
SLURM job (`hydra.launcher.executor=slurm`), with the per-run files, refusals and closing
lines of the same sweep trained in-process (`executor=local`).

Runs against whatever SLURM `sinfo` answers from (`make test-slurm` first stands up a one-node
cluster on this machine with tests/slurm/start_local_slurm.sh); skipped where there is none.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_slurm import _slurm_answers, epochs_done, last_line, regablate, statuses

from conftest import ENV

pytestmark = pytest.mark.skipif(not _slurm_answers(), reason="no SLURM answers here (sinfo); "
                                "`make test-slurm` stands one up on a Debian machine")

TINY = ("dataset=tiny_binary", "trainer.max_epochs=3", "trainer.tensorboard=false")
TIMING = {"wall_time_s", "epoch_time_s"}


def slurm_jobs(sweep: Path) -> list[str]:
    """The SLURM jobs the sweep submitted: submitit's folder of each."""
    folder = sweep / ".submitit"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def summary(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k not in TIMING}


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def sweep_both(tmp_path: Path, *args: str) -> dict[str, subprocess.CompletedProcess]:
    """The same sweep into tmp_path/local/sweep and tmp_path/slurm/sweep."""
    out = {}
    for executor in ("local", "slurm"):
        cwd = tmp_path / executor
        cwd.mkdir()
        t0 = time.perf_counter()
        out[executor] = regablate("run", "-m", "hydra/launcher=vectorized", f"hydra.launcher.executor={executor}",
                                  *args, "hydra.sweep.dir=sweep", cwd=cwd)
        print(f"executor={executor}: {time.perf_counter() - t0:.1f} s")
    return out


def test_a_stacked_sweep_is_one_slurm_job_and_writes_what_the_local_executor_writes(tmp_path):
    r = sweep_both(tmp_path, "+reg=none,dropout,l2", "seed=0,1", *TINY)
    assert r["local"].returncode == 0, r["local"].stderr[-3000:]
    assert r["slurm"].returncode == 0, r["slurm"].stderr[-3000:]
    local, slurm = tmp_path / "local" / "sweep", tmp_path / "slurm" / "sweep"
    assert slurm_jobs(local) == []
    assert len(slurm_jobs(slurm)) == 1  # six members, one chunk, one SLURM job
    assert "K=6 members in 1 chunk(s)" in r["slurm"].stdout + r["slurm"].stderr
    assert statuses(slurm) == statuses(local) == dict.fromkeys("012345", "completed")
    for i in "012345":
        assert summary(slurm / i) == summary(local / i), i
        assert metrics(slurm / i) == metrics(local / i), i
        assert (slurm / i / ".hydra" / "config.yaml").read_text() == (local / i / ".hydra" / "config.yaml").read_text()
        assert (slurm / i / "checkpoints" / "last.pt").is_file()
    # what the runs print (describe), as the local executor prints it, paths aside
    def runs(done: subprocess.CompletedProcess, sweep: Path) -> list[str]:
        return [ln.replace(str(sweep), "S") for ln in done.stdout.splitlines() if ln.startswith("completed: ")]

    assert runs(r["slurm"], slurm) == runs(r["local"], local) and len(runs(r["local"], local)) == 6


def test_one_bad_value_is_one_line_as_under_the_local_executor_and_a_second_sweep_is_refused(tmp_path):
    r = sweep_both(tmp_path, "+reg=dropout", "reg.dropout.p=0.2,0.3,1.5", *TINY, "trainer.progress=none")
    expected = ("regablate: error: 1 of 3 jobs did not complete: 1 failed "
                "(sweep/2: invalid config: reg.dropout.p=1.5: must be in [0, 1))")
    for executor, done in r.items():
        assert done.returncode == 2 and "Traceback" not in done.stderr, (executor, done.stderr[-3000:])
        assert last_line(done) == expected, executor
        assert statuses(tmp_path / executor / "sweep") == {"0": "completed", "1": "completed", "2": "failed"}
    slurm = tmp_path / "slurm" / "sweep"
    assert len(slurm_jobs(slurm)) == 1
    for i in "01":
        assert summary(slurm / i) == summary(tmp_path / "local" / "sweep" / i)
    # the same sweep again: every job refused before anything is submitted, no byte changed
    before = {p: p.read_bytes() for p in slurm.rglob("*") if p.is_file() and ".submitit" not in p.parts}
    again = regablate("run", "-m", "hydra/launcher=vectorized", "hydra.launcher.executor=slurm", "+reg=dropout",
                      "reg.dropout.p=0.2,0.3,1.5", *TINY, "trainer.progress=none", "hydra.sweep.dir=sweep",
                      cwd=tmp_path / "slurm")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert last_line(again).startswith("regablate: error: 3 of 3 jobs refused, their run dirs untouched")
    assert len(slurm_jobs(slurm)) == 1
    assert {p: p.read_bytes() for p in slurm.rglob("*") if p.is_file() and ".submitit" not in p.parts} == before


def test_scancel_of_the_chunks_job_records_its_members_interrupted_and_resume_completes_them(tmp_path):
    args = ("run", "-m", "hydra/launcher=vectorized", "hydra.launcher.executor=slurm", "+reg=none,dropout",
            "dataset.n=2000", "dataset.n_test=200", "model.hidden=[256,256]", "trainer.max_epochs=200",
            "trainer.early_stopping.patience=0", "trainer.progress=none", "trainer.tensorboard=false",
            "trainer.checkpoint_every_s=0", "hydra.sweep.dir=sweep")
    proc = subprocess.Popen([sys.executable, "-m", "regablate", *args], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sweep = tmp_path / "sweep"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and min(epochs_done(sweep / "0"), epochs_done(sweep / "1")) < 3:
        time.sleep(0.2)
    jobs = slurm_jobs(sweep)
    assert len(jobs) == 1, jobs
    subprocess.run(["scancel", jobs[0]], check=True, timeout=60)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("regablate: error: 2 of 2 jobs did not complete: 2 interrupted "
                           "(sweep/0, sweep/1: by SIGTERM); continue them with: regablate run -m "), line
    assert line.endswith(" trainer.resume=auto")
    assert statuses(sweep) == {"0": "interrupted", "1": "interrupted"}
    for i in "01":
        assert (sweep / i / "checkpoints" / "last.pt").is_file()
    done = {i: epochs_done(sweep / i) for i in "01"}
    assert all(0 < n < 200 for n in done.values()), done
    again = regablate(*args, "trainer.resume=auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(sweep) == {"0": "completed", "1": "completed"}
    assert len(slurm_jobs(sweep)) == 2  # the chunk continued as one SLURM job again

