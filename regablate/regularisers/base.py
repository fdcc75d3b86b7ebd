"""The regulariser contract: one small class per regulariser, acting only at its hooks.

Hooks (override only what you need):
  shape_model(spec)          insert layers / switch the norm while the model is built
  shape_loss(spec)           change the training loss (label smoothing)
  penalty(model) -> Tensor   added to the training loss (l1, l2)
  param_groups(model)        optimiser parameter groups (decoupled weight decay)
  transform_batch(x, y, generator, cpu_generator)  inputs and targets of a training batch
                             (mixup, cutout, ...), drawing tensors on x's device from `generator`
                             and scalars on the CPU from `cpu_generator` (None: the global RNGs)
  after_backward(model)      between backward and the optimiser step (gradient clipping)
  after_step(model)          after the optimiser step (max-norm)
  on_epoch(model, epoch, max_epochs)  before each training epoch (schedules of a drop rate)

A `Stack` holds the configured regularisers and calls each hook on those that define it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from regablate.nn import ModelSpec

REGISTRY: dict[str, type[Regulariser]] = {}


def register(cls: type[Regulariser]) -> type[Regulariser]:
    """Class decorator: make `cls` available as `reg.<cls.key>`."""
    REGISTRY[cls.key] = cls
    return cls


@dataclass
class LossSpec:
    label_smoothing: float = 0.0


class Regulariser:
    key: ClassVar[str]
    Settings: ClassVar[type]

    def __init__(self, settings: Any):
        self.s = settings

    def shape_model(self, spec: ModelSpec) -> None: ...

    def shape_loss(self, spec: LossSpec) -> None: ...

    def penalty(self, model: nn.Module) -> torch.Tensor: ...

    def param_groups(self, model: nn.Module) -> list[dict]: ...

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                        cpu_generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def after_backward(self, model: nn.Module) -> None: ...

    def after_step(self, model: nn.Module) -> None: ...

    def on_epoch(self, model: nn.Module, epoch: int, max_epochs: int) -> None: ...


def _defines(reg: Regulariser, hook: str) -> bool:
    return getattr(type(reg), hook) is not getattr(Regulariser, hook)


def not_weights(model: nn.Module) -> set[str]:
    """Names of the parameters of >= 2 dims that are no layer's weights: what the model's
    `no_weight_decay()` names (timm's convention: a ViT's pos_embed and cls_token) and embedding
    tables (nn.Embedding, nn.EmbeddingBag: a row per token, not a unit's incoming weights).
    Penalties, max-norm and decay leave them alone."""
    names = getattr(model, "no_weight_decay", None)
    out = set(names()) if callable(names) else set()
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            out |= {f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters(recurse=False)}
    return out


def weight_matrices(model: nn.Module) -> list[torch.Tensor]:
    """Weights of Linear and conv layers (>= 2-D); never biases, norm parameters, position
    embeddings, class tokens or embedding tables (`not_weights`)."""
    skip = not_weights(model)
    return [p for name, p in model.named_parameters() if p.ndim >= 2 and name not in skip]


class Stack:
    """The configured regularisers, in a fixed (sorted by name) order."""

    def __init__(self, regs: list[Regulariser]):
        self.regs = sorted(regs, key=lambda r: r.key)
        self._by_hook = {
            hook: [r for r in self.regs if _defines(r, hook)]
            for hook in ("shape_model", "shape_loss", "penalty", "param_groups",
                         "transform_batch", "after_backward", "after_step", "on_epoch")
        }

    @property
    def names(self) -> list[str]:
        return [r.key for r in self.regs]

    def __getitem__(self, key: str) -> Regulariser | None:
        return next((r for r in self.regs if r.key == key), None)

    def model_spec(self, spec: ModelSpec) -> ModelSpec:
        for r in self._by_hook["shape_model"]:
            r.shape_model(spec)
        return spec

    def loss_spec(self) -> LossSpec:
        spec = LossSpec()
        for r in self._by_hook["shape_loss"]:
            r.shape_loss(spec)
        return spec

    @property
    def has_penalty(self) -> bool:
        return bool(self._by_hook["penalty"])

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return sum(r.penalty(model) for r in self._by_hook["penalty"])

    def param_groups(self, model: nn.Module) -> list[dict]:
        owners = self._by_hook["param_groups"]
        if len(owners) > 1:
            from regablate.errors import ConfigError

            raise ConfigError("reg", self.names, "at most one of these may set parameter groups: "
                              + ", ".join(r.key for r in owners))
        if owners:
            return owners[0].param_groups(model)
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    @property
    def transforms_batch(self) -> bool:
        return bool(self._by_hook["transform_batch"])

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                        cpu_generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each batch transform in turn; their draws come from a stacked member's own generators
        (tensors on x's device, scalars on the CPU), or the global RNGs."""
        for r in self._by_hook["transform_batch"]:
            x, y = r.transform_batch(x, y, generator, cpu_generator)
        return x, y

    def after_backward(self, model: nn.Module) -> None:
        for r in self._by_hook["after_backward"]:
            r.after_backward(model)

    def after_step(self, model: nn.Module) -> None:
        for r in self._by_hook["after_step"]:
            r.after_step(model)

    def on_epoch(self, model: nn.Module, epoch: int, max_epochs: int) -> None:
        for r in self._by_hook["on_epoch"]:
            r.on_epoch(model, epoch, max_epochs)
