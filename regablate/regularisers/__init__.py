"""The regulariser stack: `reg` config (name -> settings) -> `Stack`."""

from __future__ import annotations

from collections.abc import Mapping

from regablate.config.schema import parse
from regablate.errors import ConfigError
from regablate.nn import ModelSpec  # what the stack asks of the model builder (Stack.model_spec)
from regablate.regularisers import (  # noqa: F401  (each module registers its classes)
    constraints,
    decay,
    dropout,
    label_smoothing,
    mixing,
    norms,
    penalties,
    recurrent,
    spatial,
)
from regablate.regularisers.base import REGISTRY, LossSpec, Regulariser, Stack


def build_stack(reg: Mapping | None) -> Stack:
    """Check each `reg.<name>` against its settings and build the stack."""
    reg = reg or {}
    if not isinstance(reg, Mapping):
        raise ConfigError("reg", reg, "must be a mapping name -> settings (use +reg=NAME)")
    regs = []
    for name, node in reg.items():
        if name not in REGISTRY:
            raise ConfigError(f"reg.{name}", node, "unknown regulariser; allowed: "
                              + ", ".join(sorted(REGISTRY)))
        cls = REGISTRY[name]
        regs.append(cls(parse(cls.Settings, node, f"reg.{name}")))
    return Stack(regs)


__all__ = ["REGISTRY", "LossSpec", "ModelSpec", "Regulariser", "Stack", "build_stack"]
