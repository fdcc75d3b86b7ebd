"""Normalisation layers as regularisers: they switch the model's norm while it is built."""

from __future__ import annotations

from dataclasses import dataclass

from regablate.errors import ConfigError
from regablate.nn import ModelSpec
from regablate.regularisers.base import Regulariser, register


@dataclass
class NoSettings:
    pass


class _Norm(Regulariser):
    Settings = NoSettings
    norm: str

    def shape_model(self, spec: ModelSpec) -> None:
        if spec.norm not in ("none", self.norm):
            raise ConfigError(f"reg.{self.key}", {}, f"conflicts with model.norm={spec.norm!r}"
                              " (set model.norm=none or drop one of them)")
        spec.norm = self.norm


@register
class BatchNorm(_Norm):
    """BatchNorm after each hidden Linear/conv (before the activation); batch statistics in
    training, running statistics in eval."""

    key, norm = "batchnorm", "batch"


@register
class LayerNorm(_Norm):
    """LayerNorm after each hidden Linear (before the activation): per-sample statistics,
    the same in training and eval."""

    key, norm = "layernorm", "layer"
