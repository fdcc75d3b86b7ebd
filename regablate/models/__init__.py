"""Models by config name: `model.name` -> (settings class, builder), and `build_model`."""

from __future__ import annotations

from torch import nn

from regablate.models.convnet import ConvNetSettings, build_convnet
from regablate.models.custom import CustomSettings, build_custom
from regablate.models.mlp import MLPSettings, build_mlp
from regablate.models.resnet import ResNetSettings, build_resnet
from regablate.models.rnn import RECURRENT_REGS, GRUSettings, LSTMSettings, build_rnn
from regablate.models.vit import ViTSettings, build_vit

MODELS = {
    "mlp": (MLPSettings, build_mlp),
    "convnet": (ConvNetSettings, build_convnet),
    "resnet": (ResNetSettings, build_resnet),
    "custom": (CustomSettings, build_custom),
    "lstm": (LSTMSettings, build_rnn),
    "gru": (GRUSettings, build_rnn),
    "vit": (ViTSettings, build_vit),
}
TRANSFORMERS = ("vit",)  # models with the reg.dropout.attn/proj/embed sites


def build_model(settings, in_shape: tuple[int, ...], out_dim: int, stack) -> nn.Module:
    """The run's model (on the CPU; seed first): the stack's ModelSpec shapes it as it is built.

    Built-in models place regablate.nn blocks set from the spec; a custom model is
    built inside `regablate.nn.building(spec)` and its argument-less blocks are then set by
    `regablate.nn.configure`, which refuses a structural regulariser it has no block for.
    """
    import regablate.nn as rnn
    from regablate.nn import ModelSpec

    spec = stack.model_spec(ModelSpec(out_dim=out_dim, norm=getattr(settings, "norm", "none")))
    if settings.name not in TRANSFORMERS and spec.extra.get("dropout_sites"):
        from regablate.errors import ConfigError

        key, p = next((k, v) for k, v in spec.extra["dropout_sites"].items() if v)
        raise ConfigError(f"reg.dropout.{key}", p, f"is a transformer dropout site; model "
                          f"{settings.name} has none (model=vit has; reg.dropout.p is the rate here)")
    recurrent = [k for k in RECURRENT_REGS if k in spec.extra]
    if recurrent and settings.name not in ("lstm", "gru", "custom"):
        from regablate.errors import ConfigError

        raise ConfigError(f"reg.{recurrent[0]}", "on", "needs a recurrent model: model=lstm or model=gru")
    with rnn.building(spec):
        model = MODELS[settings.name][1](settings, tuple(in_shape), out_dim, spec)
    if settings.name == "custom":
        rnn.configure(model, spec, stack.names, f"model {settings.target}")
        rnn.configure_recurrent(model, spec, stack.names, f"model {settings.target}")
        if not any(p.requires_grad for p in model.parameters()):
            from regablate.errors import ConfigError

            raise ConfigError("model.target", settings.target, "has no parameter to train "
                              "(no nn.Parameter with requires_grad)")
    return model


__all__ = ["MODELS", "build_model"]
