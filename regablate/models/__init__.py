"""Models by config name: `model.name` -> (settings class, builder)."""

from __future__ import annotations

from regablate.models.convnet import ConvNetSettings, build_convnet
from regablate.models.mlp import MLPSettings, build_mlp
from regablate.models.resnet import ResNetSettings, build_resnet

MODELS = {
    "mlp": (MLPSettings, build_mlp),
    "convnet": (ConvNetSettings, build_convnet),
    "resnet": (ResNetSettings, build_resnet),
}

__all__ = ["MODELS"]
