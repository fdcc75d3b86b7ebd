"""The trainer through `train(cfg, run_dir)`: science, determinism, early stopping, files."""

from __future__ import annotations

import csv
import importlib.util
import json
import math

import pytest
import torch

from conftest import REPO
from regablate.training.loop import EarlyStopper, train


def load_plain():
    spec = importlib.util.spec_from_file_location("plain_mlp", REPO / "benchmarks" / "plain_mlp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_a_hand_written_pytorch_script(small_cfg, tmp_path, seed):
    """Configured like the classic script, regablate computes the same numbers."""
    cfg = small_cfg("dataset.n=2000", "dataset.n_test=2000", "sched=none", "trainer.max_epochs=4",
                    "trainer.early_stopping.patience=0", "trainer.restore_best=false", f"seed={seed}")
    summary = train(cfg, tmp_path)
    plain = load_plain().main(seed=seed, epochs=4)
    assert summary["val"]["acc"] == pytest.approx(plain["val_acc"], abs=1e-6)
    assert summary["train"]["acc"] == pytest.approx(plain["train_acc"], abs=1e-6)
    assert summary["test"]["acc"] == pytest.approx(plain["test_acc"], abs=1e-6)
    assert summary["val"]["loss"] == pytest.approx(plain["val_loss"], rel=1e-5)


def test_same_seeds_same_numbers_and_other_seed_differs(small_cfg, tmp_path):
    cfg = small_cfg("+reg=dropout_l2")
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b")
    c = train(small_cfg("+reg=dropout_l2", "seed=1"), tmp_path / "c")
    for key in ("train", "val", "test", "gap", "best_epoch"):
        assert a[key] == b[key]
    assert a["val"] != c["val"]

    def rows(run):  # every column but the wall-clock one
        return [{k: v for k, v in r.items() if k != "epoch_time_s"}
                for r in csv.DictReader(open(tmp_path / run / "metrics.csv"))]

    assert rows("a") == rows("b")


def test_summary_and_metrics_follow_the_contract(small_cfg, tmp_path):
    s = train(small_cfg("+reg=[dropout,l1]", "trainer.tensorboard=true"), tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == s
    for key in ("schema", "status", "task", "metric", "higher_is_better", "seed", "data_seed",
                "dataset", "model", "reg", "group", "best_epoch", "epochs_run", "stopped_early",
                "train", "val", "test", "gap", "wall_time_s", "device", "n_params", "warnings", "error"):
        assert key in s, key
    assert s["schema"] == 1 and s["status"] == "completed" and s["reg"] == ["dropout", "l1"]
    assert s["task"] == "classification" and s["metric"] == "acc" and s["higher_is_better"] is True
    assert s["gap"] == pytest.approx(s["train"]["acc"] - s["val"]["acc"])
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == s["epochs_run"] == 3
    assert list(rows[0])[:7] == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "gap"]
    best = rows[s["best_epoch"] - 1]
    assert float(best["val_acc"]) == pytest.approx(s["val"]["acc"])  # metrics at the best epoch
    assert any((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "best.pt").exists()


def test_regression_gap_and_metric(small_cfg, tmp_path):
    s = train(small_cfg("dataset=sine", "+reg=l1", "trainer.batch_size=16"), tmp_path)
    assert s["task"] == "regression" and s["metric"] == "mse" and s["higher_is_better"] is False
    assert s["gap"] == pytest.approx(s["val"]["mse"] - s["train"]["mse"])


def test_early_stopping_restores_the_best_epoch(small_cfg, tmp_path):
    cfg = small_cfg("dataset=tiny_binary", "model.hidden=[256,256]", "optim.lr=1e-2",
                    "trainer.max_epochs=200", "trainer.early_stopping.patience=3", "sched=none")
    s = train(cfg, tmp_path)
    assert s["stopped_early"] and s["epochs_run"] == s["best_epoch"] + 3 < 200
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert int(best["epoch"]) == s["best_epoch"]
    assert s["val"]["loss"] == pytest.approx(float(best["val_loss"]), rel=1e-6)


def test_plateau_schedule_reduces_lr(small_cfg, tmp_path):
    cfg = small_cfg("dataset=tiny_binary", "optim.lr=1e-2", "trainer.max_epochs=40",
                    "trainer.early_stopping.patience=0", "sched.patience=1")
    train(cfg, tmp_path)
    lrs = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "metrics.csv"))]
    assert lrs[0] == 1e-2 and min(lrs) < 1e-2


def test_divergence_is_recorded(small_cfg, tmp_path, capsys):
    cfg = small_cfg("dataset=sine", "optim=sgd", "optim.lr=1e6", "trainer.max_epochs=5")
    s = train(cfg, tmp_path)
    assert s["status"] == "diverged" and "non-finite" in s["error"]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"
    # resumed, it is left as it ended, and said so as what it is
    again = train({**cfg, "trainer": {**cfg["trainer"], "resume": "auto", "progress": "plain"}}, tmp_path)
    assert again["status"] == "diverged" and f"already diverged: {tmp_path}" in capsys.readouterr().out


def test_early_stopper_min_delta_and_direction():
    es = EarlyStopper(patience=2, min_delta=0.1, higher_is_better=True)
    assert es.update(0.5, 1) and not es.update(0.55, 2) and not es.stop
    assert not es.update(0.52, 3) and es.stop and es.best_epoch == 1
    assert EarlyStopper(0, 0.0, False).stop is False


def test_weights_are_left_finite_and_model_in_eval_for_summary(small_cfg, tmp_path):
    s = train(small_cfg("+reg=batchnorm"), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "best.pt")
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    assert math.isfinite(s["test"]["loss"])


