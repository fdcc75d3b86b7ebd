"""An interrupted stacked chunk continued with trainer.resume=auto: stacked again, from its members'
last.pt states, it ends with exactly the uninterrupted chunk's numbers (CPU); a member whose
last.pt is damaged or not a stacked chunk's goes the ordinary way."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ENV
from regablate.errors import Terminated
from regablate.training import checkpoint
from regablate.training.loop import train
from regablate.training.settings import load_settings
from regablate.vectorized.grouping import Member, group, make_member
from regablate.vectorized.resume import ORDINARY, resume_member
from regablate.vectorized.trainer import VectorizedTrainer


def auto(cfg: dict) -> dict:
    return {**cfg, "trainer": {**cfg["trainer"], "resume": "auto"}}


def fit(cfgs: list[dict], root: Path, resume: bool = False) -> list[dict]:
    """The chunk of `cfgs` (run dirs root/v0, v1, ...), as the launcher builds it: with `resume`,
    each member from its run dir (trainer.resume=auto)."""
    shared: dict = {}
    if resume:
        members = [resume_member(i, auto(c), root / f"v{i}", load_settings(auto(c)), shared)
                   for i, c in enumerate(cfgs)]
    else:
        members = [make_member(i, c, root / f"v{i}", load_settings(c), shared) for i, c in enumerate(cfgs)]
    assert all(isinstance(m, Member) for m in members), members
    (grp,) = group(members)
    return VectorizedTrainer(grp).fit()[0]


def stop_in_epoch(epoch: int, monkeypatch) -> None:
    """The stacked trainer's `epoch`-th epoch of this process raises SIGTERM's exception as it starts."""
    real, calls = VectorizedTrainer._epoch, []

    def stopping(self, runs):
        calls.append(1)
        if len(calls) == epoch:
            raise Terminated()
        return real(self, runs)

    monkeypatch.setattr(VectorizedTrainer, "_epoch", stopping)


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in csv.DictReader(open(run_dir / "metrics.csv"))]


def summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    s.pop("wall_time_s")
    return s


def equal(a: object, b: object) -> bool:
    """Equal trees of tensors (same dtype, shape and every bit) and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(equal, a, b))
    return a == b


def last_state(run_dir: Path) -> dict:
    """last.pt's state of the run, times left out."""
    state = checkpoint.load_last(run_dir)
    history = [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in checkpoint.unpack_history(state["history"])]
    return {**{k: v for k, v in state.items() if k != "wall_time_s"}, "history": history}


def assert_same_runs(a: Path, b: Path, n: int) -> None:
    """Members 0..n-1 of two chunks: the same summaries, metrics.csv rows, best.pt and last.pt,
    to the bit (wall times aside)."""
    for i in range(n):
        x, y = a / f"v{i}", b / f"v{i}"
        assert summary(x) == summary(y), i
        assert rows(x) == rows(y), i
        assert equal(checkpoint.load(x / "checkpoints" / "best.pt"), checkpoint.load(y / "checkpoints" / "best.pt")), i
        assert equal(last_state(x), last_state(y)), i


# one chunk: dropout (two rates, one with L2), L2 alone, a member that stops early (at epoch 2)
# and one without an lr schedule (no torch optimiser); Adam(W)
MEMBERS = [("+reg=dropout", "reg.dropout.p=0.3"),
           ("seed=1", "+reg=l2", "reg.l2.lam=0.01"),
           ("seed=2", "+reg=dropout_l2", "optim.lr=0.003"),
           ("seed=3", "trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=0.5"),
           ("seed=4", "+reg=[dropout,weight_decay]", "sched=none")]
# another: SGD with momentum, BatchNorm (its statistics and step count) and dropout
NORM = [("optim=sgd", "+reg=[batchnorm,dropout]", "reg.dropout.p=0.2"),
        ("optim=sgd", "seed=1", "+reg=[batchnorm,l2]", "optim.lr=0.01")]


# conv members on a tiny fake CIFAR-10: structural rates and every member's batch transforms
CONV = [("+reg=[augment,dropout]",), ("seed=1", "+reg=[spatial_dropout,mixup]"),
        ("seed=2", "+reg=[cutout,dropblock]", "optim.lr=0.003")]


# regression (sine, MSE) under SGD: the member at lr 0.2 diverges in epoch 3, before the cut
SINE = [("dataset=sine", "optim=sgd", "optim.lr=0.05", "+reg=dropout", "reg.dropout.p=0.1"),
        ("dataset=sine", "optim=sgd", "optim.lr=0.2", "seed=1"),
        ("dataset=sine", "optim=sgd", "optim.lr=0.1", "seed=2", "+reg=l2", "reg.l2.lam=0.01")]


