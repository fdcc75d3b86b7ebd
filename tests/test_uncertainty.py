"""MC dropout: zero spread without dropout, positive with it, BatchNorm kept in eval."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regablate.data.synthetic import (
    SineSettings,
    SparseSyntheticSettings,
    make_sine,
    make_sparse_synthetic,
)
from regablate.metrics.uncertainty import drop_rate, dropout_modules, is_dropout, mc_dropout
from regablate.models.mlp import MLPSettings, build_mlp
from regablate.nn import ModelSpec
from regablate.regularisers.dropout import DropConnectLinear
from regablate.training.evaluate import evaluate


@pytest.fixture(scope="module")
def cls_data():
    return make_sparse_synthetic(SparseSyntheticSettings(n=300, n_test=200, d=10, k=3, classes=3), 0)


def mlp(data, dropout=0.0, norm="none", dropconnect=0.0):
    torch.manual_seed(0)
    spec = ModelSpec(norm=norm, dropout=dropout, dropconnect=dropconnect)
    return build_mlp(MLPSettings(hidden=[32, 16]), data.in_shape, data.out_dim, spec)


def test_no_dropout_gives_exactly_zero_spread_and_the_eval_accuracy(cls_data):
    model = mlp(cls_data, norm="batch")
    mc = mc_dropout(model, cls_data, samples=8, batch_size=64)
    assert set(mc) == {"samples", "val_acc", "val_mean_std", "ood_mean_std"}
    assert mc["samples"] == 8
    assert mc["val_mean_std"] == 0.0 and mc["ood_mean_std"] == 0.0
    assert mc["val_acc"] == evaluate(model, cls_data, cls_data.val)["acc"]


@pytest.mark.parametrize("kind", ["dropout", "dropconnect"])
def test_dropout_gives_positive_spread(cls_data, kind):
    model = mlp(cls_data, **{kind: 0.5})
    mc = mc_dropout(model, cls_data, samples=8, batch_size=64)
    assert mc["val_mean_std"] > 1e-3
    assert mc["ood_mean_std"] > 1e-3
    assert 0.0 <= mc["val_acc"] <= 1.0


def test_spread_grows_with_the_drop_rate(cls_data):
    low = mc_dropout(mlp(cls_data, dropout=0.1), cls_data, samples=16)["val_mean_std"]
    high = mc_dropout(mlp(cls_data, dropout=0.6), cls_data, samples=16)["val_mean_std"]
    assert 0.0 < low < high


def test_only_dropout_modules_train_and_all_modes_are_restored(cls_data):
    model = mlp(cls_data, dropout=0.3, norm="batch")
    seen = {}
    for name, m in model.named_modules():
        if name:
            m.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, set()).add(m.training))
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    for before in (True, False):
        model.train(before)
        seen.clear()
        mc_dropout(model, cls_data, samples=3, batch_size=50)
        assert all(m.training is before for m in model.modules())
        for name, m in model.named_modules():
            if name:
                assert seen[name] == {isinstance(m, nn.Dropout)}, name
    for k, v in model.state_dict().items():  # BatchNorm running statistics untouched
        assert torch.equal(v, buffers[k]), k


def test_regression_reports_mse_and_output_spread():
    data = make_sine(SineSettings(n_train=20, n_val=40, n_test=100), 0)
    plain = mc_dropout(mlp(data), data, samples=5)
    assert set(plain) == {"samples", "val_mse", "val_mean_std", "ood_mean_std"}
    assert plain["val_mean_std"] == 0.0
    assert plain["val_mse"] == pytest.approx(evaluate(mlp(data), data, data.val)["mse"], rel=1e-6)
    dropped = mc_dropout(mlp(data, dropout=0.5), data, samples=5)
    assert dropped["val_mean_std"] > 0.0 and dropped["ood_mean_std"] > 0.0


def test_spread_is_the_population_std_over_samples():
    """One input, one output, a module that returns 0, 2, 0, 2, ... : σ = 1 exactly."""

    class Alternating(nn.Module):
        dropout_family = True

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x[:, :1] * 0 + 2.0 * (self.calls % 2 == 0)

    from regablate.data.base import Data, Split

    x = torch.zeros(1, 1)
    data = Data("regression", Split(x, x), Split(x, x), Split(x, x), (1,), 1)
    mc = mc_dropout(Alternating(), data, samples=4)
    assert mc["val_mean_std"] == 1.0
    assert mc["val_mse"] == 1.0  # mean prediction 1, target 0
    assert mc["ood_mean_std"] is None


def test_dropout_family_detection():
    class Marked(nn.Module):
        dropout_family = True
        drop_prob = 0.2

    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.3), nn.Dropout2d(0.1),
                          DropConnectLinear(2, 2, p=0.4), Marked(), nn.BatchNorm1d(2), nn.ReLU())
    assert [n for n, _ in dropout_modules(model)] == ["1", "2", "3", "4"]
    assert [drop_rate(m) for _, m in dropout_modules(model)] == [0.3, 0.1, 0.4, 0.2]
    assert not is_dropout(model[5]) and drop_rate(model[0]) is None


def test_spatial_modules_are_dropout_family():
    from regablate.regularisers.spatial import DropBlock2d, DropPath

    model = nn.Sequential(nn.Conv2d(3, 4, 3), DropBlock2d(0.2, 3), DropPath(0.3), nn.BatchNorm2d(4))
    assert [(n, drop_rate(m)) for n, m in dropout_modules(model)] == [("1", 0.2), ("2", 0.3)]


def test_samples_must_be_positive(cls_data):
    with pytest.raises(ValueError, match="samples"):
        mc_dropout(mlp(cls_data), cls_data, samples=0)
