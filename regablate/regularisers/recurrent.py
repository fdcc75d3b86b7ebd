"""Dropout for recurrent networks, the way the literature says it should be done.

Standard dropout with a new mask at every time step (`reg.dropout` on model=lstm/gru: "naive")
injects fresh noise at every step of the recurrence. The remedies:

- `variational_dropout` (Gal & Ghahramani 2016): one mask per sequence and layer, shared by all
  time steps — on the inputs (`p_in`), between layers and on the output (`p_out`), and on the
  hidden state where it enters the recurrence (`p_hidden`): x_t ← x_t ⊙ m/(1−p) for every t,
  m ~ Bernoulli(1−p) drawn once per sequence (regablate.nn.LockedDropout, RecurrentLayer).
- `weight_drop` (AWD-LSTM, Merity et al. 2017): DropConnect on the hidden-to-hidden matrices,
  W_hh ← W_hh ⊙ M/(1−p), one mask per forward pass shared by the batch and all steps
  (regablate.nn.WeightDrop); the input-to-hidden weights are left alone.

Both keep expectations (inverted scaling), are the identity in eval mode and work with MC
dropout. They act only on recurrent models (model=lstm, model=gru, or a custom model with
regablate.nn.LockedDropout / RecurrentLayer blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

from regablate.config.schema import prob
from regablate.nn import ModelSpec
from regablate.regularisers.base import Regulariser, register


@dataclass
class VariationalDropoutSettings:
    p_in: float = prob(0.25)  # on the input sequence: one mask per sequence, all steps
    p_hidden: float = prob(0.25)  # on the hidden state entering the recurrence, per layer
    p_out: float = prob(0.25)  # between layers and on the top layer's output


@register
class VariationalDropout(Regulariser):
    """Variational dropout: one inverted-dropout mask per sequence and connection, shared over
    time steps (inputs, hidden state, outputs); identity in eval mode."""

    key, Settings = "variational_dropout", VariationalDropoutSettings

    def shape_model(self, spec: ModelSpec) -> None:
        spec.extra["variational_dropout"] = {"p_in": self.s.p_in, "p_hidden": self.s.p_hidden,
                                             "p_out": self.s.p_out}


@dataclass
class WeightDropSettings:
    p: float = prob(0.5)  # drop rate of each hidden-to-hidden weight


@register
class WeightDrop(Regulariser):
    """Weight drop: DropConnect on each recurrent layer's hidden-to-hidden matrix, one mask per
    forward pass; the plain weights in eval mode."""

    key, Settings = "weight_drop", WeightDropSettings

    def shape_model(self, spec: ModelSpec) -> None:
        spec.extra["weight_drop"] = self.s.p
