"""Dropout (Srivastava et al. 2014) and DropConnect (Wan et al. 2013) for dense layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from regablate.config.schema import prob
from regablate.nn import ModelSpec
from regablate.regularisers.base import Regulariser, register


@dataclass
class DropoutSettings:
    p: float | list[float] = prob(0.5)  # drop rate, or one per hidden layer (a ViT's MLP head)
    attn: float = prob(0.0)  # transformers (model=vit): on the attention probabilities
    proj: float = prob(0.0)  # transformers: after the attention and MLP projections
    embed: float = prob(0.0)  # transformers: after patch + position embedding


@register
class Dropout(Regulariser):
    """Inverted dropout after each hidden activation (never on the output layer):
    h ← h·m/(1−p), m ~ Bernoulli(1−p), so E[h] is unchanged; identity in eval mode.
    In a transformer (model=vit) `p` stays the MLP head's rate and `attn`, `proj`, `embed` set
    the transformer's own sites (about 0.1 in ViT, BERT, GPT); other models refuse them > 0."""

    key, Settings = "dropout", DropoutSettings

    def shape_model(self, spec: ModelSpec) -> None:
        spec.dropout = self.s.p
        sites = {k: getattr(self.s, k) for k in ("attn", "proj", "embed")}
        if any(sites.values()):
            spec.extra["dropout_sites"] = sites


@dataclass
class DropConnectSettings:
    p: float = prob(0.5)  # drop rate of each weight


@register
class DropConnect(Regulariser):
    """DropConnect: Linear weights masked in training, W ← W⊙M/(1−p), M ~ Bernoulli(1−p),
    one mask per forward pass (shared by the batch); the plain layer in eval mode."""

    key, Settings = "dropconnect", DropConnectSettings

    def shape_model(self, spec: ModelSpec) -> None:
        spec.dropconnect = self.s.p


class DropConnectLinear(nn.Linear):
    """nn.Linear whose weight matrix is dropped with rate `p` in training."""

    def __init__(self, in_features: int, out_features: int, p: float, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return F.linear(x, self.weight, self.bias)
        mask = torch.empty_like(self.weight).bernoulli_(1.0 - self.p)
        return F.linear(x, self.weight * mask / (1.0 - self.p), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p}"