@pytest.mark.parametrize("kind", ["adamw", "sgd-batchnorm", "conv", "diverged"])
def test_an_interrupted_chunk_continues_stacked_to_the_uninterrupted_numbers(kind, small_cfg, tmp_path,
                                                                               monkeypatch):
    """Interrupted in epoch 3 (last.pt: epoch 2; "diverged": in epoch 6, last.pt: epoch 5), continued
    stacked and interrupted again in its second epoch, then continued to the end: every member's
    files are the uninterrupted chunk's, bit for bit."""
    opts = ("trainer.max_epochs=6", "trainer.checkpoint_every_s=3600", "dataset.n=300")
    members = {"adamw": MEMBERS, "sgd-batchnorm": NORM, "conv": CONV, "diverged": SINE}[kind]
    cut_in = 6 if kind == "diverged" else 3
    if kind == "diverged":
        opts = ("trainer.max_epochs=8", "trainer.checkpoint_every_s=3600")
    if kind == "conv":
        from conftest import write_fake_cifar10

        root = write_fake_cifar10(tmp_path / "data")
        opts = ("trainer.max_epochs=5", "trainer.checkpoint_every_s=3600", "model=convnet", "model.widths=[4]",
                "model.hidden=[8]", "dataset=cifar10", f"dataset.root={root}", "dataset.n_train=64",
                "trainer.batch_size=32", "trainer.device=cpu")
    cfgs = [small_cfg(*opts, *m) for m in members]
    fit(cfgs, tmp_path / "whole")
    stop_in_epoch(cut_in, monkeypatch)
    with pytest.raises(Terminated):
        fit(cfgs, tmp_path / "cut")
    monkeypatch.undo()
    cut = tmp_path / "cut"
    for i in range(len(cfgs)):
        assert json.loads((cut / f"v{i}" / "summary.json").read_text())["status"] == "interrupted"
        assert checkpoint.load_last(cut / f"v{i}")["stacked"]["epoch"] == cut_in - 1
    if kind == "adamw":  # the way trainer.resume=auto went before: each member alone, the ordinary way
        shutil.copytree(cut, tmp_path / "alone")
        for i, cfg in enumerate(cfgs):
            train(auto(cfg), tmp_path / "alone" / f"v{i}")
        assert rows(tmp_path / "alone" / "v0") != rows(tmp_path / "whole" / "v0")  # masks of another stream
    shutil.copy(cut / "v0" / "checkpoints" / "last.pt", tmp_path / "before.pt")  # the chunk's file now
    stop_in_epoch(2, monkeypatch)
    with pytest.raises(Terminated):
        fit(cfgs, cut, resume=True)
    monkeypatch.undo()
    assert {checkpoint.load_last(cut / f"v{i}")["stacked"]["epoch"] for i in range(len(cfgs))} == {cut_in}
    # killed while the new file was linked into the members' dirs: the last one still holds the
    # previous file; it continues with the others, from the chunk's newest file
    last = cut / f"v{len(cfgs) - 1}" / "checkpoints" / "last.pt"
    last.unlink()
    shutil.copy(tmp_path / "before.pt", last)
    assert checkpoint.load_last(last.parent.parent)["stacked"]["epoch"] == cut_in - 1
    summaries = fit(cfgs, cut, resume=True)
    assert_same_runs(cut, tmp_path / "whole", len(cfgs))
    if kind == "diverged":
        assert [s["status"] for s in summaries] == ["completed", "diverged", "completed"]
        assert summaries[1]["epochs_run"] == 2 and summaries[1]["error"] == "non-finite loss at epoch 3"
        assert checkpoint.load_last(cut / "v1")["epoch"] == 2
    else:
        assert [s["status"] for s in summaries] == ["completed"] * len(cfgs)
    if members is MEMBERS:
        assert [s["epochs_run"] for s in summaries] == [6, 6, 6, 2, 6]  # member 3 stopped before the cut
    # the ordinary trainer still continues a stacked member's last.pt alone (and skips a finished one)
    assert train(auto(cfgs[0]), cut / "v0")["status"] == "completed"


