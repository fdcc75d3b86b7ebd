"""`model=custom`: your own nn.Module, built from `model.target` with `model.kwargs`.

The class (or factory) at `model.target` (`pkg.mod:Class` or `pkg.mod.Class`; importable from the
working directory or the environment) is called, through `hydra.utils.instantiate`, with
`**model.kwargs` and two more keywords: `in_shape` (the data set's input shape without the
batch dimension, a tuple: (3, 32, 32) for images, (n_features,) for tables) and `out_dim`
(classes, or regression outputs). It returns logits (classification) or the regression output.
Structural regularisers reach it through the `regablate.nn` blocks it places; see that module.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from regablate.config.schema import check
from regablate.errors import ConfigError
from regablate.nn import ModelSpec


@dataclass
class CustomSettings:
    name: Literal["custom"] = "custom"
    target: str | None = None  # pkg.module:Class or pkg.module.Class (an nn.Module or a factory)
    kwargs: Any = check(lambda v: isinstance(v, Mapping), "must be a mapping of keyword arguments",
                        default=None)  # keyword arguments besides in_shape and out_dim
    norm: Literal["none", "batch", "layer"] = "none"  # kind of regablate.nn.Norm() blocks (reg=batchnorm/layernorm set it too)

    def __post_init__(self) -> None:
        if self.kwargs is None:
            self.kwargs = {}


def dotted(target: str) -> str:
    """`pkg.mod:Class` -> `pkg.mod.Class` (Hydra's `_target_` convention)."""
    return target.replace(":", ".")


def locate(target: str | None) -> Any:
    """The object at `target`, or ConfigError naming it (one line)."""
    if not target or not isinstance(target, str):
        raise ConfigError("model.target", target, "required with model=custom: pkg.module:Class")
    if os.getcwd() not in sys.path:  # the user's own package next to where regablate runs
        sys.path.append(os.getcwd())
    module, sep, attr = target.partition(":")
    if not sep:
        module, _, attr = target.rpartition(".")
    if not module or not attr:
        raise ConfigError("model.target", target, "must be pkg.module:Class or pkg.module.Class")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError("model.target", target, f"cannot import {module}: "
                          f"{type(e).__name__}: {e}") from None
    except Exception as e:  # noqa: BLE001 — a broken user module: say where, in one line
        raise ConfigError("model.target", target, f"importing {module} failed: "
                          f"{type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError("model.target", target, f"module {module} has no {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError("model.target", target, f"{attr} is not a class or function")
    return obj


def build_custom(s: CustomSettings, in_shape: tuple[int, ...], out_dim: int, spec: ModelSpec) -> nn.Module:
    """`target(**kwargs, in_shape=in_shape, out_dim=out_dim)` through hydra.utils.instantiate
    (so nested `_target_` entries in kwargs are instantiated too); the blocks are set later by
    `regablate.nn.configure`."""
    from hydra.utils import instantiate

    locate(s.target)  # a clear one-line error before Hydra's long one
    for key in ("in_shape", "out_dim"):
        if key in s.kwargs:
            raise ConfigError(f"model.kwargs.{key}", s.kwargs[key], "is set by regablate from the data set")
    try:
        make = instantiate({"_target_": dotted(s.target), "_partial_": True, "_convert_": "all",
                            **s.kwargs})
        model = make(in_shape=tuple(in_shape), out_dim=out_dim)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 — the user's constructor: one line naming it
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise ConfigError("model.target", s.target, f"building it with model.kwargs="
                          f"{dict(s.kwargs)} failed: {type(e).__name__}: {msg}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError("model.target", s.target, f"returned a {type(model).__name__}, "
                          "not a torch.nn.Module")
    return model
