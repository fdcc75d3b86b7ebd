"""Typed settings checked against the composed Hydra config.

Every component (dataset, model, optimiser, scheduler, regulariser) declares its settings as a
dataclass; `parse` checks a config node against it: unknown keys, wrong types and values outside
their allowed range raise `ConfigError` naming the full key, the value and what is allowed.
Ranges are declared next to the field with `check(...)` metadata.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from regablate.errors import ConfigError

FINITE = "must be a finite number"
FLOAT32_MAX = 3.4028234663852886e38  # every number a run computes with is a float32 tensor at some point
SEED_LIMIT = 2 ** 64  # torch.manual_seed takes [0, 2^64)


def check(ok: Callable[[Any], bool], allowed: str, default: Any = dataclasses.MISSING, **kw):
    """A dataclass field whose value must satisfy `ok`; `allowed` says what is allowed."""
    if isinstance(default, list):
        kw["default_factory"] = lambda d=default: list(d)
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(metadata={"ok": ok, "allowed": allowed}, **kw)


def prob(default: float = 0.5):
    """A probability in [0, 1) (a rate of dropping: 1 would drop everything)."""
    return check(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)", default)


def nonneg(default: float = 0.0):
    return check(lambda v: v >= 0, "must be >= 0", default)


def positive(default: Any = dataclasses.MISSING):
    return check(lambda v: v > 0, "must be > 0", default)


def fraction(default: float):
    """A fraction in (0, 1)."""
    return check(lambda v: 0.0 < v < 1.0, "must be in (0, 1)", default)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                if e.allowed == FINITE:  # a number, but not a finite one: say that, not the union
                    raise
        raise ConfigError(key, value, f"must be {_type_name(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(key, value, f"must be {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, f"must be {_type_name(tp)}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2 ** 63:  # torch's int64: a size or count beyond it is a traceback
                raise ConfigError(key, value, "must be an integer within int64's range (|x| < 2^63)")
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):  # inf passes `>= 0`; nan no check
                raise ConfigError(key, value, FINITE)
            if abs(value) > FLOAT32_MAX:  # 1e39 is no float32: torch cannot hold it (a traceback)
                raise ConfigError(key, value, f"must be a number within float32's range (|x| <= {FLOAT32_MAX:.4g})")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        return parse(tp, value, key)
    raise ConfigError(key, value, f"must be {_type_name(tp)}")


def parse(cls: type, node: Mapping | None, prefix: str):
    """Build dataclass `cls` from mapping `node`, checking keys, types and ranges."""
    node = {} if node is None else node
    if not isinstance(node, Mapping):
        raise ConfigError(prefix, node, f"must be a mapping of settings for {cls.__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in node:
        if key not in fields:
            allowed = ", ".join(fields) or "no settings"
            raise ConfigError(f"{prefix}.{key}", node[key], f"unknown key; allowed: {allowed}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in node:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, None, f"is required ({_type_name(hints[name])})")
            continue
        value = _coerce(hints[name], node[name], key)
        ok = f.metadata.get("ok")
        if ok is not None and value is not None:
            items = value if isinstance(value, list) else [value]
            if not all(ok(v) for v in items):
                raise ConfigError(key, node[name], f.metadata["allowed"])
        values[name] = value
    return cls(**values)
