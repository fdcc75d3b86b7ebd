"""Optimisers over stacked parameters θ (K, P) with per-member lr and weight decay.

Each member's row follows torch.optim's update, with its own lr_k and wd_k:

  AdamW   θ ← θ(1 − lr_k wd_k);  m ← m + (1−β₁)(g − m);  v ← β₂v + (1−β₂)g²
          θ ← θ − (lr_k / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
  Adam    the same with coupled decay g ← g + wd_k θ instead of the first line
  SGD     g ← g + wd_k θ;  b ← μb + g (b = g at the first step);  d = g + μb (Nesterov) or b;
          θ ← θ − lr_k d

`moments()` gives the optimiser state as (K, P) tensors under torch's names, from
which the trainer writes checkpoints in torch's own per-parameter form.
"""

from __future__ import annotations

import torch


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    """Per-member scalars as a float32 (K, 1) column (torch casts python scalars to float32 too)."""
    return torch.tensor(values, dtype=torch.float64).to(torch.float32).view(-1, 1).to(device)


def _runs(values: list[tuple]) -> list[tuple[int, int, tuple]]:
    """Maximal runs of equal consecutive values: [(start, end, value)]."""
    out: list[tuple[int, int, tuple]] = []
    for i, v in enumerate(values):
        if out and out[-1][2] == v:
            out[-1] = (out[-1][0], i + 1, v)
        else:
            out.append((i, i + 1, v))
    return out


class StackedAdam:
    """Adam or AdamW (`decoupled`) over θ (K, P), per-member lr and weight_decay.

    Members are updated by torch's fused Adam kernel (one pass over memory), one call per run
    of consecutive members that share (lr, weight_decay): the rows θ[a:b] of a run are one
    contiguous block, so a sweep over seeds is one call and per-member lrs cost a call each.
    """

    def __init__(self, theta: torch.Tensor, lr: list[float], weight_decay: list[float],
                 betas: tuple[float, float], eps: float, decoupled: bool):
        self.theta, self.betas, self.eps, self.decoupled = theta, betas, eps, decoupled
        self.exp_avg = torch.zeros_like(theta)
        self.exp_avg_sq = torch.zeros_like(theta)
        self.step_t = torch.zeros((), device=theta.device)  # torch keeps the step as a float tensor
        self.weight_decay = list(weight_decay)
        self.kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
        self.set_lr(lr)

    def set_lr(self, lr: list[float]) -> None:
        """Per-member learning rates (changed by each member's schedule between epochs)."""
        self.lr = list(lr)
        self.blocks = _runs(list(zip(self.lr, self.weight_decay)))

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        self.step_t += 1
        beta1, beta2 = self.betas
        for a, b, (lr, wd) in self.blocks:
            self.kernel([self.theta[a:b]], [grad[a:b]], [self.exp_avg[a:b]], [self.exp_avg_sq[a:b]],
                        [], [self.step_t], lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd,
                        eps=self.eps, amsgrad=False, maximize=False)

    def moments(self) -> dict[str, torch.Tensor]:
        """The moments, (K, P) each, under torch's names (the step is `step_t`)."""
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}


class StackedSGD:
    """SGD with momentum (optionally Nesterov) over θ (K, P), per-member lr and weight_decay."""

    def __init__(self, theta: torch.Tensor, lr: list[float], weight_decay: list[float],
                 momentum: float, nesterov: bool):
        self.theta, self.momentum, self.nesterov = theta, momentum, nesterov
        self.buf: torch.Tensor | None = None
        self.weight_decay = list(weight_decay)
        self._wd = _column(self.weight_decay, theta.device) if any(self.weight_decay) else None
        self.set_lr(lr)

    def set_lr(self, lr: list[float]) -> None:
        self.lr = list(lr)
        self._neg_lr = _column([-a for a in lr], self.theta.device)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        if self._wd is not None:
            grad = grad.addcmul(self.theta, self._wd)
        if self.momentum != 0:
            if self.buf is None:
                self.buf = grad.detach().clone()
            else:
                self.buf.mul_(self.momentum).add_(grad)
            grad = grad.add(self.buf, alpha=self.momentum) if self.nesterov else self.buf
        self.theta.addcmul_(grad, self._neg_lr)

    def moments(self) -> dict[str, torch.Tensor]:
        """The momentum buffer (K, P) under torch's name (none before the first step)."""
        return {} if self.buf is None else {"momentum_buffer": self.buf}


def build(name: str, theta: torch.Tensor, lr: list[float], weight_decay: list[float], settings):
    """The stacked optimiser for torch's `name` (adamw | adam | sgd) and the group's settings."""
    if name == "sgd":
        return StackedSGD(theta, lr, weight_decay, settings.momentum, settings.nesterov)
    return StackedAdam(theta, lr, weight_decay, tuple(settings.betas), settings.eps,
                       decoupled=name == "adamw")
