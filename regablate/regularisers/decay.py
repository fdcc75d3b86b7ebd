"""Decoupled weight decay (Loshchilov & Hutter, AdamW) on weight matrices only."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from regablate.config.schema import nonneg
from regablate.regularisers.base import Regulariser, not_weights, register


def decay_split(model: nn.Module) -> tuple[list, list]:
    """(decayed, kept) trainable parameters: weight matrices decay; biases, norm parameters, every
    other 1-D parameter, what the model names in `no_weight_decay()` (position embeddings, class
    token) and embedding tables do not (`regablate.regularisers.base.not_weights`)."""
    skip = not_weights(model)
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if p.ndim < 2 or name in skip else decay).append(p)
    return decay, keep


@dataclass
class DecaySettings:
    lam: float = nonneg(0.05)  # decay rate λ: w <- w (1 - lr λ) before each optimiser step


@register
class WeightDecay(Regulariser):
    """Decoupled decay w ← w(1 − η λ) applied beside the optimiser's update (exactly AdamW's
    rule, for any optimiser). Two parameter groups: parameters with ndim >= 2 decay; biases,
    norm scales/shifts, every other 1-D parameter, what the model names in `no_weight_decay()`
    (a ViT's position embeddings and class token) and embedding tables do not. The trainer applies
    each group's `decoupled_decay` before `optimizer.step()`."""

    key, Settings = "weight_decay", DecaySettings

    def param_groups(self, model: nn.Module) -> list[dict]:
        decay, keep = decay_split(model)
        return [{"params": decay, "decoupled_decay": self.s.lam},
                {"params": keep, "decoupled_decay": 0.0}]
