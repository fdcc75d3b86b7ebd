"""The optimiser's parameter groups and state_dict as regablate writes them without building
torch's optimiser (a stacked sweep steps its own): the same dicts torch's own would give."""

from __future__ import annotations

import pytest
import torch

from regablate.errors import ConfigError
from regablate.training.experiment import build_experiment
from regablate.training.optim import build_optimizer, held_groups, state_dict_of
from regablate.training.settings import load_settings


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
    copies = {p: {k: v.clone() for k, v in st.items()} for p, st in opt.state.items()}
    by_hand, own = state_dict_of(s.optim, x.groups, lrs, copies), opt.state_dict()
    assert by_hand["param_groups"] == own["param_groups"]  # every key and value, params' indices too
    assert by_hand["state"].keys() == own["state"].keys() and by_hand["state"]  # (not empty)
    for i, st in own["state"].items():
        assert st.keys() == by_hand["state"][i].keys()
        for key, t in st.items():
            assert torch.equal(by_hand["state"][i][key], t) and by_hand["state"][i][key] is not t
    assert len(by_hand["param_groups"]) == (2 if "+reg=weight_decay" in overrides else 1)
    assert [{k: v for k, v in g.items() if k != "lr"} for g in opt.param_groups] == \
        [{k: v for k, v in g.items() if k != "lr"} for g in expected_groups]
    again = build_optimizer(s.optim, x.groups)
    again.load_state_dict(by_hand)  # and torch takes it back
    assert again.state_dict()["param_groups"] == by_hand["param_groups"]


def test_what_torch_would_refuse_is_refused_before_anything_is_built(small_cfg):
    with pytest.raises(ConfigError, match=r"optim.betas.*two numbers"):
        build_experiment(load_settings(small_cfg("optim.betas=[0.9]")))
    with pytest.raises(ConfigError, match=r"optim.nesterov=True: needs optim.momentum > 0"):
        build_experiment(load_settings(small_cfg("optim=sgd", "optim.momentum=0", "optim.nesterov=true")))


def test_parameter_groups_hold_lists_as_torch_makes_them(small_cfg):
    """One tensor or a generator as a group's params: a list, read as often as needed."""
    from regablate.training.experiment import _listed

    w = torch.nn.Parameter(torch.ones(2, 2))
    assert _listed({"params": w, "lr": 0.1})["params"] == [w]
    assert _listed({"params": (p for p in [w])})["params"] == [w]
