"""Optimisers over stacked parameters θ (K, P) with per-member lr and weight decay.

Each member's row follows torch.optim's update exactly (the same operations in the same order),
with lr_k and wd_k as (K, 1) columns instead of scalars:

  AdamW   θ ← θ(1 − lr_k wd_k);  m ← m + (1−β₁)(g − m);  v ← β₂v + (1−β₂)g²
          θ ← θ − (lr_k / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
  Adam    the same with coupled decay g ← g + wd_k θ instead of the first line
  SGD     g ← g + wd_k θ;  b ← μb + g (b = g at the first step);  d = g + μb (Nesterov) or b;
          θ ← θ − lr_k d

`state_for(k)` returns member k's state in torch's own per-parameter form, so an ordinary
torch optimiser can be loaded with it (checkpoints that the ordinary trainer resumes from).
"""

from __future__ import annotations

import torch


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    """Per-member scalars as a float32 (K, 1) column (torch casts python scalars to float32 too)."""
    return torch.tensor(values, dtype=torch.float64).to(torch.float32).view(-1, 1).to(device)


class StackedAdam:
    """Adam or AdamW (`decoupled`) over θ (K, P), per-member lr and weight_decay."""

    def __init__(self, theta: torch.Tensor, lr: list[float], weight_decay: list[float],
                 betas: tuple[float, float], eps: float, decoupled: bool):
        self.theta, self.betas, self.eps, self.decoupled = theta, betas, eps, decoupled
        self.exp_avg = torch.zeros_like(theta)
        self.exp_avg_sq = torch.zeros_like(theta)
        self.steps = 0
        self.weight_decay = list(weight_decay)
        self.set_lr(lr)

    def set_lr(self, lr: list[float]) -> None:
        """Per-member learning rates (changed by each member's schedule between epochs)."""
        self.lr = list(lr)
        dev = self.theta.device
        self._wd = _column(self.weight_decay, dev) if any(self.weight_decay) else None
        if self.decoupled and self._wd is not None:
            self._decay = _column([1 - a * w for a, w in zip(self.lr, self.weight_decay)], dev)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        theta, m, v = self.theta, self.exp_avg, self.exp_avg_sq
        self.steps += 1
        if self._wd is not None:
            if self.decoupled:
                theta.mul_(self._decay)
            else:
                grad = grad.addcmul(theta, self._wd)
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        neg_step = _column([-a / bias_correction1 for a in self.lr], theta.device)
        denom = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
        theta.addcdiv_(m * neg_step, denom)

    def state_for(self, k: int, views: list[tuple[int, tuple[int, ...]]]) -> list[dict]:
        """Member k's torch state, one dict per parameter (offset, shape) in `views`."""
        step = torch.tensor(float(self.steps))
        return [{"step": step.clone(),
                 "exp_avg": self.exp_avg[k, o : o + _numel(s)].view(s).clone(),
                 "exp_avg_sq": self.exp_avg_sq[k, o : o + _numel(s)].view(s).clone()}
                for o, s in views]


class StackedSGD:
    """SGD with momentum (optionally Nesterov) over θ (K, P), per-member lr and weight_decay."""

    def __init__(self, theta: torch.Tensor, lr: list[float], weight_decay: list[float],
                 momentum: float, nesterov: bool):
        self.theta, self.momentum, self.nesterov = theta, momentum, nesterov
        self.buf: torch.Tensor | None = None
        self.weight_decay = list(weight_decay)
        self._wd = _column(self.weight_decay, theta.device) if any(self.weight_decay) else None
        self.steps = 0
        self.set_lr(lr)

    def set_lr(self, lr: list[float]) -> None:
        self.lr = list(lr)
        self._neg_lr = _column([-a for a in lr], self.theta.device)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        self.steps += 1
        if self._wd is not None:
            grad = grad.addcmul(self.theta, self._wd)
        if self.momentum != 0:
            if self.buf is None:
                self.buf = grad.detach().clone()
            else:
                self.buf.mul_(self.momentum).add_(grad)
            grad = grad.add(self.buf, alpha=self.momentum) if self.nesterov else self.buf
        self.theta.addcmul_(grad, self._neg_lr)

    def state_for(self, k: int, views: list[tuple[int, tuple[int, ...]]]) -> list[dict]:
        if self.buf is None:
            return [{} for _ in views]
        return [{"momentum_buffer": self.buf[k, o : o + _numel(s)].view(s).clone()} for o, s in views]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def build(name: str, theta: torch.Tensor, lr: list[float], weight_decay: list[float], settings):
    """The stacked optimiser for torch's `name` (adamw | adam | sgd) and the group's settings."""
    if name == "sgd":
        return StackedSGD(theta, lr, weight_decay, settings.momentum, settings.nesterov)
    return StackedAdam(theta, lr, weight_decay, tuple(settings.betas), settings.eps,
                       decoupled=name == "adamw")
