"""Everyday actions and injected faults never lose, damage or misreport a finished run."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENV, compose_cfg, run_cli
from regablate.training import checkpoint, recorder
from regablate.training.loop import train

TINY = ("dataset=tiny_binary", "trainer.max_epochs=2", "trainer.progress=none")
# a model whose checkpoints are big (hundreds of kB) next to summary.json and metrics.csv
BIG = ("dataset.n=300", "dataset.n_test=100", "model.hidden=[256,256]", "trainer.max_epochs=5",
       "trainer.early_stopping.patience=0", "trainer.progress=plain", "trainer.tensorboard=false",
       "trainer.checkpoint_every_s=0")


def fingerprint(root: Path) -> dict[str, str]:
    """Every file under `root` (Hydra's job logs and submitit's own folder aside) -> its sha1;
    multirun.yaml included: a refused launch does not relabel the sweep either."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()
            and not p.name.endswith(".log") and ".submitit" not in p.parts}


def comparable(run_dir: Path) -> tuple[dict, list[dict]]:
    """A run's summary and metric rows without the fields that time it."""
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("wall_time_s", "threads"):
        summary.pop(key)
    rows = [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in csv.DictReader(open(run_dir / "metrics.csv"))]
    return summary, rows


def popen(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "regablate", *args], cwd=cwd, env=ENV, text=True, **kw)


# -- item 1: a second sweep into a finished sweep dir --------------------------------------------

@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
                                      ("hydra/launcher=submitit_local",)], ids=["basic", "joblib", "submitit"])