def test_group_ignores_seeds_and_number_spelling():
    from conftest import compose_cfg
    from regablate.training.experiment import group_id

    base = compose_cfg()
    assert group_id(base) == group_id(compose_cfg("seed=3")) == group_id(compose_cfg("optim.weight_decay=0"))
    assert group_id(base) != group_id(compose_cfg("optim.weight_decay=1e-4"))
    assert group_id(base) != group_id(compose_cfg("+reg=dropout"))


def test_tensorboard_scalars_and_hparams_session_group(small_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    s = train(small_cfg("+reg=dropout", "trainer.tensorboard=true", "trainer.max_epochs=6",
                        "optim.lr=0.05"), tmp_path)
    split = {}
    for name in ("train", "val", "test"):
        split[name] = EventAccumulator(str(tmp_path / "tb" / name))
        split[name].Reload()
    assert set(split["train"].Tags()["scalars"]) == set(split["val"].Tags()["scalars"]) == {
        "loss", "acc", "best/loss", "best/acc"}
    assert [e.step for e in split["val"].Scalars("acc")] == [1, 2, 3, 4, 5, 6]
    # best/* is the value at the best epoch so far: it ends on the summary's numbers
    best = split["val"].Scalars("best/acc")
    assert best[-1].value == pytest.approx(s["val"]["acc"]) and len(best) == 6
    assert split["train"].Scalars("best/acc")[-1].value == pytest.approx(s["train"]["acc"])
    assert [(e.step, e.value) for e in split["test"].Scalars("best/acc")] == [
        (s["best_epoch"], pytest.approx(s["test"]["acc"]))]
    run = EventAccumulator(str(tmp_path / "tb"))
    run.Reload()
    assert set(run.Tags()["scalars"]) == {"gap", "best/gap", "lr", "weights/sparsity", "weights/l1", "weights/l2"}
    assert run.Scalars("best/gap")[-1].value == pytest.approx(s["gap"])
    content = run.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.group_name == f"dropout {s['group']}" and start.hparams["reg.dropout.p"].number_value == 0.5
    assert start.hparams["reg"].string_value == "dropout"
    assert not {"seed", "data_seed", "trainer.progress", "trainer.threads"} & set(start.hparams)
    assert "_hparams_/experiment" not in run.PluginTagToContent("hparams")  # the sweep's root says it


def test_a_diverged_run_without_restore_best_ends_its_best_curves_on_the_weights_it_reports(small_cfg, tmp_path,
                                                                                            monkeypatch):
    """A run that diverges falls back to its best epoch (restore_best or not): `best/*` ends on
    those numbers, at the epoch that diverged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.syspath_prepend(str(REPO / "tests"))
    s = train(small_cfg("model=custom", "model.target=custom_models:NaNLater", "trainer.tensorboard=true",
                        "trainer.max_epochs=8", "trainer.restore_best=false",
                        "trainer.early_stopping.min_delta=100"), tmp_path)  # epoch 1 stays the best
    assert s["status"] == "diverged" and s["metrics_epoch"] == s["best_epoch"] < s["epochs_run"], s
    for name in ("train", "val"):
        acc = EventAccumulator(str(tmp_path / "tb" / name))
        acc.Reload()
        last = acc.Scalars("best/acc")[-1]
        assert (last.step, last.value) == (s["epochs_run"] + 1, pytest.approx(s[name]["acc"]))


def test_tensorboard_shows_the_last_epochs_numbers_without_restore_best(small_cfg, tmp_path):
    """With trainer.restore_best=false the run reports its last weights: `best/*` and the test
    point (what HParams shows) are those numbers, at that epoch, not the best epoch's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = train(small_cfg("trainer.tensorboard=true", "trainer.max_epochs=8", "optim.lr=0.05",
                        "trainer.restore_best=false"), tmp_path)
    assert s["metrics_epoch"] == s["epochs_run"] == 8 and s["best_epoch"] < 8  # the case in question
    split = {}
    for name in ("train", "val", "test"):
        split[name] = EventAccumulator(str(tmp_path / "tb" / name))
        split[name].Reload()
    for name in ("train", "val"):
        last = split[name].Scalars("best/acc")[-1]
        assert (last.step, last.value) == (8, pytest.approx(s[name]["acc"]))
        assert [e.value for e in split[name].Scalars("best/acc")] == [e.value for e in split[name].Scalars("acc")]
    assert [(e.step, e.value) for e in split["test"].Scalars("best/acc")] == [(8, pytest.approx(s["test"]["acc"]))]
    run = EventAccumulator(str(tmp_path / "tb"))
    run.Reload()
    assert run.Scalars("best/gap")[-1].value == pytest.approx(s["gap"])


def test_long_work_shows_its_progress_within_epochs_and_the_closing_evaluation(small_cfg, tmp_path, monkeypatch,
                                                                                 capsys):
    from regablate.training import loop as train_module
    from regablate.training import progress

    # every task "takes long": nothing is shown before `delay`, then a line every `every` s
    monkeypatch.setattr(train_module, "make_progress",
                        lambda mode, n, metric: progress.make_progress(mode, n, metric, delay=0.0, every=0.0))
    train(small_cfg("trainer.progress=plain", "trainer.max_epochs=2"), tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("train epoch 2: ") and "/5 batches" in line for line in out)  # 280 / 64
    assert any(line.startswith("evaluate epoch 1: ") and "inputs" in line for line in out)
    for split in ("train", "val", "test"):
        assert any(line.startswith(f"closing evaluation {split}: ") for line in out), split
    assert [line for line in out if line.startswith("epoch ")][-1].startswith("epoch    2/2")