def test_a_chunk_split_under_a_smaller_max_members_continues_to_the_uninterrupted_numbers(small_cfg, tmp_path,
                                                                                          monkeypatch):
    """Interrupted in epoch 3, the chunk of five continues as two (chunks(members, 3)): the part of
    three is interrupted again and killed while its new file was linked into its members' dirs
    (the last one still holds the whole chunk's file of epoch 2), the part of two finishes. The
    member left behind takes its state and its chunk from its part's newer file (its best.pt and
    metrics.csv are that file's epoch's), so the three go on together from epoch 3, and every
    member ends with the uninterrupted chunk's files, bit for bit."""
    from regablate.vectorized.grouping import chunks

    opts = ("trainer.max_epochs=6", "trainer.checkpoint_every_s=3600", "dataset.n=300")
    cfgs = [small_cfg(*opts, *m) for m in MEMBERS]
    fit(cfgs, tmp_path / "whole")
    stop_in_epoch(3, monkeypatch)
    with pytest.raises(Terminated):
        fit(cfgs, tmp_path / "cut")
    monkeypatch.undo()
    cut = tmp_path / "cut"
    shutil.copy(cut / "v2" / "checkpoints" / "last.pt", tmp_path / "whole_chunk.pt")  # epoch 2, all five
    members = [resume_member(i, auto(c), cut / f"v{i}", load_settings(auto(c))) for i, c in enumerate(cfgs)]
    (grp,) = group(members)
    first, second = chunks(grp, 3)
    assert [m.job for m in first] == [0, 1, 2] and [m.job for m in second] == [3, 4]
    stop_in_epoch(2, monkeypatch)
    with pytest.raises(Terminated):
        VectorizedTrainer(first).fit()
    monkeypatch.undo()
    VectorizedTrainer(second).fit()
    last = cut / "v2" / "checkpoints" / "last.pt"
    assert checkpoint.load_last(cut / "v2")["stacked"]["epoch"] == 3
    last.unlink()
    shutil.copy(tmp_path / "whole_chunk.pt", last)
    again = [resume_member(i, auto(c), cut / f"v{i}", load_settings(auto(c))) for i, c in enumerate(cfgs)]
    assert again[3:] == [f"{ORDINARY} (already completed)"] * 2
    part = tuple((cut / f"v{i}").resolve() for i in range(3))
    assert [m.chunk for m in again[:3]] == [(3, part)] * 3 and [m.resume["epoch"] for m in again[:3]] == [3] * 3
    (grp,) = group(again[:3])
    VectorizedTrainer(grp).fit()
    assert_same_runs(cut, tmp_path / "whole", len(cfgs))


def test_what_does_not_continue_stacked_goes_the_ordinary_way(small_cfg, tmp_path, monkeypatch, capsys):
    """A finished run, an ordinary run's last.pt and a damaged one go the ordinary way (which
    skips, continues or refuses them); a run dir without last.pt starts again, stacked, as it would
    alone; a chunk whose members are not all there continues stacked without them."""
    opts = ("trainer.max_epochs=4", "trainer.checkpoint_every_s=3600", "dataset.n=300")
    cfgs = [small_cfg(*opts, "+reg=dropout", f"seed={i}") for i in range(4)]
    stop_in_epoch(2, monkeypatch)
    with pytest.raises(Terminated):
        fit(cfgs, tmp_path)
    monkeypatch.undo()
    members = [resume_member(i, auto(c), tmp_path / f"v{i}", load_settings(auto(c))) for i, c in enumerate(cfgs)]
    assert all(isinstance(m, Member) for m in members)
    assert members[0].chunk == (1, tuple((tmp_path / f"v{i}").resolve() for i in range(4)))
    last = tmp_path / "v1" / "checkpoints" / "last.pt"
    last.unlink()
    last.write_bytes(b"not a checkpoint")
    (tmp_path / "v2" / "checkpoints" / "last.pt").unlink()
    ordinary_cfg = small_cfg(*opts, "seed=7")
    train(ordinary_cfg, tmp_path / "o")  # an ordinary run's last.pt, finished
    why = [resume_member(i, auto(c), tmp_path / f"v{i}", load_settings(auto(c))) for i, c in enumerate(cfgs)]
    assert isinstance(why[0], Member) and isinstance(why[3], Member)
    assert why[1] == ORDINARY
    assert isinstance(why[2], Member) and why[2].resume is None and why[2].chunk == ()  # from epoch 1
    (done,) = VectorizedTrainer([why[2]]).fit()[0]  # its interrupted epoch-1 row is not kept twice
    assert done["status"] == "completed" and [r["epoch"] for r in rows(tmp_path / "v2")] == ["1", "2", "3", "4"]
    assert resume_member(9, auto(ordinary_cfg), tmp_path / "o", load_settings(auto(ordinary_cfg))) == \
        f"{ORDINARY} (already completed)"
    state = json.loads((tmp_path / "o" / "summary.json").read_text())
    (tmp_path / "o" / "summary.json").write_text(json.dumps({**state, "status": "interrupted"}))
    assert resume_member(9, auto(ordinary_cfg), tmp_path / "o", load_settings(auto(ordinary_cfg))) == \
        f"{ORDINARY} (no stacked checkpoint)"
    # a "stacked" part that does not fit the member: the ordinary way (which ignores that part)
    good = checkpoint.load_last(tmp_path / "v3")
    h = tmp_path / "h"
    shutil.copytree(tmp_path / "v3", h)
    for bad in ({"epoch": 0}, {"blocks": {"1": {"pos": 0, "rows": 10**9, "width": 32}}}, {"blocks": {}},
                {"drop": torch.zeros(3, dtype=torch.uint8)}, {"blocks": {"99": good["stacked"]["blocks"]["1"]}}):
        (h / "checkpoints" / "last.pt").unlink()
        checkpoint.save(h / "checkpoints" / "last.pt", {**good, "stacked": {**good["stacked"], **bad}})
        assert resume_member(3, auto(cfgs[3]), h, load_settings(auto(cfgs[3]))) == ORDINARY, bad
    checkpoint.save(h / "checkpoints" / "last.pt", good)  # its own file, not shared: stacked alone
    alone = resume_member(3, auto(cfgs[3]), h, load_settings(auto(cfgs[3])))
    assert isinstance(alone, Member) and alone.chunk == (1, (h.resolve(),))
    # members 0 and 3 continue as one chunk (K=2); the whole chunk's numbers to float rounding
    (grp,) = group([why[3], why[0]])
    assert [m.job for m in grp] == [0, 3]
    VectorizedTrainer(grp).fit()
    fit(cfgs, tmp_path / "whole")
    for i in (0, 3):
        for a, b in zip(rows(tmp_path / f"v{i}"), rows(tmp_path / "whole" / f"v{i}"), strict=True):
            assert {k: float(v) for k, v in a.items()} == pytest.approx({k: float(v) for k, v in b.items()},
                                                                         rel=1e-5, abs=1e-6)


