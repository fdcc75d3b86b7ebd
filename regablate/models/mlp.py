"""A multi-layer perceptron whose regularising layers (regablate.nn blocks) come from the stack's
ModelSpec. It takes tabular features (n_features,) or flattens any other input shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

import regablate.nn as rnn
from regablate.config.schema import check
from regablate.errors import ConfigError
from regablate.nn import ModelSpec
from regablate.regularisers.dropout import DropConnectLinear

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass
class MLPSettings:
    name: Literal["mlp"] = "mlp"
    hidden: list[int] = check(lambda v: v > 0, "must be a list of positive widths",
                              default=[128, 64])  # hidden widths
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    norm: Literal["none", "batch", "layer"] = "none"  # reg=batchnorm/layernorm also set it
    dropout_at: Literal["after_act", "before_norm"] = "after_act"


def per_layer(p: float | list[float], n: int, key: str) -> list[float]:
    """A rate for each of `n` layers from a single rate or a per-layer list."""
    if isinstance(p, list):
        if len(p) != n:
            raise ConfigError(key, p, f"must have one rate per hidden layer ({n})")
        return p
    return [p] * n


def build_mlp(s: MLPSettings, in_shape: tuple[int, ...], out_dim: int, spec: ModelSpec) -> nn.Sequential:
    """Linear → [norm] → activation → [dropout] per hidden layer, then a plain Linear output.

    With `dropout_at=before_norm` dropout goes between Linear and norm instead (the
    variance-shift arrangement, for studying it). DropConnect replaces hidden and output Linear
    layers by DropConnectLinear. Dropout is never applied to the output layer.
    """
    for key in spec.extra:  # spatial regularisers act on conv feature maps, DropPath on residual branches
        raise ConfigError(f"reg.{key}", "on", "needs residual branches: model=resnet or model=vit"
                          if key == "droppath" else "needs a conv model: model=convnet or model=resnet")
    rates = per_layer(spec.dropout, len(s.hidden), "reg.dropout.p")

    def linear(i: int, o: int) -> nn.Module:
        return DropConnectLinear(i, o, spec.dropconnect) if spec.dropconnect > 0 else nn.Linear(i, o)

    layers: list[nn.Module] = [nn.Flatten()] if len(in_shape) > 1 else []
    width = 1
    for d in in_shape:
        width *= d
    for h, p in zip(s.hidden, rates):
        layers.append(linear(width, h))
        drop = [rnn.Dropout(p)] if p > 0 else []
        if s.dropout_at == "before_norm":
            layers += drop
        if spec.norm != "none":
            layers.append(rnn.Norm(h, dims=1, kind=spec.norm))
        layers.append(ACTIVATIONS[s.activation]())
        if s.dropout_at == "after_act":
            layers += drop
        width = h
    layers.append(linear(width, out_dim))
    return nn.Sequential(*layers)
