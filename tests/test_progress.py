"""Progress within long work: silent when short, a line every few seconds (plain), a bar row
(rich), nothing with `none`; evaluation advances a task per chunk. A fake clock, no sleeps."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from regablate.data.synthetic import SparseSyntheticSettings, make_sparse_synthetic
from regablate.models.mlp import MLPSettings, build_mlp
from regablate.nn import ModelSpec
from regablate.training.evaluate import evaluate
from regablate.training.progress import SILENT, make_progress


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


@pytest.mark.parametrize("progress", [make_progress("none", 1, "acc"), SILENT])
def test_none_is_silent_whatever_the_duration(progress, capsys, monkeypatch):
    clock = Clock()
    monkeypatch.setattr("time.monotonic", clock)
    with progress:
        with progress.task("train epoch 1", total=10, unit="batches") as task:
            for _ in range(10):
                clock.now += 10
                task.advance()
        progress.epoch({})
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



def test_images_on_the_cpu_are_evaluated_in_cache_sized_chunks_with_the_same_numbers(capsys):
    from regablate.data import Data, Split
    from regablate.metrics.chunks import chunk_size

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (600, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(600) % 10
    assert chunk_size(images, 4096) == 256 and chunk_size(images, 100) == 100
    assert chunk_size(torch.zeros(600, 20), 4096) == 4096  # features: the configured size
    assert chunk_size(torch.zeros(0, 3, 224, 224), 4096) == 8
    split = Split(images, labels)
    data = Data("classification", split, split, split, (3, 32, 32), 10,
                prepare=lambda x: (x.float() - 128) / 64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    model.train()
    progress = make_progress("plain", 1, "acc", every=0.0, clock=Clock())
    with progress.task("closing evaluation test", total=600, unit="images") as task:
        result = evaluate(model, data, split, 4096, calibration_bins=15, progress=task)
    assert model.training  # its mode is given back
    assert [line.split(": ")[1].split(" ")[0] for line in capsys.readouterr().out.splitlines()] == [
        "256/600", "512/600", "600/600"]
    model.eval()
    with torch.no_grad():
        out = model(data.prepare(images))
    assert result["acc"] == (out.argmax(1) == labels).sum().item() / 600
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(out, labels).item(), rel=1e-6)
    assert sum(result["reliability"]["count"]) == 600


def test_mc_dropout_on_images_on_the_cpu_goes_in_cache_sized_chunks(monkeypatch):
    from regablate.data import Data, Split
    from regablate.metrics.uncertainty import mc_dropout

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (600, 3, 8, 8), dtype=torch.uint8, generator=g)
    split = Split(images, torch.arange(600) % 10)
    data = Data("classification", split, split, split, (3, 8, 8), 10, prepare=lambda x: x.float() / 255)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16), torch.nn.ReLU(),
                                torch.nn.Dropout(0.5), torch.nn.Linear(16, 10))
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    monkeypatch.setattr("regablate.metrics.chunks.CPU_IMAGE_CHUNK_VALUES", 192 * 256)
    mc = mc_dropout(model, data, samples=3, batch_size=4096)
    assert seen == [256] * 3 + [256] * 3 + [88] * 3  # each chunk's three passes
    assert 0 < mc["val_mean_std"] and 0 <= mc["val_acc"] <= 1