STOPPING = """
import os, sys
from regablate.errors import Terminated
from regablate.vectorized.trainer import VectorizedTrainer

real, calls = VectorizedTrainer._epoch, []
def stopping(self, runs):
    calls.append(1)
    if len(calls) == int(os.environ.get("STOP_IN_EPOCH", 0)):
        raise Terminated()
    return real(self, runs)
VectorizedTrainer._epoch = stopping
sys.argv[0] = "regablate"
from regablate.cli import main
main()
"""


def test_a_sweep_stopped_mid_chunk_continues_stacked_with_the_printed_command(tmp_path):
    """`regablate run -m hydra/launcher=vectorized`, SIGTERM in epoch 3, then the command it
    prints: the chunk is stacked again and every member ends with the uninterrupted sweep's
    metrics.csv and summary."""
    script = tmp_path / "stopping.py"
    script.write_text(STOPPING)
    args = ("run", "-m", "hydra/launcher=vectorized", "dataset.n=300", "dataset.n_test=100",
            "trainer.max_epochs=5", "trainer.progress=none", "trainer.tensorboard=false",
            "+reg=dropout,l2", "seed=0,1")

    def regablate(*extra: str, stop: int = 0) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *extra], cwd=tmp_path, env={**ENV, "STOP_IN_EPOCH": str(stop)},
                              capture_output=True, text=True, timeout=300)

    whole = regablate(*args, "hydra.sweep.dir=whole")
    assert whole.returncode == 0, whole.stderr
    cut = regablate(*args, "hydra.sweep.dir=cut", stop=3)
    assert cut.returncode == 143, cut.stderr
    command = re.search(r"continue with: regablate (.*)", cut.stderr).group(1)
    assert command.endswith("hydra.sweep.dir=cut trainer.resume=auto")
    resumed = regablate(*command.split())
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout + resumed.stderr
    assert "Stacked group 1: K=4 members in 1 chunk(s)" in out and "ordinary" not in out
    steps = [int(re.search(r"chunk 1/1: K=4, (\d+) steps", r.stdout + r.stderr).group(1)) for r in (whole, resumed)]
    assert steps[1] * 5 == steps[0] * 3  # epochs 3 to 5 only
    for i in range(4):
        a, b = tmp_path / "cut" / str(i), tmp_path / "whole" / str(i)
        assert summary(a) == summary(b) and rows(a) == rows(b), i
        assert summary(a)["status"] == "completed" and len(rows(a)) == 5
