"""Optimisers and learning-rate schedules, built from `optim` and `sched` settings.

`optim.weight_decay` is handed to torch as is, on every parameter: coupled L2 for Adam and SGD,
decoupled for AdamW — exactly torch's behaviour. Decay restricted to weight matrices is
`reg=weight_decay`, applied by `decoupled_decay_` from each group's `decoupled_decay`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from regablate.config.schema import check, fraction, nonneg, positive


@dataclass
class AdamSettings:
    name: Literal["adamw", "adam"] = "adamw"
    lr: float = positive(1e-3)  # learning rate
    weight_decay: float = nonneg(0.0)  # torch's own weight_decay, on all parameters
    betas: list[float] = check(lambda v: 0 <= v < 1, "must be two numbers in [0, 1)",
                               default=[0.9, 0.999])
    eps: float = positive(1e-8)


@dataclass
class SGDSettings:
    name: Literal["sgd"] = "sgd"
    lr: float = positive(0.05)
    weight_decay: float = nonneg(0.0)  # coupled L2 on all parameters, as torch does it
    momentum: float = check(lambda v: 0 <= v < 1, "must be in [0, 1)", 0.9)
    nesterov: bool = False


OPTIMISERS = {"adamw": AdamSettings, "adam": AdamSettings, "sgd": SGDSettings}


def check_optimizer(s: AdamSettings | SGDSettings) -> None:
    """What torch's optimisers refuse and the schema cannot say of one field alone: Adam's betas
    are two numbers; Nesterov momentum needs a momentum."""
    from regablate.errors import ConfigError

    if s.name != "sgd" and len(s.betas) != 2:
        raise ConfigError("optim.betas", s.betas, "must be two numbers in [0, 1)")
    if s.name == "sgd" and s.nesterov and s.momentum == 0:
        raise ConfigError("optim.nesterov", True, "needs optim.momentum > 0 (it is 0)")


def build_optimizer(s: AdamSettings | SGDSettings, groups: list[dict]) -> torch.optim.Optimizer:
    check_optimizer(s)
    if s.name == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov,
                               weight_decay=s.weight_decay)
    cls = torch.optim.AdamW if s.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=s.lr, betas=tuple(s.betas), eps=s.eps, weight_decay=s.weight_decay)


def hyperparameters(s: AdamSettings | SGDSettings) -> dict:
    """Every key torch's optimiser puts in a parameter group besides `params`, as
    `build_optimizer(s, groups)` fills them in with torch 2.13 (the version the Makefile installs;
    tests/test_optim.py checks them against the installed torch). Another version's
    `load_state_dict` still takes these groups: it fills in a key they lack and keeps one it
    does not read."""
    if s.name == "sgd":
        return dict(lr=s.lr, momentum=s.momentum, dampening=0, weight_decay=s.weight_decay,
                    nesterov=s.nesterov, maximize=False, foreach=None, differentiable=False, fused=None)
    return dict(lr=s.lr, betas=tuple(s.betas), eps=s.eps, weight_decay=s.weight_decay, amsgrad=False,
                maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                decoupled_weight_decay=s.name == "adamw")


def held_groups(s: AdamSettings | SGDSettings, groups: list[dict]) -> list[dict]:
    """The parameter groups as `build_optimizer(s, groups)` would hold them, without building it
    (the first torch optimiser of a process imports torch._dynamo: about a second)."""
    check_optimizer(s)
    return [{**g, **{k: v for k, v in hyperparameters(s).items() if k not in g}} for g in groups]


def state_dict_of(s: AdamSettings | SGDSettings, groups: list[dict], lrs: list[float],
                  state: dict) -> dict:
    """`state_dict()` of the optimiser `build_optimizer(s, groups)` at group lrs `lrs`, holding
    `state` (parameter -> its per-parameter state, e.g. step, exp_avg, exp_avg_sq), built without
    it: what a stacked member's last.pt holds, for `load_state_dict` to resume it."""
    packed, out_groups, index = {}, [], 0
    for g, lr in zip(held_groups(s, groups), lrs, strict=True):
        ids = list(range(index, index + len(g["params"])))
        for i, p in zip(ids, g["params"]):
            if p in state:
                packed[i] = state[p]
        out_groups.append({**{k: v for k, v in g.items() if k != "params"}, "lr": lr, "params": ids})
        index += len(ids)
    return {"state": packed, "param_groups": out_groups}


def decay_groups(opt: torch.optim.Optimizer) -> list[dict]:
    """The parameter groups that carry a positive `decoupled_decay` rate."""
    return [g for g in opt.param_groups if g.get("decoupled_decay", 0.0) > 0 and g["params"]]


@torch.no_grad()
def decoupled_decay_(groups: list[dict]) -> None:
    """w ← w·(1 − lr·λ) for each group, with the group's current lr (AdamW's rule)."""
    for g in groups:
        torch._foreach_mul_(g["params"], 1.0 - g["lr"] * g["decoupled_decay"])


@dataclass
class PlateauSettings:
    name: Literal["plateau"] = "plateau"
    factor: float = fraction(0.5)  # lr <- lr * factor on a plateau of val loss
    patience: int = nonneg(5)  # epochs without improvement before reducing
    threshold: float = nonneg(1e-4)  # relative improvement that counts
    min_lr: float = nonneg(0.0)


@dataclass
class CosineSettings:
    name: Literal["cosine"] = "cosine"
    min_lr: float = nonneg(0.0)  # lr at trainer.max_epochs


@dataclass
class NoSchedule:
    name: Literal["none"] = "none"


SCHEDULES = {"plateau": PlateauSettings, "cosine": CosineSettings, "none": NoSchedule}


class Schedule:
    """Steps the lr once per epoch; plateau watches the validation loss."""

    def __init__(self, s, opt: torch.optim.Optimizer | None, max_epochs: int):
        """`opt` may be None where `s.name` is "none": nothing moves the lr then."""
        self.s = s
        lrs = torch.optim.lr_scheduler
        if s.name == "plateau":
            self.inner = lrs.ReduceLROnPlateau(opt, mode="min", factor=s.factor, patience=s.patience,
                                               threshold=s.threshold, min_lr=s.min_lr)
        elif s.name == "cosine":
            self.inner = lrs.CosineAnnealingLR(opt, T_max=max_epochs, eta_min=s.min_lr)
        else:
            self.inner = None

    def step(self, val_loss: float) -> None:
        if self.s.name == "plateau":
            self.inner.step(val_loss)
        elif self.inner is not None:
            self.inner.step()

    def state_dict(self) -> dict:
        return {} if self.inner is None else self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.inner is not None:
            self.inner.load_state_dict(state)
