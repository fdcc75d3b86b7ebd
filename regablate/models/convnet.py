"""A plain convolutional network for 32×32 images (VGG-like), regularised through ModelSpec.

Stages of two 3×3 conv layers (conv → norm → activation → [spatial dropout] → [DropBlock]),
each stage followed by a 2×2 max-pool; the default three stages are the six conv layers
(32→16→8→4 pixels). Then an MLP head on the flattened maps: Linear → norm → activation →
[dropout] per hidden layer, and a Linear classifier (DropConnect replaces the head's Linear
layers). DropBlock goes into every stage but the first (the smaller, later maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

import regablate.nn as rnn
from regablate.config.schema import check
from regablate.errors import ConfigError
from regablate.models.mlp import ACTIVATIONS, per_layer
from regablate.nn import ModelSpec
from regablate.regularisers.dropout import DropConnectLinear


@dataclass
class ConvNetSettings:
    name: Literal["convnet"] = "convnet"
    widths: list[int] = check(lambda v: v > 0, "must be a list of positive widths",
                              default=[64, 128, 256])  # channels per stage (2 conv layers each)
    hidden: list[int] = check(lambda v: v > 0, "must be a list of positive widths",
                              default=[256])  # MLP head hidden widths ([] = linear classifier)
    activation: Literal["relu", "gelu", "silu"] = "relu"
    norm: Literal["none", "batch", "layer"] = "batch"  # reg=batchnorm/layernorm also set it


def image_shape(in_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ConfigError("model.name", model, f"needs image inputs (C, H, W); the data set "
                          f"gives {tuple(in_shape)}")
    return in_shape  # type: ignore[return-value]


def norm2d(kind: str, channels: int) -> list[nn.Module]:
    """BatchNorm2d; "layer" = GroupNorm with one group (LayerNorm over C, H, W per sample)."""
    return [] if kind == "none" else [rnn.Norm(channels, dims=2, kind=kind)]


def conv3x3(cin: int, cout: int, stride: int = 1, norm: str = "batch") -> nn.Conv2d:
    """3×3 conv, no bias in front of a norm (its shift makes the bias redundant); He init."""
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none")
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def spatial_layers(spec: ModelSpec, stage: int) -> list[nn.Module]:
    """The stack's spatial regularisers for a conv activation in `stage` (0-based)."""
    layers: list[nn.Module] = []
    if "spatial_dropout" in spec.extra:
        layers.append(rnn.Dropout2d(spec.extra["spatial_dropout"]))
    if "dropblock" in spec.extra and stage > 0:
        layers.append(rnn.DropBlock2d().follow(spec.extra["dropblock"]))
    return layers


def classifier_head(width: int, hidden: list[int], out_dim: int, spec: ModelSpec, norm: str,
                    activation: str = "relu") -> list[nn.Module]:
    """[Linear → norm → activation → dropout] per hidden layer, then the Linear classifier;
    with no hidden layer, dropout (if any) goes right before the classifier."""
    rates = per_layer(spec.dropout, max(len(hidden), 1), "reg.dropout.p")

    def linear(i: int, o: int) -> nn.Module:
        return DropConnectLinear(i, o, spec.dropconnect) if spec.dropconnect > 0 else nn.Linear(i, o)

    layers: list[nn.Module] = []
    for h, p in zip(hidden, rates, strict=False):  # rates has one entry when hidden=[]
        layers.append(linear(width, h))
        if norm != "none":
            layers.append(rnn.Norm(h, dims=1, kind=norm))
        layers.append(ACTIVATIONS[activation]())
        if p > 0:
            layers.append(rnn.Dropout(p))
        width = h
    if not hidden and rates[0] > 0:
        layers.append(rnn.Dropout(rates[0]))
    layers.append(linear(width, out_dim))
    return layers


def build_convnet(s: ConvNetSettings, in_shape: tuple[int, ...], out_dim: int,
                  spec: ModelSpec) -> nn.Sequential:
    c, h, w = image_shape(in_shape, "convnet")
    if "droppath" in spec.extra:
        raise ConfigError("reg.droppath", spec.extra["droppath"],
                          "needs residual branches: model=resnet or model=vit")
    if not s.widths or h >> len(s.widths) < 1 or w >> len(s.widths) < 1:
        raise ConfigError("model.widths", s.widths, f"needs 1 to {min(h, w).bit_length() - 1} "
                          f"stages for {h}x{w} inputs (each stage halves the map)")
    layers: list[nn.Module] = []
    for stage, width in enumerate(s.widths):
        for _ in range(2):
            layers += [conv3x3(c, width, norm=spec.norm), *norm2d(spec.norm, width),
                       ACTIVATIONS[s.activation](), *spatial_layers(spec, stage)]
            c = width
        layers.append(nn.MaxPool2d(2))
    h, w = h >> len(s.widths), w >> len(s.widths)
    layers.append(nn.Flatten())
    layers += classifier_head(c * h * w, s.hidden, out_dim, spec, spec.norm, s.activation)
    return nn.Sequential(*layers)