def test_a_second_sweep_into_a_finished_dir_touches_nothing_and_says_so(tmp_path, launcher):
    first = run_cli("run", "-m", *launcher, "+reg=none,dropout", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = fingerprint(tmp_path / "sweep")
    assert len([k for k in before if k.endswith("summary.json")]) == 2
    # the same jobs again: each is refused, with the ways on
    second = run_cli("run", "-m", *launcher, "+reg=none,dropout", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith("regablate: error: 2 of 2 jobs refused, their run dirs untouched")
    assert "already holds a run" in line and "trainer.resume=auto" in line and "hydra.sweep.dir" in line
    assert fingerprint(tmp_path / "sweep") == before
    # other jobs (one more arm or seed, other settings), even with trainer.resume=auto: job dirs are
    # numbered by job, so they would land in the wrong ones; refused before any is launched
    for more in (("+reg=l2,l1",), ("+reg=none,dropout", "seed=0,1", "trainer.resume=auto")):
        other = run_cli("run", "-m", *launcher, *more, *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
        assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
        assert "sweep holds another sweep's jobs (" in other.stderr and "give this sweep its own " \
            "hydra.sweep.dir" in other.stderr, other.stderr
    assert "(seed=0,1 given now, not there)" in other.stderr, other.stderr
    assert fingerprint(tmp_path / "sweep") == before
    report = run_cli("report", "sweep", cwd=tmp_path)
    assert report.returncode == 0 and "2 completed" in report.stdout and " 0 failed" in report.stdout
    head = popen("report", "sweep", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head.stdout.readline()  # `regablate report … | head -1`
    head.stdout.close()
    assert head.wait(timeout=60) == 0 and "Traceback" not in head.stderr.read()


def test_a_refused_single_run_touches_nothing(tmp_path):
    assert run_cli("run", *TINY, "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    before = fingerprint(tmp_path / "run")
    r = run_cli("run", *TINY, "+reg=dropout", "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "run already holds a run (summary.json); continue it with trainer.resume=auto" in r.stderr
    assert fingerprint(tmp_path / "run") == before


def test_a_run_into_a_sweeps_dir_or_inside_a_run_and_a_sweep_into_a_run_are_refused(tmp_path):
    """Each would put files among a finished run's (or a sweep's root) and hide the runs there
    from the report and status."""
    assert run_cli("run", "-m", "+reg=none,dropout", *TINY, "hydra.sweep.dir=S", cwd=tmp_path).returncode == 0
    before = fingerprint(tmp_path)
    for args, said in (
            (("hydra.run.dir=S",), "S is a sweep's dir (multirun.yaml): its runs are its job dirs"),
            (("hydra.run.dir=S/0/checkpoints",), f"S/0/checkpoints is inside the run dir {tmp_path / 'S' / '0'}"),
            (("-m", "+reg=l2,l1", "hydra.sweep.dir=S/1"), "hydra.sweep.dir=S/1: is a run dir, which holds only what its run writes"),
            (("-m", "+reg=l2,l1", "hydra.sweep.dir=S/1/tb"), f"is inside the run dir {tmp_path / 'S' / '1'}"),
            # a run dir around runs and sweeps would hide them from every reader
            (("hydra.run.dir=.",), f"{tmp_path} holds other files (S) and no run: a run is written into a new or empty dir"),
            (("-m", "seed=0", "hydra.sweep.dir=T", "hydra.sweep.subdir=.."), "holds other files (S, T) and no run")):
        r = run_cli("run", *args, *TINY, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert said in r.stderr, (args, r.stderr)
    after = {k: v for k, v in fingerprint(tmp_path).items() if k != "T/multirun.yaml"}  # a refused sweep's record
    assert after == before  # nothing made, nothing changed
    report = run_cli("report", "S", cwd=tmp_path)
    assert report.returncode == 0 and "2 completed" in report.stdout, report.stdout
    # a project's dir is refused; Hydra's own files for the job (a job log, another output_subdir) and a
    # killed first summary's leftover are a run's own
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    r = run_cli("run", *TINY, "hydra.run.dir=.", cwd=project)
    assert r.returncode == 2 and "holds other files (src) and no run" in r.stderr and not (project / "summary.json").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".summary.json.x1y2.tmp").write_text("{")
    r = run_cli("run", *TINY, "hydra.run.dir=.", "hydra/job_logging=default", "hydra.job.name=myjob",
                "hydra.output_subdir=meta", cwd=mine)
    assert r.returncode == 0 and json.loads((mine / "summary.json").read_text())["status"] == "completed", r.stderr
    assert (mine / "myjob.log").is_file() and (mine / "meta" / "config.yaml").is_file()


def test_a_sweep_refused_before_its_first_job_may_be_run_again_and_a_design_into_another_sweep_writes_nothing(tmp_path):
    typo = run_cli("run", "-m", "+reg=none,droput", *TINY, "hydra.sweep.dir=S", cwd=tmp_path)
    assert typo.returncode == 2 and (tmp_path / "S" / "multirun.yaml").exists(), typo.stderr
    fixed = run_cli("run", "-m", "+reg=none,dropout", *TINY, "hydra.sweep.dir=S", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-2000:]  # no job ran under the refused command
    assert "+reg=none,dropout" in (tmp_path / "S" / "multirun.yaml").read_text()
    before = fingerprint(tmp_path / "S")
    design = run_cli("run", "-m", "+reg=[dropout,l2]", "hydra.sweeper.design=factorial", "seed=0,1,2", *TINY,
                     "hydra.sweep.dir=S", cwd=tmp_path)
    assert design.returncode == 2 and "S holds another sweep's jobs (" in design.stderr, design.stderr
    assert fingerprint(tmp_path / "S") == before  # no ablation.json left behind


def test_only_a_real_run_dir_above_a_path_holds_it(tmp_path):
    """A report saved as summary.json, or `..` through a run dir, is no run dir above a path."""
    from regablate.rundir.claim import enclosing_run

    (tmp_path / "summary.json").write_text(json.dumps({"schema": 1, "groups": []}))
    assert enclosing_run(tmp_path / "outputs" / "run") is None
    assert run_cli("run", *TINY, "hydra.run.dir=R", cwd=tmp_path).returncode == 0
    assert enclosing_run(tmp_path / "R" / "tb") == tmp_path / "R"
    assert enclosing_run(tmp_path / "R" / ".." / "R2") is None


def test_resume_continues_only_the_run_of_the_same_seeds_and_configuration(tmp_path):
    """trainer.resume=auto into a dir that holds another seed's run (or another configuration's)
    is refused with one line: it must neither go on from that run's epochs (on another split)
    nor take its result as its own. In a sweep, the line says how to go on."""
    assert run_cli("run", *TINY, "seed=0", "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    before = fingerprint(tmp_path / "run")
    r = run_cli("run", *TINY, "seed=5", "hydra.run.dir=run", "trainer.resume=auto", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "holds a run of other seeds (seed=0, data_seed=0; this one has seed=5, data_seed=5)" in r.stderr
    r = run_cli("run", *TINY, "seed=0", "+reg=dropout", "hydra.run.dir=run", "trainer.resume=auto", cwd=tmp_path)
    assert r.returncode == 2 and "holds a run of another configuration" in r.stderr
    same = run_cli("run", *TINY, "seed=0", "hydra.run.dir=run", "trainer.resume=auto", cwd=tmp_path)
    assert same.returncode == 0  # its own run: already completed, left as it is
    assert fingerprint(tmp_path / "run") == before
    first = run_cli("run", "-m", *TINY, "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert first.returncode == 0
    before = fingerprint(tmp_path / "sweep")
    swept = run_cli("run", "-m", *TINY, "seed=0,2", "hydra.sweep.dir=sweep", "trainer.resume=auto", cwd=tmp_path)
    assert swept.returncode == 2 and swept.stderr.count("\n") == 1, swept.stderr
    assert swept.stderr.startswith("regablate: error: sweep holds another sweep's jobs (seed=0,1 there, seed=0,2 "
                                   "now)"), swept.stderr
    assert fingerprint(tmp_path / "sweep") == before
    # the same jobs written another way are the same sweep: it continues (here: nothing to do)
    again = run_cli("run", "-m", *TINY, "seed=range(0,2)", "hydra.sweep.dir=sweep", "trainer.resume=auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    runs = {k: v for k, v in before.items() if k.split("/")[0] in ("0", "1")}
    assert {k: v for k, v in fingerprint(tmp_path / "sweep").items() if k in runs} == runs and len(runs) > 10


# -- item 2: output that goes away ----------------------------------------------------------------

def test_a_closed_pipe_changes_nothing_about_the_run(tmp_path):
    args = ("+reg=dropout", *BIG, "trainer.tensorboard=true")
    proc = popen("run", *args, "hydra.run.dir=cut", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err
    full = run_cli("run", *args, "hydra.run.dir=full", cwd=tmp_path)
    assert full.returncode == 0 and sum(ln.startswith("epoch ") for ln in full.stdout.splitlines()) == 5
    assert comparable(tmp_path / "cut") == comparable(tmp_path / "full")
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "completed"


# -- item 5: submitit_local gives each job its share of the cores --------------------------------

def test_submitit_local_jobs_share_the_cores(tmp_path):
    r = run_cli("run", "-m", "hydra/launcher=submitit_local", "+reg=none,dropout,l2", *TINY,
                "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")]
    assert len(summaries) == 3 and {s["threads"] for s in summaries} == {max(1, os.cpu_count() // 3)}


# -- item 6: the SLURM launcher without SLURM ------------------------------------------------------

def test_cluster_launcher_without_slurm_is_one_line(tmp_path):
    # a machine without SLURM's commands, whether or not this one has them
    (tmp_path / "bin").mkdir()
    r = subprocess.run([sys.executable, "-m", "regablate", "run", "-m", "hydra/launcher=cluster", "+reg=none", *TINY],
                       cwd=tmp_path, env={**ENV, "PATH": str(tmp_path / "bin")}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "needs srun" in r.stderr and "hydra/launcher=submitit_local" in r.stderr


# -- item 7 and SIGTERM: interrupt, the printed command, resume ----------------------------------

def _stop_at_epoch(proc: subprocess.Popen, epoch: int, sig: int) -> str:
    for line in proc.stdout:
        if line.startswith(f"epoch {epoch:>4}/"):
            os.kill(proc.pid, sig)
            break
    _, err = proc.communicate(timeout=120)
    return err


def _as_launched(command: str) -> list[str]:
    """The printed `regablate run …` as this interpreter runs it."""
    argv = shlex.split(command)
    assert argv[:2] == ["regablate", "run"]
    return [sys.executable, "-m", "regablate", *argv[1:]]


def test_sigterm_is_an_interrupt_with_a_resume_command_that_reaches_the_same_numbers(tmp_path):
    full = train(compose_cfg(*BIG, "trainer.progress=none"), tmp_path / "full")
    proc = popen("run", *BIG, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = _stop_at_epoch(proc, 2, signal.SIGTERM)
    assert proc.returncode == 143 and "Traceback" not in err
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"]
    assert (run_dir / "checkpoints" / "last.pt").exists()
    command = err.split("continue with: ", 1)[1].strip()
    assert f"hydra.run.dir={run_dir.relative_to(tmp_path)}" in command and command.endswith("trainer.resume=auto")
    again = subprocess.run(_as_launched(command), cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resumed from epoch " in again.stdout
    resumed = json.loads((run_dir / "summary.json").read_text())
    for key in ("status", "best_epoch", "epochs_run", "train", "val", "test", "gap"):
        assert resumed[key] == full[key], key
    before = fingerprint(run_dir)
    skipped = subprocess.run(_as_launched(command), cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert skipped.returncode == 0 and f"already completed: {run_dir}" in skipped.stdout
    assert fingerprint(run_dir) == before


def test_ctrl_c_without_checkpoints_says_the_run_starts_again(tmp_path):
    proc = popen("run", *BIG, "trainer.checkpoint=false", "hydra.run.dir=run", cwd=tmp_path,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = _stop_at_epoch(proc, 2, signal.SIGINT)
    assert proc.returncode == 130 and not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert err.strip().endswith("hydra.run.dir=run trainer.resume=auto (from epoch 1: it wrote no "
                                "checkpoints/last.pt)"), err


def test_ctrl_c_in_a_sweep_prints_the_command_that_continues_the_sweep(tmp_path):
    proc = popen("run", "-m", "+reg=none,dropout", *BIG, cwd=tmp_path, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)
    err = _stop_at_epoch(proc, 2, signal.SIGINT)
    assert proc.returncode == 130 and "Traceback" not in err
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    command = err.split("continue with: ", 1)[1].strip()
    assert f"hydra.sweep.dir={sweep.relative_to(tmp_path)}" in command and " -m " in command
    again = subprocess.run(_as_launched(command), cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    statuses = [json.loads((sweep / j / "summary.json").read_text())["status"] for j in ("0", "1")]
    assert statuses == ["completed", "completed"]


# -- faults ---------------------------------------------------------------------------------------

def _limit_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_stops_the_run_with_one_line_and_no_half_written_file(tmp_path):
    cmd = [sys.executable, "-m", "regablate", "run", *BIG, "hydra.run.dir=full_disk"]
    # 64 kB per file: summary.json and metrics.csv fit, the first checkpoint does not
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       preexec_fn=_limit_file_size(64_000))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("regablate: error: cannot write ")
    assert "checkpoints/" in r.stderr and "File too large" in r.stderr
    run_dir = tmp_path / "full_disk"
    summary = json.loads((run_dir / "summary.json").read_text())  # a complete file
    assert summary["status"] == "failed" and "File too large" in summary["error"]
    text = (run_dir / "metrics.csv").read_text()  # whole lines or none (epoch 1 died at best.pt)
    assert text == "" or (text.endswith("\n") and len({len(row) for row in csv.reader(text.splitlines())}) == 1)
    assert not list(run_dir.rglob("*.tmp"))
    r = run_cli("run", *BIG, "hydra.run.dir=full_disk", "trainer.resume=auto", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_a_write_that_fails_mid_run_is_recorded_and_the_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    cfg = compose_cfg(*BIG, "trainer.progress=none")
    full = train(cfg, tmp_path / "full")
    save, calls = checkpoint.save, []

    def fails_at_epoch_3(path, obj):
        calls.append(path.name)
        if path.name == "last.pt" and calls.count("last.pt") == 3:
            raise OSError(27, "File too large", str(path))
        save(path, obj)

    monkeypatch.setattr(checkpoint, "save", fails_at_epoch_3)
    with pytest.raises(OSError, match="File too large"):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(checkpoint, "save", save)
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["status"] == "failed" and "last.pt" in cut["error"]
    resumed = train({**cfg, "trainer": {**cfg["trainer"], "resume": "auto"}}, tmp_path / "cut")
    for key in ("status", "best_epoch", "epochs_run", "train", "val", "test", "gap"):
        assert resumed[key] == full[key], key
    assert comparable(tmp_path / "cut")[1] == comparable(tmp_path / "full")[1]


def test_a_failed_metrics_line_is_cut_back_off(tmp_path, monkeypatch):
    rec = recorder.Recorder(tmp_path, {"group": "g"}, "acc", None, tensorboard=False)
    rec.epoch({"epoch": 1, "val_acc": 0.5})
    rec.flush()
    good = (tmp_path / "metrics.csv").read_bytes()
    write = os.write

    def half_then_full(fd, data):
        if fd == rec._fd:  # half the line reaches the disk, then the disk is full
            write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")
        return write(fd, data)

    monkeypatch.setattr(recorder.os, "write", half_then_full)
    rec.epoch({"epoch": 2, "val_acc": 0.75})
    with pytest.raises(OSError) as e:
        rec.flush()
    monkeypatch.setattr(recorder.os, "write", write)
    assert e.value.filename == str(tmp_path / "metrics.csv")
    assert (tmp_path / "metrics.csv").read_bytes() == good
    rec.flush()  # the line is still held, and goes out whole once the disk has room
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1:] == ["1,0.5", "2,0.75"]


def test_a_damaged_checkpoint_is_refused_with_one_line_and_touches_nothing(tmp_path):
    cfg = compose_cfg(*BIG, "trainer.progress=none")
    train(cfg, tmp_path / "run")
    summary = tmp_path / "run" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "interrupted"}))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # copied half-way, say
    before = fingerprint(tmp_path / "run")
    r = run_cli("run", *BIG, "hydra.run.dir=run", "trainer.resume=auto", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"cannot be resumed: {last} is damaged" in r.stderr and "move it away" in r.stderr
    assert fingerprint(tmp_path / "run") == before


def test_two_processes_never_write_one_run_dir(tmp_path):
    endless = ("dataset=tiny_binary", "trainer.max_epochs=100000", "trainer.early_stopping.patience=0",
               "trainer.progress=plain", "trainer.tensorboard=true", "hydra.run.dir=shared")
    first = popen("run", *endless, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert first.stdout.readline().startswith("epoch    1/")
    for resume in ("never", "auto"):
        second = run_cli("run", *endless, f"trainer.resume={resume}", cwd=tmp_path)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert "shared is being written by another process; wait for it" in second.stderr
    first.terminate()
    first.communicate(timeout=120)
    assert first.returncode == 143
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(tmp_path / "shared" / "metrics.csv"))]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > 1
    assert json.loads((tmp_path / "shared" / "summary.json").read_text())["status"] == "interrupted"


def test_claim_refuses_a_locked_dir_in_process(tmp_path):
    from regablate.rundir.claim import RunRefused, claim

    with claim(tmp_path / "run"):
        with pytest.raises(RunRefused, match="being written by another process"):
            with claim(tmp_path / "run"):
                pass
    (tmp_path / "run" / "summary.json").write_text("{}")
    with pytest.raises(RunRefused, match="already holds a run"):
        with claim(tmp_path / "run"):
            pass
    with claim(tmp_path / "run", resume="auto"):
        pass
