"""Label smoothing (Szegedy et al. 2016)."""

from __future__ import annotations

from dataclasses import dataclass

from regablate.config.schema import prob
from regablate.regularisers.base import LossSpec, Regulariser, register


@dataclass
class SmoothingSettings:
    eps: float = prob(0.1)  # mass moved from the target class to the uniform distribution


@register
class LabelSmoothing(Regulariser):
    """Training targets q = (1−ε)·onehot(y) + ε/C (on soft, mixed targets too, applied once).
    Evaluation losses stay the plain cross-entropy."""

    key, Settings = "label_smoothing", SmoothingSettings

    def shape_loss(self, spec: LossSpec) -> None:
        spec.label_smoothing = self.s.eps
