"""Spatial regularisers for convolutional models: spatial dropout, DropBlock, DropPath.

Each is a short function (the maths) plus a thin module the model builders insert; each is the
identity in eval mode or at p=0. The regulariser classes only put their settings into
`ModelSpec.extra`; `model=convnet` and `model=resnet` read them there:

- `spatial_dropout`: `nn.Dropout2d` after each conv activation (whole feature maps dropped).
- `dropblock`: `DropBlock2d` in every stage but the first (the later, smaller maps, as the paper
  applies it to the later groups), p ramped linearly over training by `on_epoch`.
- `droppath`: `DropPath` on each residual branch, rate growing linearly with depth (resnet only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from regablate.regularisers.base import ModelSpec, Regulariser, register
from regablate.schema import check, positive, prob


def drop_block(x: torch.Tensor, p: float, block_size: int, per_channel: bool = True) -> torch.Tensor:
    """DropBlock (Ghiasi et al. 2018) on a (B, C, H, W) map, in training.

    With b = min(block_size, H, W), block seeds are drawn Bernoulli(γ) on the (H−b+1)×(W−b+1)
    positions where a whole b×b block fits, with

        γ = p / b² · H·W / ((H−b+1)(W−b+1)),

    so the expected number of seeds times b² is p·H·W (overlapping blocks make the realised
    rate slightly lower: a pixel covered by n seed positions is dropped with probability
    1 − (1−γ)ⁿ). Each seed zeroes the b×b block whose top-left corner it is; the result is
    rescaled by count(M)/count_ones(M) over the whole mask so the mean activation is kept.
    One mask per channel, or one shared by all channels of a sample (`per_channel=False`).
    A block larger than the map is clipped to it (then a seed drops the whole map, γ = p).
    """
    if p <= 0.0:
        return x
    B, C, H, W = x.shape
    b = min(block_size, H, W)
    gamma = p / b**2 * (H * W) / ((H - b + 1) * (W - b + 1))
    seeds = torch.rand(B, C if per_channel else 1, H - b + 1, W - b + 1, device=x.device) < gamma
    # pad by b-1 on every side, then a b×b max-pool: pixel (r, c) is hit by seeds in
    # rows r-b+1..r and columns c-b+1..c, i.e. the blocks that cover it; output is H×W.
    blocks = F.max_pool2d(F.pad(seeds.float(), (b - 1,) * 4), kernel_size=b, stride=1)
    keep = 1.0 - blocks
    scale = keep.numel() / keep.sum().clamp_min(1.0)
    return x * (keep * scale).to(x.dtype)


class DropBlock2d(nn.Module):
    """`drop_block` in training; `drop_prob` is set each epoch by the `dropblock` ramp."""

    def __init__(self, drop_prob: float, block_size: int, per_channel: bool = True):
        super().__init__()
        self.drop_prob, self.block_size, self.per_channel = drop_prob, block_size, per_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        return drop_block(x, self.drop_prob, self.block_size, self.per_channel)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}, per_channel={self.per_channel}"


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016) on a residual branch's output, in training.

    Per sample, the branch is kept with probability 1−p and scaled by 1/(1−p):
    out_i = x_i · m_i / (1−p), m_i ~ Bernoulli(1−p), so E[out] = x and the eval-mode
    network (all branches, unscaled) computes the training-time expectation.
    """
    if p <= 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype)
    return x * mask.bernoulli_(keep) / keep


class DropPath(nn.Module):
    """`drop_path` in training, the identity in eval mode."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        return drop_path(x, self.drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4g}"


def depth_rates(p_max: float, n_blocks: int) -> list[float]:
    """Linear decay rule of stochastic depth: block l of L (1-based) drops with p_max·l/L."""
    return [p_max * (i + 1) / n_blocks for i in range(n_blocks)]


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
            if isinstance(m, DropBlock2d):
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


__all__ = ["DropBlock2d", "DropPath", "depth_rates", "drop_block", "drop_path"]
