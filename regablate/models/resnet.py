"""CIFAR ResNet (He et al. 2016, section 4.2), regularised through ModelSpec.

depth = 6n+2: a 3×3 stem conv, three stages of n basic blocks with widths w, 2w, 4w (16, 32,
64 by default) on 32², 16², 8² maps, global average pooling and a Linear classifier.
Shortcuts are option A (identity; subsampled and zero-padded in channels where the shape
changes), so resnet20 has the paper's 0.27 M parameters. A basic block, with the stack's layers:

    out = relu(dropblock(norm(conv1(x)))) → spatial dropout
    out = droppath(dropblock(norm(conv2(out))))
    y   = relu(out + shortcut(x))

DropBlock only in stages 2 and 3 (after both convs, as the paper places it); DropPath rate of
block l of L grows linearly, p·l/L; dropout (if any) right before the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import regablate.nn as rnn
from regablate.config.schema import check, positive
from regablate.models.convnet import classifier_head, conv3x3, image_shape, norm2d
from regablate.nn import ModelSpec


@dataclass
class ResNetSettings:
    name: Literal["resnet"] = "resnet"
    depth: int = check(lambda v: v >= 8 and (v - 2) % 6 == 0,
                       "must be 6n+2 (20, 32, 44, 56, 110; 8 is the smallest)", 20)
    width: int = positive(16)  # channels of the first stage; doubled in each of the next two
    norm: Literal["none", "batch", "layer"] = "batch"  # reg=batchnorm/layernorm also set it


def _maybe(layer: nn.Module | None) -> nn.Module:
    return nn.Identity() if layer is None else layer


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, spec: ModelSpec,
                 dropblock: bool, drop_path: float | None):
        super().__init__()
        self.stride, self.pad = stride, cout - cin
        self.conv1, self.conv2 = conv3x3(cin, cout, stride, norm), conv3x3(cout, cout, 1, norm)
        self.norm1 = nn.Sequential(*norm2d(norm, cout))
        self.norm2 = nn.Sequential(*norm2d(norm, cout))
        db = spec.extra.get("dropblock") if dropblock else None
        self.block1 = _maybe(db and rnn.DropBlock2d().follow(db))
        self.block2 = _maybe(db and rnn.DropBlock2d().follow(db))
        p = spec.extra.get("spatial_dropout")
        self.spatial = _maybe(None if p is None else rnn.Dropout2d(p))
        self.drop_path = _maybe(None if drop_path is None else rnn.DropPath(drop_path))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: identity, or every `stride`-th pixel zero-padded to the new width."""
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.spatial(F.relu(self.block1(self.norm1(self.conv1(x)))))
        out = self.drop_path(self.block2(self.norm2(self.conv2(out))))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, s: ResNetSettings, in_channels: int, out_dim: int, spec: ModelSpec):
        super().__init__()
        n = (s.depth - 2) // 6
        norm = spec.norm
        self.stem = nn.Sequential(conv3x3(in_channels, s.width, 1, norm), *norm2d(norm, s.width),
                                  nn.ReLU())
        dp = spec.extra.get("droppath")
        rates = rnn.depth_rates(dp, 3 * n) if dp is not None else [None] * (3 * n)
        blocks, cin = [], s.width
        for stage in range(3):
            cout = s.width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, norm, spec, stage > 0,
                                         rates[stage * n + i]))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  *classifier_head(cin, [], out_dim, spec, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build_resnet(s: ResNetSettings, in_shape: tuple[int, ...], out_dim: int,
                 spec: ModelSpec) -> ResNet:
    c, _, _ = image_shape(in_shape, "resnet")
    return ResNet(s, c, out_dim, spec)
