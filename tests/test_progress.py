"""Progress within long work: silent when short, a line every few seconds (plain), a bar row
(rich), nothing with `none`; evaluation advances a task per chunk. A fake clock, no sleeps."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from regablate.data.synthetic import SparseSyntheticSettings, make_sparse_synthetic
from regablate.evaluate import evaluate
from regablate.models.mlp import MLPSettings, build_mlp
from regablate.progress import make_progress
from regablate.regularisers import ModelSpec


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_task_is_silent_when_short_and_prints_a_line_every_few_seconds(capsys):
    clock = Clock()
    with make_progress("plain", 5, "acc", clock=clock) as progress:
        with progress.task("train epoch 1", total=782, unit="batches") as task:
            for _ in range(100):  # 1.9 s in all
                clock.now += 0.019
                task.advance()
        assert capsys.readouterr().out == ""
        with progress.task("train epoch 3", total=782, unit="batches") as task:
            for _ in range(782):  # 1/32 s a batch: 24.4 s in all
                clock.now += 1 / 32
                task.advance()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"train epoch 3: {160 * i}/782 batches, {5 * i} s" for i in (1, 2, 3, 4)]


def test_plain_task_counts_images_and_takes_its_thresholds_as_arguments(capsys):
    clock = Clock()
    progress = make_progress("plain", 1, "acc", every=1.0, clock=clock)
    with progress.task("closing evaluation test", total=10000, unit="images") as task:
        for _ in range(5):
            clock.now += 0.6
            task.advance(2048)
    assert capsys.readouterr().out.splitlines() == [
        "closing evaluation test: 4096/10000 images, 1 s",
        "closing evaluation test: 8192/10000 images, 2 s"]


def test_a_task_after_it_ended_prints_nothing_more(capsys):
    clock = Clock()
    progress = make_progress("plain", 1, "acc", clock=clock)
    with progress.task("closing evaluation val", total=10, unit="images") as task:
        task.advance(3)
    clock.now += 60
    task.advance(1)
    assert capsys.readouterr().out == ""


def test_none_is_silent_whatever_the_duration(capsys):
    clock = Clock()
    with make_progress("none", 1, "acc", clock=clock) as progress:
        with progress.task("train epoch 1", total=10, unit="batches") as task:
            for _ in range(10):
                clock.now += 10
                task.advance()
    assert capsys.readouterr().out == ""


def rich_progress(clock: Clock):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    return make_progress("rich", 3, "acc", clock=clock, console=console), out


def test_rich_task_shows_a_row_under_the_epoch_bar_only_after_the_delay():
    clock = Clock()
    progress, out = rich_progress(clock)
    with progress:
        with progress.task("train epoch 1", total=100, unit="batches") as task:
            for _ in range(50):
                clock.now += 0.03  # 1.5 s
                task.advance()
            assert [t.description for t in progress.bar.tasks] == ["train"]
            for _ in range(50):
                clock.now += 0.03  # 3 s
                task.advance()
            rows = {t.description: t for t in progress.bar.tasks}
            assert set(rows) == {"train", "train epoch 1"}
            sub = rows["train epoch 1"]
            assert (sub.completed, sub.total, sub.fields["info"]) == (100, 100, "batches")
            assert sub.elapsed == pytest.approx(3.0)  # from the task's start, not from its showing
            progress.bar.refresh()
            assert "train epoch 1" in out.getvalue() and "100/100" in out.getvalue()
        assert [t.description for t in progress.bar.tasks] == ["train"]  # the row goes when done
        progress.epoch({"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5,
                        "val_loss": 1.1, "val_acc": 0.4, "gap": 0.1})


def test_rich_task_after_the_epochs_draws_a_transient_bar_of_its_own():
    clock = Clock()
    progress, out = rich_progress(clock)
    with progress:
        pass
    with progress.task("closing evaluation test", total=10000, unit="images") as task:
        clock.now += 2.5
        task.advance(4096)
        assert task.own_bar and [t.completed for t in task.bar.tasks] == [4096]
        task.bar.refresh()
        assert "closing evaluation test" in out.getvalue() and "4096/10000" in out.getvalue()
    assert task.bar is None


def test_evaluate_advances_the_task_by_the_images_of_each_chunk(capsys):
    data = make_sparse_synthetic(SparseSyntheticSettings(n=300, n_test=10, d=8, k=2, classes=2), 0)
    torch.manual_seed(0)
    model = build_mlp(MLPSettings(hidden=[8]), data.in_shape, data.out_dim, ModelSpec())
    clock = Clock()
    progress = make_progress("plain", 1, "acc", every=0.0, clock=clock)
    n = len(data.train)
    with progress.task("closing evaluation train", total=n, unit="images") as task:
        with_task = evaluate(model, data, data.train, batch_size=64, progress=task)
    assert with_task == evaluate(model, data, data.train, batch_size=64)
    counts = [line.split(": ")[1].split(" ")[0] for line in capsys.readouterr().out.splitlines()]
    assert counts == [f"{min(i, n)}/{n}" for i in range(64, n + 64, 64)]

