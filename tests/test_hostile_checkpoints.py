"""A run dir's checkpoints are data: a hostile one never runs code, a damaged one is refused in one
line before anything is written, and an earlier version's checkpoint still resumes exactly."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, compose_cfg, run_cli
from regablate.rundir.claim import RunRefused
from regablate.training import checkpoint
from regablate.training.loop import train

SMALL = ("dataset=tiny_binary", "trainer.max_epochs=4", "trainer.early_stopping.patience=0",
         "trainer.progress=none", "trainer.tensorboard=false")


def fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".log")}


_TRAINED: dict = {}  # overrides -> a trained run dir, copied for each test (training is the cost)


def interrupted_run(root: Path, *overrides: str) -> tuple[dict, Path]:
    """A finished run relabelled `interrupted`, as an interrupt leaves one: resume continues it.
    Trained once per set of overrides and process, then copied."""
    import shutil
    import tempfile

    cfg = compose_cfg(*SMALL, *overrides)
    if overrides not in _TRAINED:
        _TRAINED[overrides] = Path(tempfile.mkdtemp(prefix="trained-")) / "run"
        train(cfg, _TRAINED[overrides])
    shutil.copytree(_TRAINED[overrides], root)
    summary = root / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "interrupted"}))
    return cfg, root / "checkpoints"


def resume(cfg: dict) -> dict:
    return {**cfg, "trainer": {**cfg["trainer"], "resume": "auto"}}


class Payload:
    """Pickled, it calls `pathlib.Path.touch` on the marker when it is loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


# -- 1: nothing in a checkpoint runs ---------------------------------------------------------

def _plant(where: str, run_dir: Path, marker: Path) -> Path:
    """A payload in `where` of run_dir's checkpoints; returns the file the refusal names."""
    ckpt = run_dir / "checkpoints"
    if where in ("last.pt", "best.pt"):
        state = torch.load(ckpt / where, weights_only=True)
        state["x"] = Payload(marker)
        torch.save(state, ckpt / where)
        return ckpt / where
    state = checkpoint.load_last(run_dir)  # a last.pt valid for weights_only=True, a payload in its RNG bytes
    state["rng"][where.split(".")[1]] = pickle.dumps(Payload(marker))
    torch.save(state, ckpt / "last.pt")
    return ckpt / "last.pt"


@pytest.mark.parametrize("where", ["last.pt", "best.pt", "rng.python", "rng.numpy"])
def test_a_malicious_checkpoint_runs_nothing_and_is_refused(tmp_path, where):
    cfg, _ = interrupted_run(tmp_path / "run")
    marker = tmp_path / "pwned"
    damaged = _plant(where, tmp_path / "run", marker)
    before = fingerprint(tmp_path / "run")
    with pytest.raises(RunRefused) as e:
        train(resume(cfg), tmp_path / "run")
    assert not marker.exists()
    assert f"cannot be resumed: {damaged} is damaged" in str(e.value) and "move it away" in str(e.value)
    assert fingerprint(tmp_path / "run") == before


def test_a_malicious_checkpoint_through_the_cli_is_one_line_and_the_run_stays_interrupted(tmp_path):
    interrupted_run(tmp_path / "run")
    marker = tmp_path / "pwned"
    damaged = _plant("last.pt", tmp_path / "run", marker)
    before = fingerprint(tmp_path / "run")
    r = run_cli("run", *SMALL, "hydra.run.dir=run", "trainer.resume=auto", cwd=tmp_path)
    assert not marker.exists()
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert f"cannot be resumed: {damaged} is damaged (holds objects other than tensors" in r.stderr
    assert fingerprint(tmp_path / "run") == before
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "interrupted"


def test_checkpoints_load_as_plain_data_and_the_package_never_unpickles(tmp_path):
    train(compose_cfg(*SMALL, "+reg=dropout"), tmp_path)
    for name in ("last.pt", "best.pt"):
        torch.load(tmp_path / "checkpoints" / name, weights_only=True)  # raises on any object
    code = "\n".join(p.read_text() for p in (REPO / "regablate").rglob("*.py"))
    assert not re.search(r"pickle\.loads?\(", code) and "weights_only=False" not in code


# -- 2: a damaged checkpoint is refused before anything is written ----------------------------

