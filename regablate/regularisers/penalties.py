"""Penalties added to the training loss, on weight matrices only (no biases, no norm params)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from regablate.config.schema import nonneg
from regablate.regularisers.base import Regulariser, register, weight_matrices


@dataclass
class LamSettings:
    lam: float = nonneg(1e-4)  # penalty strength λ


@register
class L1(Regulariser):
    """L1 penalty: λ Σ|w|; its (sub)gradient is λ·sign(w). Drives weights to exactly zero."""

    key, Settings = "l1", LamSettings

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.s.lam * sum(w.abs().sum() for w in weight_matrices(model))


@register
class L2(Regulariser):
    """Coupled ("true") L2 penalty: (λ/2) Σw², gradient λ·w — the same as torch's coupled
    `weight_decay=λ`, but on weight matrices only, and seen by Adam's moment estimates."""

    key, Settings = "l2", LamSettings

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return 0.5 * self.s.lam * sum(w.pow(2).sum() for w in weight_matrices(model))
