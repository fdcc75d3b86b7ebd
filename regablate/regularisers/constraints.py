"""Constraints applied around the optimiser step: max-norm and gradient clipping."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from regablate.config.schema import positive
from regablate.regularisers.base import Regulariser, register, weight_matrices


@dataclass
class MaxNormSettings:
    c: float = positive(3.0)  # bound on each unit's incoming weight norm


@register
class MaxNorm(Regulariser):
    """Max-norm (Srivastava et al. 2014): after every step each unit's incoming weight vector
    w_i (a row of a Linear weight, a filter of a conv) is rescaled to ‖w_i‖₂ ≤ c."""

    key, Settings = "max_norm", MaxNormSettings

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for w in weight_matrices(model):
            w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=self.s.c))


@dataclass
class GradClipSettings:
    max_norm: float = positive(1.0)  # bound on the global gradient L2 norm


@register
class GradClip(Regulariser):
    """Gradient clipping by global norm: g ← g·min(1, max_norm/‖g‖₂) over all parameters."""

    key, Settings = "grad_clip", GradClipSettings

    def after_backward(self, model: nn.Module) -> None:
        nn.utils.clip_grad_norm_(model.parameters(), self.s.max_norm)
