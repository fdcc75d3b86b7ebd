"""Checkpoints by time: written when due, at the end and on an interrupt, always as of a
completed epoch; one shared file for several runs; resume exactness either way."""

from __future__ import annotations

import csv
import os

import pytest
import torch

from regablate.training import checkpoint
from regablate.training import loop as train_module
from regablate.training.loop import train

PLAIN = ("trainer.max_epochs=5", "trainer.early_stopping.patience=0", "trainer.tensorboard=false")


def _count_saves(monkeypatch) -> list[str]:
    calls: list[str] = []
    save = checkpoint.save

    def counting(path, obj):
        calls.append(path.name)
        save(path, obj)

    monkeypatch.setattr(checkpoint, "save", counting)
    return calls


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in csv.DictReader(open(run_dir / "metrics.csv"))]


def test_by_default_a_short_run_writes_its_checkpoints_once_at_the_end(small_cfg, tmp_path, monkeypatch):
    calls = _count_saves(monkeypatch)
    s = train(small_cfg(*PLAIN), tmp_path)
    assert calls == ["best.pt", "last.pt"]
    state = checkpoint.load_last(tmp_path)
    assert state["epoch"] == s["epochs_run"] == 5
    assert len(checkpoint.unpack_history(state["history"])) == 5
    best = torch.load(tmp_path / "checkpoints" / "best.pt")  # the best epoch's weights, as before
    assert set(best) == set(state["model"])


def test_every_epoch_when_asked_and_none_when_off(small_cfg, tmp_path, monkeypatch):
    calls = _count_saves(monkeypatch)
    train(small_cfg(*PLAIN, "trainer.checkpoint_every_s=0"), tmp_path / "every")
    assert calls.count("last.pt") == 5 and 1 <= calls.count("best.pt") <= 5
    calls.clear()
    train(small_cfg(*PLAIN, "trainer.checkpoint=false"), tmp_path / "off")
    assert calls == ["best.pt"] and not (tmp_path / "off" / "checkpoints" / "last.pt").exists()


def test_an_interrupt_writes_the_last_completed_epoch_and_resume_is_exact(small_cfg, tmp_path, monkeypatch):
    cfg = small_cfg(*PLAIN, "+reg=dropout")
    full = train(cfg, tmp_path / "full")
    epoch = train_module.train_epoch
    calls = []

    def interrupted_in_epoch_3(x, gen, decay, task=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return epoch(x, gen, decay, task)

    monkeypatch.setattr(train_module, "train_epoch", interrupted_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")  # default checkpoint_every_s: nothing written before this
    monkeypatch.setattr(train_module, "train_epoch", epoch)
    assert checkpoint.load_last(tmp_path / "cut")["epoch"] == 2
    assert len(_rows(tmp_path / "cut")) == 2  # metrics.csv holds what last.pt holds
    resumed = train({**cfg, "trainer": {**cfg["trainer"], "resume": "auto"}}, tmp_path / "cut")
    for key in ("status", "best_epoch", "epochs_run", "train", "val", "test", "gap"):
        assert resumed[key] == full[key], key
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "full")


def test_a_shared_checkpoint_is_one_file_and_each_run_finds_its_own(tmp_path):
    dirs = [tmp_path / "sweep" / name for name in ("0", "1", "10")]
    for d in dirs:
        (d / "checkpoints").mkdir(parents=True)
    checkpoint.save_shared({d: {"epoch": i, "model": {"w": torch.full((2,), float(i))}} for i, d in enumerate(dirs)})
    inodes = {os.stat(d / "checkpoints" / "last.pt").st_ino for d in dirs}
    assert len(inodes) == 1  # written once, linked three times
    assert [checkpoint.load_last(d)["epoch"] for d in dirs] == [0, 1, 2]
    (tmp_path / "sweep").rename(tmp_path / "moved")
    assert checkpoint.load_last(tmp_path / "moved" / "10")["model"]["w"].tolist() == [2.0, 2.0]
    # a later shared write replaces each link atomically; a run outside the file is refused
    checkpoint.save_shared({tmp_path / "moved" / "0": {"epoch": 7, "model": {}}})
    assert checkpoint.load_last(tmp_path / "moved" / "0")["epoch"] == 7
    assert checkpoint.load_last(tmp_path / "moved" / "1")["epoch"] == 1
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.link"))
