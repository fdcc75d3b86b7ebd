"""A run's TensorBoard files hold exactly the events torch's SummaryWriter writes for the same
calls (wall times aside), a resumed run's files hide what it recorded after its checkpoint, and
an events file that cannot be written fails the run without costing a metrics line."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch

from regablate.tensorboard import records as tb_records
from regablate.tensorboard.hparams import SESSION_FILE
from regablate.training import recorder

HPARAMS = {"reg": "dropout", "reg.dropout.p": 0.5}
TEST = {"loss": 0.61, "acc": 0.7}


def rows(first: int, last: int) -> list[dict]:
    """Rows as the trainers write them (floats, ints, a numpy float)."""
    import numpy as np

    return [{"epoch": e, "lr": 0.001, "train_loss": 1 / e, "train_acc": 1 - 1 / (e + 1), "val_loss": 1.1 / e,
             "val_acc": 0.9 - 1 / (e + 2), "gap": 0.1 / e, "objective": 1 / e + 0.01, "epoch_time_s": 0.01,
             "weights/sparsity": np.float32(0.125), "weights/l1": 3.0 + e, "weights/l2": 1e-7 * e}
            for e in range(first, last + 1)]


def weights(epoch: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(epoch)
    return [("linear1.weight", torch.randn(16, 8, generator=g, requires_grad=True)),
            ("linear2.weight", torch.randn(4, 16, generator=g, dtype=torch.float64) * 1e-3),
            ("head.weight", torch.zeros(3, 4))]


def best_of(history: list[dict]) -> dict:
    return max(history, key=lambda r: r["val_acc"] - 0.02 * r["epoch"])


def record(run_dir: Path, epochs: tuple[int, int], resume: dict | None = None) -> dict:
    """What a trainer does: histograms every 3rd epoch, one row per epoch, a flush (a checkpoint)
    now and then, the final weights at the end."""
    rec = recorder.Recorder(run_dir, {"group": "g"}, "acc", HPARAMS, resume=resume)
    history = list((resume or {}).get("history", []))
    for row in rows(*epochs):
        history.append(row)
        if row["epoch"] % 3 == 1:
            rec.histograms(weights(row["epoch"]), row["epoch"])
        rec.epoch(row, best=best_of(history))
        if row["epoch"] % 4 == 0:
            rec.flush()
    best = best_of(history)["epoch"]
    return rec.finish("completed", final_weights=weights(0), best_epoch=best, epochs_run=epochs[1],
                      metrics_epoch=best, test=TEST)


def record_with_summary_writers(tb: Path, epochs: tuple[int, int], history: list[dict] | None = None) -> None:
    """The same calls through torch's SummaryWriter: one per (sub-)run, an epoch's scalars of a
    sub-run in one event (torch's `scalar` for each), histograms by `add_histogram`."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import scalar

    def add(w, step, pairs):
        w.file_writer.add_summary(Summary(value=[v for tag, x in pairs for v in scalar(tag, x).value]), step)

    history = list(history or [])
    purge = history[-1]["epoch"] + 1 if history else None
    run = SummaryWriter(str(tb), purge_step=purge)
    splits = {s: SummaryWriter(str(tb / s), purge_step=purge) for s in ("train", "val")}
    for row in rows(*epochs):
        history.append(row)
        best, e = best_of(history), row["epoch"]
        if e % 3 == 1:
            for name, w in weights(e):
                run.add_histogram(f"weights/hist/{name}", w.detach().float().cpu().clone(), e)
        for s, w in splits.items():
            add(w, e, [("loss", row[f"{s}_loss"]), ("acc", row[f"{s}_acc"]), ("best/loss", best[f"{s}_loss"]),
                       ("best/acc", best[f"{s}_acc"])])
        add(run, e, [("gap", row["gap"]), ("lr", row["lr"]),
                     *((k, v) for k, v in row.items() if k.startswith("weights/")), ("best/gap", best["gap"])])
    best = best_of(history)["epoch"]
    for name, w in weights(0):
        run.add_histogram(f"weights/final/{name}", w.detach().float().cpu().clone(), best)
    with SummaryWriter(str(tb / "test")) as w:
        add(w, best, [("best/loss", TEST["loss"]), ("best/acc", TEST["acc"])])
    for w in (run, *splits.values()):
        w.close()


def events(path: Path) -> list[bytes]:
    """An events file's events (checksums verified), wall times cleared."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    out = []
    for raw in RawEventFileLoader(str(path)).Load():
        e = Event.FromString(raw)
        assert e.wall_time > 0
        e.wall_time = 0
        out.append(e.SerializeToString())
    return out


def event_files(tb: Path) -> dict[str, list[Path]]:
    """{sub-run: its events files, oldest first}, the HParams session file aside."""
    files: dict[str, list[Path]] = {}
    for p in sorted((p for p in tb.rglob("events.out.tfevents.*") if p.name != SESSION_FILE),
                    key=lambda p: int(p.name.rsplit(".", 1)[1])):
        files.setdefault(str(p.parent.relative_to(tb)), []).append(p)
    return files


def assert_same_files(ours: Path, theirs: Path) -> None:
    a, b = event_files(ours), event_files(theirs)
    assert sorted(a) == sorted(b) == [".", "test", "train", "val"]
    for sub in a:
        assert [events(p) for p in a[sub]] == [events(p) for p in b[sub]], sub
        name = rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}\.{os.getpid()}\.\d+"
        assert all(re.fullmatch(name, p.name) for p in a[sub])


def test_the_events_are_summary_writers_own(tmp_path):
    summary = record(tmp_path / "run", (1, 9))
    assert summary["status"] == "completed"
    record_with_summary_writers(tmp_path / "theirs", (1, 9))
    assert_same_files(tmp_path / "run" / "tb", tmp_path / "theirs")
    assert (tmp_path / "run" / "tb" / SESSION_FILE).exists()


def test_a_resumed_run_purges_what_came_after_its_checkpoint_as_summary_writer_does(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    record(run, (1, 7))  # ran to epoch 7, but its last checkpoint holds epochs 1-4
    history = rows(1, 4)
    session = (run / "tb" / SESSION_FILE).read_bytes()
    record(run, (5, 9), resume={"history": history, "wall_time_s": 1.0})
    assert (run / "tb" / SESSION_FILE).read_bytes() != session  # the end rewritten with the start kept
    theirs = tmp_path / "theirs"
    record_with_summary_writers(theirs, (1, 7))
    record_with_summary_writers(theirs, (5, 9), history)
    assert_same_files(run / "tb", theirs)
    val = EventAccumulator(str(run / "tb" / "val"))
    val.Reload()
    assert [e.step for e in val.Scalars("acc")] == list(range(1, 10))
    assert [e.value for e in val.Scalars("acc")] == pytest.approx([r["val_acc"] for r in rows(1, 9)])


def test_an_events_file_that_cannot_be_written_fails_the_run_and_keeps_every_metrics_line(tmp_path, monkeypatch):
    rec = recorder.Recorder(tmp_path, {"group": "g"}, "acc", None)
    for row in rows(1, 3):
        rec.epoch(row, best=row)
    write = os.write

    def full(fd, data):
        if fd != rec._fd:
            raise OSError(28, "No space left on device")
        return write(fd, data)

    monkeypatch.setattr(tb_records.os, "write", full)
    with pytest.raises(OSError):
        rec.finish("completed", best_epoch=3, epochs_run=3, metrics_epoch=3)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    assert re.search(r"cannot write .*/tb/(train/|val/)?events\.out\.tfevents\.", summary["error"])
    assert [line.split(",")[0] for line in (tmp_path / "metrics.csv").read_text().splitlines()] == [
        "epoch", "1", "2", "3"]


def test_non_finite_numbers_in_lists_are_stored_as_null():
    # before: a reliability table's NaN bin (NaN outputs in the closing evaluation) made
    # summary.json unwritable (ValueError from json), and the run's end went unrecorded
    from regablate.training.recorder import _finite

    assert _finite({"reliability": {"val": {"confidence": [0.5, float("nan")], "n": (3, float("inf"))}}}) == \
        {"reliability": {"val": {"confidence": [0.5, None], "n": [3, None]}}}
