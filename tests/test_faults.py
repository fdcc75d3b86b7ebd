"""Faults, resume and scale: nothing lost when runs die, sweeps in parallel."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ENV, compose_cfg, run_cli
from regablate.rundir import atomic
from regablate.training.loop import train

RESUMABLE = ("dataset.n=1000", "dataset.n_test=200", "model.hidden=[256,256]", "sched=cosine",
             "trainer.max_epochs=8", "trainer.early_stopping.patience=0", "trainer.progress=plain",
             "trainer.tensorboard=true", "+reg=dropout", "trainer.checkpoint_every_s=0")


def rows(path):
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in csv.DictReader(open(path))]


def test_sigkill_then_resume_gives_exactly_the_uninterrupted_numbers(tmp_path):
    full = train(compose_cfg(*RESUMABLE, "trainer.progress=none"), tmp_path / "full")
    cmd = [sys.executable, "-m", "regablate", "run", *RESUMABLE, "hydra.run.dir=killed"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # kill it in the middle of epoch 4 (after 3 epochs were checkpointed)
        if line.startswith("epoch    3/"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    killed = tmp_path / "killed"
    assert json.loads((killed / "summary.json").read_text())["status"] == "running"
    assert 3 <= len(rows(killed / "metrics.csv")) < 8
    r = run_cli("run", *RESUMABLE, "hydra.run.dir=killed", "trainer.resume=auto", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    resumed = json.loads((killed / "summary.json").read_text())
    for key in ("status", "best_epoch", "epochs_run", "train", "val", "test", "gap"):
        assert resumed[key] == full[key], key
    assert rows(killed / "metrics.csv") == rows(tmp_path / "full" / "metrics.csv")  # no duplicate rows


def test_resumed_sweep_skips_finished_jobs_and_continues_the_rest(tmp_path):
    args = ("-m", "+reg=none,l2", "dataset.n=300", "dataset.n_test=100", "trainer.max_epochs=4",
            "trainer.early_stopping.patience=0", "trainer.progress=none", "trainer.tensorboard=false",
            "hydra.sweep.dir=sweep")
    assert run_cli("run", *args, cwd=tmp_path).returncode == 0
    done, cut = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    reference = json.loads((cut / "summary.json").read_text())
    before = (done / "summary.json").read_bytes()
    # job 1 "dies" after epoch 2: its files as they were then
    cfg = compose_cfg("+reg=l2", *args[2:-1])
    cfg["trainer"]["max_epochs"] = 2
    (cut / "summary.json").unlink()
    train(cfg, cut)
    summary = json.loads((cut / "summary.json").read_text())
    # as the 4-epoch job wrote it
    (cut / "summary.json").write_text(json.dumps({**summary, "status": "running", "group": reference["group"]}))
    r = run_cli("run", *args, "trainer.resume=auto", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (done / "summary.json").read_bytes() == before  # skipped, untouched
    resumed = json.loads((cut / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["epochs_run"] == 4
    assert resumed["val"] == reference["val"] and resumed["test"] == reference["test"]


def test_atomic_write_failure_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic.write_json(target, {"status": "running"})

    def broken(f):
        f.write('{"status": "comp')  # half a file, then the disk is full
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic.write_atomic(target, broken)
    assert json.loads(target.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_one_sync_makes_a_batch_of_atomic_writes_durable_with_one_sync(tmp_path, monkeypatch):
    """Inside one_sync: no fsync per file, the old files stay until one syncfs at the end, then
    every file is renamed into place; a failed write inside still leaves the others complete."""
    calls = []
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: calls.append("fsync"))
    real_syncfs = atomic._syncfs()
    assert real_syncfs is not None  # Linux
    monkeypatch.setattr(atomic, "_syncfs", lambda: lambda fd: (calls.append("sync"), real_syncfs(fd))[1])
    paths = [tmp_path / f"r{i}" / "summary.json" for i in range(3)]
    for p in paths:
        p.parent.mkdir()
        atomic.write_json(p, {"status": "old"})
    assert calls == ["fsync"] * 3
    calls.clear()
    with pytest.raises(OSError):
        with atomic.one_sync():
            atomic.write_json(paths[0], {"status": "new"})
            with atomic.one_sync():  # nested: the outer one syncs
                atomic.write_json(paths[1], {"status": "new"})
            assert json.loads(paths[0].read_text()) == {"status": "old"} and calls == []
            atomic.write_atomic(paths[2], lambda f: (f.write("{"), (_ for _ in ()).throw(OSError(28, "full"))))
    assert calls == ["sync"]
    assert [json.loads(p.read_text())["status"] for p in paths] == ["new", "new", "old"]
    assert sorted(q.name for q in tmp_path.rglob("*") if q.is_file()) == ["summary.json"] * 3


def test_a_crash_during_training_is_recorded_as_failed(tmp_path, monkeypatch):
    import regablate.training.loop as trainer

    def boom(*a, **k):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(trainer, "train_epoch", boom)
    with pytest.raises(RuntimeError):
        train(compose_cfg("trainer.progress=none", "trainer.tensorboard=false"), tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "failed" and "device-side assert" in s["error"]


def test_unwritable_output_dir_is_named(tmp_path):
    (tmp_path / "afile").write_text("")
    r = run_cli("run", "hydra.run.dir=afile/run", cwd=tmp_path)
    assert r.returncode == 2 and "cannot write afile/run" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("launcher", [("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
                                      ("hydra/launcher=submitit_local",)])
def test_parallel_launchers_complete_every_job(tmp_path, launcher):
    r = run_cli("run", "-m", *launcher, "+reg=none,dropout", "dataset.n=300", "dataset.n_test=100",
                "trainer.max_epochs=2", "trainer.progress=none", "trainer.tensorboard=false",
                "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")]
    assert len(summaries) == 2 and {s["status"] for s in summaries} == {"completed"}
    if "n_jobs" in " ".join(launcher):
        assert {s["threads"] for s in summaries} == {max(1, os.cpu_count() // 2)}


def test_ctrl_c_is_recorded_as_interrupted_and_exits_130(tmp_path):
    cmd = [sys.executable, "-m", "regablate", "run", *RESUMABLE, "trainer.max_epochs=50",
           "hydra.run.dir=stopped"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch    2/"):
            os.kill(proc.pid, signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    s = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert s["status"] == "interrupted"
