"""Spatial regularisers for convolutional models: spatial dropout, DropBlock, DropPath.

The maths and the modules are the building blocks of `regablate.nn` (DropBlock2d, DropPath,
Dropout2d; re-exported here); each is the identity in eval mode or at p=0. The regulariser
classes only put their settings into `ModelSpec.extra`; `model=convnet` and `model=resnet` read
them there, and a custom model's argument-less blocks get them from `regablate.nn.configure`:

- `spatial_dropout`: `Dropout2d` after each conv activation (whole feature maps dropped).
- `dropblock`: `DropBlock2d` in every stage but the first (the later, smaller maps, as the paper
  applies it to the later groups), p ramped linearly over training by `on_epoch`.
- `droppath`: `DropPath` on each residual branch, rate growing linearly with depth (resnet only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from regablate.config.schema import check, positive, prob
from regablate.nn import (
    DropBlock2d,
    Dropout2d,
    DropPath,
    ModelSpec,
    depth_rates,
    drop_block,
    drop_path,
)
from regablate.regularisers.base import Regulariser, register


@dataclass
class SpatialDropoutSettings:
    p: float = prob(0.1)  # probability of dropping a whole feature map (channel)


@register
class SpatialDropout(Regulariser):
    """Spatial dropout (Tompson et al. 2015): after each conv activation, whole channels are
    dropped, h_c ← h_c·m_c/(1−p), m_c ~ Bernoulli(1−p) per sample and channel (nn.Dropout2d);
    neighbouring pixels are correlated, so dropping single pixels would barely regularise."""

    key, Settings = "spatial_dropout", SpatialDropoutSettings

    def shape_model(self, spec: ModelSpec) -> None:
        spec.extra["spatial_dropout"] = self.s.p


@dataclass
class DropBlockSettings:
    p: float = prob(0.1)  # target drop rate (reached at the end of the ramp)
    block_size: int = positive(5)  # side of the square blocks (clipped to the feature map)
    masks: Literal["per_channel", "shared"] = "per_channel"  # one mask per channel or per sample
    ramp_epochs: int | None = check(lambda v: v >= 0, "must be >= 0 or null", None)  # null: whole run


@register
class DropBlock(Regulariser):
    """DropBlock (Ghiasi et al. 2018), see `drop_block`. As in the paper, the drop rate rises
    linearly from 0 to p: epoch e of R uses p·min(1, e/R), R = ramp_epochs (null: max_epochs,
    0: no ramp)."""

    key, Settings = "dropblock", DropBlockSettings

    def shape_model(self, spec: ModelSpec) -> None:
        spec.extra["dropblock"] = {"p": self.s.p, "block_size": self.s.block_size,
                                   "per_channel": self.s.masks == "per_channel"}

    def rate(self, epoch: int, max_epochs: int) -> float:
        ramp = max_epochs if self.s.ramp_epochs is None else self.s.ramp_epochs
        return self.s.p if ramp == 0 else self.s.p * min(1.0, epoch / ramp)

    def on_epoch(self, model: nn.Module, epoch: int, max_epochs: int) -> None:
        p = self.rate(epoch, max_epochs)
        for m in model.modules():
            if isinstance(m, DropBlock2d) and m.configurable:  # a DropBlock2d(0.3) keeps its 0.3
                m.drop_prob = p


@dataclass
class DropPathSettings:
    p: float = prob(0.1)  # drop rate of the last residual branch (linear in depth up to it)


@register
class DropPathReg(Regulariser):
    """Stochastic depth (Huang et al. 2016), see `drop_path`: residual branch l of L is
    dropped per sample with p·l/L, kept branches scaled by 1/(1−p_l). Residual models only."""

    key, Settings = "droppath", DropPathSettings

    def shape_model(self, spec: ModelSpec) -> None:
        spec.extra["droppath"] = self.s.p


__all__ = ["DropBlock2d", "DropPath", "Dropout2d", "depth_rates", "drop_block", "drop_path"]
