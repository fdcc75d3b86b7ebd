"""Decoupled weight decay (Loshchilov & Hutter, AdamW) on weight matrices only."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from regablate.config.schema import nonneg
from regablate.regularisers.base import Regulariser, register


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters the model keeps out of decay besides the 1-D ones (timm's convention: a
    `no_weight_decay()` method naming them, e.g. the ViT's pos_embed and cls_token)."""
    names = getattr(model, "no_weight_decay", None)
    return set(names()) if callable(names) else set()


def decay_split(model: nn.Module) -> tuple[list, list]:
    """(decayed, kept) trainable parameters: weight matrices decay; biases, norm parameters, every
    other 1-D parameter and those named by `no_weight_decay()` (position embeddings, class
    token) do not."""
    skip = no_decay_names(model)
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if p.ndim < 2 or name in skip else decay).append(p)
    return decay, keep


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
        decay, keep = decay_split(model)
        return [{"params": decay, "decoupled_decay": self.s.lam},
                {"params": keep, "decoupled_decay": 0.0}]
