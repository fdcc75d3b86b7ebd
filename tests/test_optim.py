"""The optimiser's parameter groups and state_dict as regablate writes them without building
torch's optimiser (a stacked sweep steps its own): the same dicts torch's own would give."""

from __future__ import annotations

import pytest
import torch

from regablate.errors import ConfigError
from regablate.experiment import build_experiment
from regablate.optim import build_optimizer, held_groups, state_dict_of
from regablate.settings import load_settings


@pytest.mark.parametrize("overrides", [("optim=adamw", "+reg=weight_decay"), ("optim=adam",),
                                       ("optim=sgd", "+reg=weight_decay", "optim.nesterov=true")])
def test_state_dict_by_hand_is_torchs_own(small_cfg, overrides):
    s = load_settings(small_cfg(*overrides, "optim.weight_decay=0.01"))
    x = build_experiment(s)
    assert "optimizer" not in x.__dict__  # not built until asked for
    expected_groups = held_groups(s.optim, x.groups)
    opt = build_optimizer(s.optim, x.groups)
    for p in x.model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    lrs = [0.5 * g["lr"] for g in opt.param_groups]
    for g, lr in zip(opt.param_groups, lrs):
        g["lr"] = lr
    by_hand = state_dict_of(s.optim, x.groups, lrs, dict(opt.state))
    assert by_hand == opt.state_dict()  # the same keys, values and tensors (state is not empty)
    assert by_hand["state"] and len(by_hand["param_groups"]) == (2 if "+reg=weight_decay" in overrides else 1)
    assert [{k: v for k, v in g.items() if k != "lr"} for g in opt.param_groups] == \
        [{k: v for k, v in g.items() if k != "lr"} for g in expected_groups]
    again = build_optimizer(s.optim, x.groups)
    again.load_state_dict(by_hand)  # and torch takes it back
    assert again.state_dict()["param_groups"] == by_hand["param_groups"]


def test_bad_betas_are_refused_before_anything_is_built(small_cfg):
    with pytest.raises(ConfigError, match=r"optim.betas.*two numbers"):
        build_experiment(load_settings(small_cfg("optim.betas=[0.9]")))
