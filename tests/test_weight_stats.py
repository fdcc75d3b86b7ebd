"""Weight statistics by hand, and sparsity growing with the L1 penalty in real training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from regablate.metrics.weight_stats import named_weight_matrices, weight_stats
from regablate.training.experiment import build_experiment
from regablate.training.loop import train
from regablate.training.settings import load_settings


def test_stats_by_hand_over_weight_matrices_only():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Conv2d(1, 1, kernel_size=(1, 2)))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 5e-4], [-2.0, 3.0]]))
        model[0].bias.fill_(0.0)  # 1-D: never counted (nor the BatchNorm parameters)
        model[2].weight.copy_(torch.tensor([[[[-1e-3, 4.0]]]]))
    s = weight_stats(model)
    assert s["sparsity"] == pytest.approx(2 / 6)  # 0 and 5e-4; |-1e-3| is not < 1e-3
    assert s["l1"] == pytest.approx(2 + 3 + 5e-4 + 1e-3 + 4)
    assert s["l2"] == pytest.approx(math.sqrt(4 + 9 + 16 + 25e-8 + 1e-6))
    assert weight_stats(model, threshold=2.5)["sparsity"] == pytest.approx(4 / 6)
    assert [n for n, _ in named_weight_matrices(model)] == ["linear1.weight", "conv2d1.weight"]


def test_weight_names_do_not_shift_when_dropout_layers_are_inserted():
    plain = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    dropped = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Dropout(0.5), nn.Linear(3, 1))
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Dropout2d()), nn.Flatten(), nn.Linear(1, 1))
    assert [n for n, _ in named_weight_matrices(plain)] == ["linear1.weight", "linear2.weight"]
    assert [n for n, _ in named_weight_matrices(dropped)] == ["linear1.weight", "linear2.weight"]
    assert [n for n, _ in named_weight_matrices(nested)] == ["sequential1.conv2d1.weight", "linear1.weight"]


def test_a_model_without_weight_matrices():
    assert weight_stats(nn.BatchNorm1d(3)) == {"sparsity": 0.0, "l1": 0.0, "l2": 0.0}


def _cfg(reg: dict) -> dict:
    return {
        "seed": 0, "data_seed": 0,
        "dataset": {"name": "sparse_synthetic", "n": 600, "n_test": 100, "d": 20, "k": 4, "classes": 2},
        "model": {"name": "mlp", "hidden": [16]},
        "optim": {"name": "sgd", "lr": 0.05}, "sched": {"name": "none"}, "reg": reg,
        "trainer": {"max_epochs": 20, "batch_size": 32, "early_stopping": {"patience": 0},
                    "device": "cpu", "progress": "none", "tensorboard": False},
    }


@pytest.fixture
def one_thread():
    """A tiny MLP gains nothing from intra-op threads; on a busy machine they only contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sparsity_grows_with_l1(tmp_path, one_thread):
    stats = []
    for i, lam in enumerate((0.0, 1e-3, 3e-3)):
        cfg = _cfg({"l1": {"lam": lam}} if lam else {})
        train(cfg, tmp_path / str(i))
        model = build_experiment(load_settings(cfg)).model
        model.load_state_dict(torch.load(tmp_path / str(i) / "checkpoints" / "best.pt"))
        stats.append(weight_stats(model))
    sparsity = [s["sparsity"] for s in stats]
    assert sparsity[0] < 0.05  # a dense net: almost no weight is that small without L1
    assert sparsity[0] + 0.05 < sparsity[1] < sparsity[2] - 0.1
    assert stats[0]["l1"] > stats[1]["l1"] > stats[2]["l1"]
