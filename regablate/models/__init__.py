"""Models by config name: `model.name` -> (settings class, builder)."""

from __future__ import annotations

from regablate.models.mlp import MLPSettings, build_mlp

MODELS = {
    "mlp": (MLPSettings, build_mlp),
}

__all__ = ["MODELS"]
