"""Decoupled weight decay (Loshchilov & Hutter, AdamW) on weight matrices only."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from regablate.config.schema import nonneg
from regablate.regularisers.base import Regulariser, register


@dataclass
class DecaySettings:
    lam: float = nonneg(1e-3)  # decay rate λ: w <- w (1 - lr λ) before each optimiser step


@register
class WeightDecay(Regulariser):
    """Decoupled decay w ← w(1 − η λ) applied beside the optimiser's update (exactly AdamW's
    rule, for any optimiser). Two parameter groups: parameters with ndim >= 2 decay; biases,
    norm scales/shifts, every other 1-D parameter and what the model names in
    `no_weight_decay()` (a ViT's position embeddings and class token) do not. The trainer applies
    each group's `decoupled_decay` before `optimizer.step()`."""

    key, Settings = "weight_decay", DecaySettings

    def param_groups(self, model: nn.Module) -> list[dict]:
        from regablate.training.optim import decay_split

        decay, keep = decay_split(model)
        return [{"params": decay, "decoupled_decay": self.s.lam},
                {"params": keep, "decoupled_decay": 0.0}]