def _drop(key):
    def damage(state):
        del state[key]
    return damage


def _set(path: str, value):
    def damage(state):
        *parents, last = path.split(".")
        node = state
        for p in parents:
            node = node[p]
        node[last] = value(node[last]) if callable(value) else value
    return damage


def _first_moment(state):
    per_param = next(iter(state["optimizer"]["state"].values()))
    per_param["exp_avg"] = torch.zeros(3)


DAMAGES = {
    "no optimizer": (_drop("optimizer"), "has no optimizer"),
    "epoch as a string": (_set("epoch", "4"), "epoch is str"),
    "epoch past max_epochs": (_set("epoch", 40), "epoch 40 is not in 1..4"),
    "history too short": (_set("history", lambda h: json.dumps(json.loads(h)[:2])), "history does not hold 4"),
    "history not JSON": (_set("history", "[{"), "history is not JSON"),
    "history of strings": (_set("history", lambda h: json.dumps([{**r, "gap": "x"} for r in json.loads(h)])),
                           "history row 1"),
    "weights of another shape": (lambda s: s["model"].update({k: torch.zeros(1) for k in list(s["model"])[:1]}),
                                 "model."),
    "a moment of another shape": (_first_moment, "exp_avg is not a float tensor"),
    "stopper best epoch": (_set("stopper.best_epoch", 9), "best epoch 9"),
    "schedule": (_set("schedule", {"x": 1}), "schedule does not hold"),
    "rng torch": (_set("rng.torch", torch.zeros(3, dtype=torch.uint8)), "rng.torch"),
    "rng python": (_set("rng.python.state", torch.zeros(3, dtype=torch.int64)), "rng.python.state"),
    "not a dict": (None, "is not a resume state"),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_structurally_damaged_last_pt_is_refused_and_touches_nothing(tmp_path, name):
    cfg, ckpt = interrupted_run(tmp_path / "run", "optim=adam")
    damage, says = DAMAGES[name]
    state = checkpoint.load_last(tmp_path / "run")
    if damage is None:
        state = [1, 2, 3]
    else:
        damage(state)
    torch.save(state, ckpt / "last.pt")
    before = fingerprint(tmp_path / "run")
    with pytest.raises(RunRefused) as e:
        train(resume(cfg), tmp_path / "run")
    assert f"{ckpt / 'last.pt'} is damaged" in str(e.value) and says in str(e.value), str(e.value)
    assert fingerprint(tmp_path / "run") == before


def test_a_missing_or_foreign_best_pt_is_refused(tmp_path):
    cfg, ckpt = interrupted_run(tmp_path / "run")
    (ckpt / "best.pt").unlink()
    with pytest.raises(RunRefused, match="best.pt is damaged"):
        train(resume(cfg), tmp_path / "run")
    torch.save({"weight": torch.zeros(2)}, ckpt / "best.pt")
    with pytest.raises(RunRefused, match="best.pt is damaged .*does not hold the keys"):
        train(resume(cfg), tmp_path / "run")


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_checkpoint_that_is_not_a_regular_file_is_refused_unread(tmp_path, kind):
    import os

    cfg, ckpt = interrupted_run(tmp_path / "run")
    (ckpt / "last.pt").unlink()
    if kind == "symlink":
        (ckpt / "last.pt").symlink_to("/dev/zero")
    else:
        os.mkfifo(ckpt / "last.pt")  # opening it would block for ever
    with pytest.raises(RunRefused, match="not a regular file"):
        train(resume(cfg), tmp_path / "run")


def test_a_damaged_checkpoint_through_the_cli_is_one_line_and_the_run_stays_interrupted(tmp_path):
    cfg, ckpt = interrupted_run(tmp_path / "run")
    state = checkpoint.load_last(tmp_path / "run")
    state["epoch"] = "2"
    torch.save(state, ckpt / "last.pt")
    before = fingerprint(tmp_path / "run")
    r = run_cli("run", *SMALL, "hydra.run.dir=run", "trainer.resume=auto", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "epoch is str, not a number" in r.stderr
    assert fingerprint(tmp_path / "run") == before


# -- an earlier version's checkpoint: pickled RNG states decoded, never unpickled --------------

def test_an_earlier_versions_checkpoint_resumes_exactly(tmp_path, monkeypatch):
    """last.pt as versions before this one wrote it (python's and numpy's RNG states as pickle
    bytes) continues to the numbers of an uninterrupted run."""
    from regablate.training import loop as train_module

    cfg = compose_cfg(*SMALL, "+reg=dropout", "trainer.max_epochs=5")
    full = train(cfg, tmp_path / "full")
    epoch, calls = train_module.train_epoch, []

    def interrupted_in_epoch_3(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return epoch(*args, **kw)

    monkeypatch.setattr(train_module, "train_epoch", interrupted_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(train_module, "train_epoch", epoch)
    state = checkpoint.load_last(tmp_path / "cut")
    python, numpy = checkpoint.python_rng(state["rng"]["python"]), checkpoint.numpy_rng(state["rng"]["numpy"])
    state["rng"]["python"], state["rng"]["numpy"] = pickle.dumps(python), pickle.dumps(numpy)
    torch.save(state, tmp_path / "cut" / "checkpoints" / "last.pt")
    resumed = train(resume(cfg), tmp_path / "cut")
    for key in ("status", "best_epoch", "epochs_run", "train", "val", "test", "gap"):
        assert resumed[key] == full[key], key


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickled_rng_states_decode_to_the_states_themselves(protocol):
    r, g = random.Random(3), np.random.RandomState(4)
    r.gauss(0, 1), g.standard_normal()  # both hold a cached gaussian
    assert checkpoint.legacy_python_rng(pickle.dumps(r.getstate(), protocol=protocol)) == r.getstate()
    key, words, pos, has_gauss, cached = checkpoint.legacy_numpy_rng(pickle.dumps(g.get_state(), protocol=protocol))
    want = g.get_state()
    assert (key, pos, has_gauss, cached) == (want[0], *want[2:]) and np.array_equal(words, want[1])
    with pytest.raises(checkpoint.DamagedCheckpoint):
        checkpoint.legacy_python_rng(pickle.dumps((3, (1, 2), None), protocol=protocol))


@pytest.mark.parametrize("kind", ["fifo", "devzero", "bomb"])
def test_resume_reads_a_hostile_summary_without_hanging_and_refuses_it(tmp_path, kind):
    import os

    cfg, _ = interrupted_run(tmp_path / "run")
    summary = tmp_path / "run" / "summary.json"
    summary.unlink()
    if kind == "fifo":
        os.mkfifo(summary)  # opening it for reading would wait for a writer for ever
    elif kind == "devzero":
        summary.symlink_to("/dev/zero")
    else:
        summary.write_text('{"seed": ' + "9" * 400 + "}")
    with pytest.raises(RunRefused, match="summary.json is damaged"):
        train(resume(cfg), tmp_path / "run")


def test_a_checkpoint_from_before_the_objective_rename_resumes_into_one_column(tmp_path):
    """last.pt's history written as `objective` (earlier versions): the resumed metrics.csv has
    one train_objective column, filled in every epoch."""
    import csv

    cfg, ckpt = interrupted_run(tmp_path / "run")
    state = checkpoint.load_last(tmp_path / "run")
    rows = json.loads(state["history"])[:2]
    state["history"] = json.dumps([{("objective" if k == "train_objective" else k): v for k, v in r.items()}
                                   for r in rows])
    state["epoch"], state["stopper"]["best_epoch"], state["stopper"]["bad_epochs"] = 2, 2, 0
    torch.save(state, ckpt / "last.pt")
    train(resume(cfg), tmp_path / "run")
    got = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert "objective" not in got[0] and [r["epoch"] for r in got] == ["1", "2", "3", "4"]
    assert all(r["train_objective"] not in ("", None) for r in got)


def test_an_error_line_shows_control_characters_escaped(tmp_path):
    """A run dir named with an escape sequence, refused: the one line shows it, never sends it."""
    cfg, ckpt = interrupted_run(tmp_path / "run\x1b]0;pwned\x07")
    (ckpt / "last.pt").write_bytes(b"not a checkpoint")
    r = run_cli("run", *SMALL, "hydra.run.dir=run\x1b]0;pwned\x07", "trainer.resume=auto", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr and "run\\x1b]0;pwned\\x07" in r.stderr
