"""Recurrent regression/classification nets (model=lstm, model=gru) from regablate.nn blocks.

Input (B, T, F) → [drop] → RecurrentLayer → [drop] → … → RecurrentLayer → [drop] → the last
step's hidden state → Linear head. The [drop] positions are the input of each layer and the
output of the top layer (Zaremba et al. 2014's non-recurrent connections); what sits there
comes from the stack's ModelSpec:

    reg.dropout.p                     Dropout: naive, a new mask at every time step
    reg.variational_dropout.p_in      LockedDropout on the input sequence (one mask per sequence)
    reg.variational_dropout.p_out     LockedDropout between layers and on the top layer's output
    reg.variational_dropout.p_hidden  each RecurrentLayer's hidden-state mask (shared over time)
    reg.weight_drop.p                 each RecurrentLayer's DropConnect on weight_hh

All are the identity in eval mode (and work with MC dropout). Norm layers, dropconnect on
Linear layers and the conv-only regularisers are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

import regablate.nn as rnn
from regablate.config.schema import positive
from regablate.errors import ConfigError
from regablate.models.mlp import per_layer
from regablate.nn import ModelSpec

RECURRENT_REGS = ("variational_dropout", "weight_drop")


@dataclass
class LSTMSettings:
    name: Literal["lstm"] = "lstm"
    layers: int = positive(2)  # stacked recurrent layers
    hidden: int = positive(64)  # hidden (and cell) state size of each layer


@dataclass
class GRUSettings:
    name: Literal["gru"] = "gru"
    layers: int = positive(2)  # stacked recurrent layers
    hidden: int = positive(64)  # hidden state size of each layer


class RecurrentNet(nn.Module):
    """`layers` RecurrentLayers of width `hidden` and a Linear head on the last time step."""

    def __init__(self, mode: str, in_features: int, hidden: int, layers: int, out_dim: int,
                 drops: list[nn.Module], p_hidden: float = 0.0, weight_drop: float = 0.0):
        super().__init__()
        self.drops = nn.ModuleList(drops)  # layers + 1 positions: each layer's input, top output
        self.layers = nn.ModuleList(
            rnn.RecurrentLayer(mode, in_features if k == 0 else hidden, hidden, p_hidden, weight_drop)
            for k in range(layers))
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x):
        if x.ndim == 2:  # (B, T): one feature per step
            x = x.unsqueeze(-1)
        for drop, layer in zip(self.drops, self.layers):
            x = layer(drop(x))
        return self.head(self.drops[-1](x[:, -1:])[:, 0])  # (B, 1, H): the same mask rules


def build_rnn(s: LSTMSettings | GRUSettings, in_shape: tuple[int, ...], out_dim: int,
              spec: ModelSpec) -> RecurrentNet:
    for key in spec.extra:
        if key not in RECURRENT_REGS and key != "dropout_sites":  # sites: refused by build_model
            raise ConfigError(f"reg.{key}", "on", f"model={s.name} has no block for it "
                              "(recurrent models take reg.dropout, reg.variational_dropout, reg.weight_drop)")
    if spec.dropconnect > 0:
        raise ConfigError("reg.dropconnect", spec.dropconnect, f"model={s.name}: use reg.weight_drop "
                          "(DropConnect on the hidden-to-hidden weights)")
    if spec.norm != "none":
        raise ConfigError("reg." + ("batchnorm" if spec.norm == "batch" else "layernorm"), {},
                          f"model={s.name} has no norm layers")
    if len(in_shape) not in (1, 2):
        raise ConfigError("model.name", s.name, f"needs sequences (T,) or (T, F); the data is {in_shape}")
    features = in_shape[1] if len(in_shape) == 2 else 1
    rates = per_layer(spec.dropout, s.layers + 1, "reg.dropout.p")  # naive, per position
    v = spec.extra.get("variational_dropout")
    if v is not None and any(rates):
        raise ConfigError("reg.dropout", spec.dropout, "naive and variational dropout on the same "
                          "connections: use one of reg.dropout and reg.variational_dropout")
    if v is not None:
        rates = [v["p_in"]] + [v["p_out"]] * s.layers
        drops = [rnn.LockedDropout(p) if p > 0 else nn.Identity() for p in rates]
    else:
        drops = [rnn.Dropout(p) if p > 0 else nn.Identity() for p in rates]
    return RecurrentNet(s.name, features, s.hidden, s.layers, out_dim, drops,
                        p_hidden=v["p_hidden"] if v else 0.0, weight_drop=spec.extra.get("weight_drop", 0.0))
