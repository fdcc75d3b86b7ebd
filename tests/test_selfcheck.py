"""The eval determinism self-check: quiet on sound models, loud on a module stuck in training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regablate.checks.selfcheck import EvalNondeterminismError, check_eval_determinism
from regablate.data.synthetic import SparseSyntheticSettings, make_sparse_synthetic
from regablate.models.mlp import MLPSettings, build_mlp
from regablate.nn import ModelSpec


@pytest.fixture(scope="module")
def data():
    return make_sparse_synthetic(SparseSyntheticSettings(n=200, n_test=10, d=8, k=2, classes=2), 0)


def model_with(data, *extra: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    spec = ModelSpec(norm="batch", dropout=0.5, dropconnect=0.3)
    return nn.Sequential(*extra, build_mlp(MLPSettings(hidden=[16]), data.in_shape, data.out_dim, spec))


def test_sound_model_passes_and_keeps_its_modes_and_buffers(data):
    model = model_with(data)
    for mode in (True, False):
        model.train(mode)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        check_eval_determinism(model, data)
        assert all(m.training is mode for m in model.modules())
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_the_check_is_an_evaluation_without_autograd(data):
    seen = []

    class Spy(nn.Identity):
        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return x

    check_eval_determinism(model_with(data, Spy()), data)
    assert seen == [False, False] and torch.is_grad_enabled()


class AlwaysDropout(nn.Module):
    """Ignores self.training: the classic hand-written dropout bug."""

    def forward(self, x):
        return F.dropout(x, 0.5, training=True)


class StuckDropout(nn.Dropout):
    """A dropout whose train() ignores the mode it is given."""

    def train(self, mode: bool = True):
        return super().train(True)


class StuckBatchNorm(nn.BatchNorm1d):
    def train(self, mode: bool = True):
        return super().train(True)


def test_a_module_ignoring_eval_mode_fails_with_a_clear_message(data):
    model = model_with(data, AlwaysDropout())
    with pytest.raises(EvalNondeterminismError,
                       match=r"differ.*ignores self.training.*: 0 \(AlwaysDropout\) gives different"):
        check_eval_determinism(model, data)


def test_a_module_stuck_in_training_mode_is_named(data):
    model = model_with(data, StuckDropout(0.2))
    with pytest.raises(EvalNondeterminismError, match=r"still in training mode.*0 \(StuckDropout\)"):
        check_eval_determinism(model, data)


def test_batchnorm_stuck_in_training_mode_is_caught_by_its_buffers(data):
    """Batch statistics make two passes over one batch agree; the running statistics betray it."""
    model = model_with(data, StuckBatchNorm(data.in_shape[0]))
    before = model[0].running_mean.clone()
    with pytest.raises(EvalNondeterminismError, match=r"changed the model's buffers \(0.running_mean"):
        check_eval_determinism(model, data)
    assert torch.equal(model[0].running_mean, before)  # restored


class Residual(nn.Module):
    """Randomness in a container's own forward: its children are deterministic."""

    def __init__(self, width: int):
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x):
        return x + F.dropout(self.lin(x), 0.3)


def test_the_innermost_offending_module_is_named(data):
    model = model_with(data, Residual(data.in_shape[0]))
    with pytest.raises(EvalNondeterminismError, match=r": 0 \(Residual\) gives different outputs") as e:
        check_eval_determinism(model, data)
    assert "0.lin" not in str(e.value)
