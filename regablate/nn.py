"""Building blocks through which the structural regularisers reach a model (yours or ours).

A model places the blocks where a regulariser should act; the config's `reg.*` sets their
strength and switches them on. Constructed without arguments, a block is *configurable*: it is
the identity (p = 0, no norm) until a run's stack sets it, so the same model class trains with
and without the regulariser:

    Dropout()      reg.dropout.p           after a hidden activation (dense layers)
    Dropout2d()    reg.spatial_dropout.p   after a conv activation: whole channels dropped
    DropBlock2d()  reg.dropblock.*         on a conv feature map: contiguous b×b blocks dropped
    DropPath()     reg.droppath.p          on a residual branch: the whole branch, per sample
    Norm(C)        reg.batchnorm / reg.layernorm (or model.norm)  after a Linear/conv layer

`Norm(num_features, dims=2)` returns torch's own module, chosen while the model is built:
BatchNorm2d (dims=2) / BatchNorm1d (dims=1) for batch norm, GroupNorm(1, C) (dims=2) /
LayerNorm(C) (dims=1) for layer norm, nn.Identity for none. Every block is the identity in eval
mode. A block given its strength explicitly (`Dropout(0.2)`) is fixed and left alone by the
config; the built-in models construct theirs that way, from the stack's ModelSpec.

`regablate run model=custom` builds the model inside `building(spec)` and then calls
`configure`: it sets the configurable blocks from the spec and refuses (ConfigError, one line
naming the block to use) a structural regulariser for which the model has no such block.
The maths follows timm (timm/layers/drop.py): a short function plus a thin module.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelSpec:
    """What the stack asks of the model builder: the regularisers' `shape_model` fill it in, the
    models and `building`/`configure` read it. Defaults mean "no regularisation"."""

    out_dim: int = 0  # classes (or regression outputs) of the model being built
    norm: str = "none"  # none | batch | layer
    dropout: float | list[float] = 0.0  # after each hidden activation (MLP, CNN head)
    dropconnect: float = 0.0  # drop rate of Linear weights
    extra: dict[str, Any] = field(default_factory=dict)  # settings for conv-only layers


_BUILDING: list[Any] = []  # the ModelSpec of the model being built (innermost last)


@contextlib.contextmanager
def building(spec: ModelSpec) -> Iterator[ModelSpec]:
    """While a model is built: `Norm()` blocks take their kind from `spec.norm`."""
    _BUILDING.append(spec)
    try:
        yield spec
    finally:
        _BUILDING.pop()


def drop_block(x: torch.Tensor, p: float, block_size: int, per_channel: bool = True) -> torch.Tensor:
    """DropBlock (Ghiasi et al. 2018) on a (B, C, H, W) map, in training.

    With b = min(block_size, H, W), block seeds are drawn Bernoulli(γ) on the (H−b+1)×(W−b+1)
    positions where a whole b×b block fits, with

        γ = p / b² · H·W / ((H−b+1)(W−b+1)),

    so the expected number of seeds times b² is p·H·W (overlapping blocks make the realised
    rate slightly lower: a pixel covered by n seed positions is dropped with probability
    1 − (1−γ)ⁿ). Each seed zeroes the b×b block whose top-left corner it is; the result is
    rescaled by count(M)/count_ones(M) over the whole mask so the mean activation is kept.
    One mask per channel, or one shared by all channels of a sample (`per_channel=False`).
    A block larger than the map is clipped to it (then a seed drops the whole map, γ = p).
    """
    if p <= 0.0:
        return x
    return x * drop_block_mask(x.shape, p, block_size, per_channel, x.device).to(x.dtype)


def drop_block_mask(shape: torch.Size | tuple[int, ...], p: float, block_size: int,
                    per_channel: bool = True, device: torch.device | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """`drop_block`'s float32 mask M·count(M)/count_ones(M) for a (B, C, H, W) map, shaped
    (B, C, H, W), or (B, 1, H, W) with `per_channel=False`; the seeds come from `generator`
    (default: the global RNG of `device`). p > 0."""
    B, C, H, W = shape
    b = min(block_size, H, W)
    gamma = p / b**2 * (H * W) / ((H - b + 1) * (W - b + 1))
    seeds = torch.rand(B, C if per_channel else 1, H - b + 1, W - b + 1, device=device,
                       generator=generator) < gamma
    # pad by b-1 on every side, then a b×b max-pool: pixel (r, c) is hit by seeds in
    # rows r-b+1..r and columns c-b+1..c, i.e. the blocks that cover it; output is H×W.
    blocks = F.max_pool2d(F.pad(seeds.float(), (b - 1,) * 4), kernel_size=b, stride=1)
    keep = 1.0 - blocks
    scale = keep.numel() / keep.sum().clamp_min(1.0)
    return keep * scale


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016) on a residual branch's output, in training.

    Per sample, the branch is kept with probability 1−p and scaled by 1/(1−p):
    out_i = x_i · m_i / (1−p), m_i ~ Bernoulli(1−p), so E[out] = x and the eval-mode
    network (all branches, unscaled) computes the training-time expectation.
    """
    if p <= 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype)
    return x * mask.bernoulli_(keep) / keep


def depth_rates(p_max: float, n_blocks: int) -> list[float]:
    """Linear decay rule of stochastic depth: block l of L (1-based) drops with p_max·l/L."""
    return [p_max * (i + 1) / n_blocks for i in range(n_blocks)]


class Dropout(nn.Dropout):
    """Inverted dropout (Srivastava et al. 2014): h ← h·m/(1−p), m ~ Bernoulli(1−p) per unit,
    so E[h] is unchanged; the identity in eval mode. `Dropout()` takes p from reg.dropout.p
    (a list there gives one rate per Dropout() block, in module order); 0 without it."""

    def __init__(self, p: float | None = None, inplace: bool = False):
        super().__init__(0.0 if p is None else p, inplace)
        self.configurable = p is None


class Dropout2d(nn.Dropout2d):
    """Spatial dropout (Tompson et al. 2015): whole channels of a (B, C, H, W) map dropped,
    h_c ← h_c·m_c/(1−p), m_c ~ Bernoulli(1−p) per sample and channel. `Dropout2d()` takes p
    from reg.spatial_dropout.p; 0 without it."""

    def __init__(self, p: float | None = None, inplace: bool = False):
        super().__init__(0.0 if p is None else p, inplace)
        self.configurable = p is None


class DropBlock2d(nn.Module):
    """`drop_block` in training, the identity in eval mode. `DropBlock2d()` takes p, block_size
    and masks from reg.dropblock (p ramped each epoch by the regulariser); p = 0 without it."""

    dropout_family = True  # MC dropout and the linter treat it as dropout

    def __init__(self, drop_prob: float | None = None, block_size: int = 5, per_channel: bool = True):
        super().__init__()
        self.configurable = drop_prob is None
        self.drop_prob = 0.0 if drop_prob is None else drop_prob
        self.block_size, self.per_channel = block_size, per_channel

    def follow(self, settings: dict) -> DropBlock2d:
        """Take reg.dropblock's `settings` (ModelSpec.extra["dropblock"]: p, block_size,
        per_channel) as a configurable block: its rate then follows the regulariser's ramp."""
        assert self.configurable, "a DropBlock2d given its drop_prob is fixed"
        self.drop_prob, self.block_size, self.per_channel = (settings["p"], settings["block_size"],
                                                             settings["per_channel"])
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        return drop_block(x, self.drop_prob, self.block_size, self.per_channel)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}, per_channel={self.per_channel}"


class DropPath(nn.Module):
    """`drop_path` in training, the identity in eval mode; wrap a residual branch's output:
    `y = x + drop_path(f(x))`. `DropPath()` blocks take reg.droppath.p by depth: the l-th of L
    (module order) drops with p·l/L; 0 without it."""

    dropout_family = True

    def __init__(self, drop_prob: float | None = None):
        super().__init__()
        self.configurable = drop_prob is None
        self.drop_prob = 0.0 if drop_prob is None else drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        return drop_path(x, self.drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4g}"


class Norm:
    """`Norm(num_features, dims=2)`: the norm layer the run asks for, as torch's own module.

    kind (batch | layer | none) is `kind` if given, else the spec of the model being built
    (reg.batchnorm, reg.layernorm, model.norm), else none. dims=2 for (B, C, H, W) maps:
    BatchNorm2d or GroupNorm(1, C) (layer norm over C, H, W per sample); dims=1 for (B, C)
    features: BatchNorm1d or LayerNorm(C). none gives nn.Identity. Batch norm normalises each
    channel by its batch statistics in training, (x − μ_B)/√(σ²_B + ε)·γ + β, and by running
    averages in eval; layer norm uses each sample's own statistics in both.
    """

    def __new__(cls, num_features: int, dims: int = 2, kind: str | None = None) -> nn.Module:  # type: ignore[misc]
        configurable = kind is None
        if kind is None:
            kind = _BUILDING[-1].norm if _BUILDING else "none"
        if dims not in (1, 2):
            raise ValueError(f"Norm: dims must be 1 (features) or 2 (feature maps), not {dims}")
        if kind == "batch":
            m: nn.Module = nn.BatchNorm2d(num_features) if dims == 2 else nn.BatchNorm1d(num_features)
        elif kind == "layer":
            m = nn.GroupNorm(1, num_features) if dims == 2 else nn.LayerNorm(num_features)
        elif kind == "none":
            m = nn.Identity()
        else:
            raise ValueError(f"Norm: kind must be batch, layer or none, not {kind!r}")
        if configurable:
            m.regablate_norm = True  # counted by `configure`
        return m


def _configurable(model: nn.Module, cls: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, cls) and getattr(m, "configurable", False)]


def _refuse(key: str, value: Any, what: str, block: str, where: str) -> None:
    from regablate.errors import ConfigError

    raise ConfigError(key, value, f"{what} has no regablate.nn.{block} block; place {where}")


def _required(model: nn.Module, cls: type, key: str, value: Any, what: str, where: str,
              block: str | None = None) -> list:
    """The configurable `cls` blocks of `model`; refused (naming `block`, default the class) if
    there is none."""
    blocks = _configurable(model, cls)
    if not blocks:
        _refuse(key, value, what, block or cls.__name__, where)
    return blocks


def configure(model: nn.Module, spec: ModelSpec, asked: list[str] | tuple[str, ...], what: str,
              norm_key: str = "model.norm") -> nn.Module:
    """Set `model`'s configurable blocks from `spec`; refuse each structural regulariser in
    `asked` (the stack's names) with no block to act on. `what` names the model in messages."""
    from regablate.errors import ConfigError

    if "dropconnect" in asked:
        raise ConfigError("reg.dropconnect", "on", f"{what}: regablate.nn has no DropConnect block; "
                          "use a built-in model (mlp, convnet, resnet)")
    if "dropout" in asked:
        p = spec.dropout
        blocks = _required(model, Dropout, "reg.dropout", p, what, "regablate.nn.Dropout() where dropout should act")
        if isinstance(p, list) and len(p) != len(blocks):
            raise ConfigError("reg.dropout.p", p, f"must have one rate per regablate.nn.Dropout() "
                              f"block of {what} ({len(blocks)})")
        for m, rate in zip(blocks, p if isinstance(p, list) else [p] * len(blocks), strict=True):
            m.p = float(rate)
    if "spatial_dropout" in asked:
        p = spec.extra["spatial_dropout"]
        for m in _required(model, Dropout2d, "reg.spatial_dropout", p, what,
                           "regablate.nn.Dropout2d() where whole channels should be dropped"):
            m.p = float(p)
    if "dropblock" in asked:
        db = spec.extra["dropblock"]
        for m in _required(model, DropBlock2d, "reg.dropblock", db["p"], what,
                           "regablate.nn.DropBlock2d() where blocks of a feature map should be dropped"):
            m.follow(db)
    if "droppath" in asked:
        p = spec.extra["droppath"]
        blocks = _required(model, DropPath, "reg.droppath", p, what,
                           "regablate.nn.DropPath() on each residual branch: x + drop_path(f(x))")
        for m, rate in zip(blocks, depth_rates(p, len(blocks)), strict=True):
            m.drop_prob = rate
    if spec.norm != "none" and not any(getattr(m, "regablate_norm", False) for m in model.modules()):
        key = next((f"reg.{k}" for k in ("batchnorm", "layernorm") if k in asked), norm_key)
        _refuse(key, spec.norm if key == norm_key else {}, what, "Norm",
                "regablate.nn.Norm(channels) after a conv, "
                "regablate.nn.Norm(features, dims=1) after a Linear")
    return model


__all__ = ["DropBlock2d", "DropPath", "Dropout", "Dropout2d", "Norm", "building", "configure",
           "depth_rates", "drop_block", "drop_block_mask", "drop_path"]


# ---------------------------------------------------------------- recurrent blocks
#
#   Dropout()           reg.dropout.p                     naive: a new mask at every time step
#   LockedDropout()     reg.variational_dropout.p_in/out  one mask per sequence, shared over time
#   RecurrentLayer(...) reg.variational_dropout.p_hidden  the same on the hidden state h_{t-1}
#                       reg.weight_drop.p                 DropConnect on weight_hh, per forward
#
# A RecurrentLayer runs torch's fused nn.LSTM / nn.GRU while no hidden-state mask is active (with
# weight drop, through torch.func.functional_call on the dropped weight_hh) and unrolls the
# recurrence (the cell maths, per time step) when one is. Its two dropout-family children decide
# by their own `training` flag, so MC dropout (only dropout modules in training mode) works.


def variational_mask(shape: tuple[int, ...], p: float, device: torch.device | None = None,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """An inverted-dropout mask m/(1−p), m ~ Bernoulli(1−p), of `shape` (B, F): one per sequence,
    to be broadcast over all time steps (Gal & Ghahramani 2016), so E[mask] = 1."""
    keep = 1.0 - p
    return torch.empty(shape, device=device, dtype=dtype).bernoulli_(keep) / keep


def drop_connect(weight: torch.Tensor, p: float) -> torch.Tensor:
    """DropConnect (Wan et al. 2013) on a weight matrix: W ⊙ M/(1−p), M ~ Bernoulli(1−p) per
    entry, one mask per call (shared by the batch and every time step): AWD-LSTM's weight drop
    (Merity et al. 2017) when W is a hidden-to-hidden matrix. E[W ⊙ M/(1−p)] = W."""
    if p <= 0.0:
        return weight
    keep = 1.0 - p
    return weight * torch.empty_like(weight).bernoulli_(keep) / keep


class _RecurrentDrop(nn.Module):
    """A recurrent block with a drop rate `p`: given, or (constructed without it) set by the
    config, 0 until then; acting only in training."""

    dropout_family = True

    def __init__(self, p: float | None = None):
        super().__init__()
        self.configurable = p is None
        self.p = 0.0 if p is None else p

    @property
    def active(self) -> bool:
        return self.training and self.p > 0.0

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LockedDropout(_RecurrentDrop):
    """Variational ("locked") dropout on a (B, T, F) sequence: x[b, t] ← x[b, t]·m_b/(1−p), one
    mask m_b per sequence and feature, the same at every step t; the identity in eval mode.
    `LockedDropout()` takes p from reg.variational_dropout (p_in / p_out); 0 without it."""

    def sample_mask(self, batch: int, features: int, like: torch.Tensor) -> torch.Tensor:
        """The (B, F) mask of one forward pass (also drawn for the hidden state by RecurrentLayer)."""
        return variational_mask((batch, features), self.p, like.device, like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return x * self.sample_mask(x.shape[0], x.shape[-1], x).unsqueeze(1)


class WeightDrop(_RecurrentDrop):
    """`drop_connect` on the weight it is given (a hidden-to-hidden matrix) in training, the
    weight itself in eval mode. `WeightDrop()` takes p from reg.weight_drop.p; 0 without it."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return drop_connect(weight, self.p) if self.active else weight


class RecurrentLayer(nn.Module):
    """One LSTM or GRU layer on (B, T, F) → (B, T, H), zero initial state, with
    `hidden_drop` (a LockedDropout: one mask per sequence on h_{t−1} where it enters the
    recurrence, shared by all steps) and `weight_drop` (a WeightDrop on weight_hh, one mask per
    forward). Parameters are those of a one-layer nn.LSTM / nn.GRU (`self.rnn`), so a state dict
    loads into torch's module. Recurrence with the (possibly masked) input h̃ = h_{t−1}⊙m:
      LSTM  i,f,g,o = σ,σ,tanh,σ(W_ih x_t + b_ih + W_hh h̃ + b_hh);  c_t = f c_{t−1} + i g;
            h_t = o tanh(c_t)
      GRU   r,z = σ(W_i{r,z} x_t + b + W_h{r,z} h̃ + b);  n = tanh(W_in x_t + b_in + r(W_hn h̃ + b_hn));
            h_t = (1−z) n + z h_{t−1}
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int,
                 p_hidden: float | None = None, weight_drop: float | None = None):
        super().__init__()
        if mode not in ("lstm", "gru"):
            raise ValueError(f"RecurrentLayer: mode must be lstm or gru, not {mode!r}")
        self.mode, self.hidden_size = mode, hidden_size
        self.rnn = (nn.LSTM if mode == "lstm" else nn.GRU)(input_size, hidden_size, batch_first=True)
        self.hidden_drop = LockedDropout(p_hidden)
        self.weight_drop = WeightDrop(weight_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_hh = self.weight_drop(self.rnn.weight_hh_l0)
        if self.hidden_drop.active:
            mask = self.hidden_drop.sample_mask(x.shape[0], self.hidden_size, x)
            return self.unrolled(x, w_hh, mask)
        if w_hh is self.rnn.weight_hh_l0:
            return self.rnn(x)[0]
        params = dict(self.rnn.named_parameters())
        params["weight_hh_l0"] = w_hh
        with warnings.catch_warnings():  # functional_call's weights are not flattened for cuDNN
            warnings.simplefilter("ignore", UserWarning)
            return torch.func.functional_call(self.rnn, params, (x,))[0]

    def unrolled(self, x: torch.Tensor, w_hh: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The recurrence step by step (the docstring's maths), h_{t−1} ⊙ `mask` into W_hh."""
        r = self.rnn
        h = x.new_zeros(x.shape[0], self.hidden_size)
        c = h
        out = []
        if self.mode == "lstm":  # torch's fused cell: the gate maths above, in one kernel
            for t in range(x.shape[1]):
                h, c = torch.lstm_cell(x[:, t], (h if mask is None else h * mask, c),
                                       r.weight_ih_l0, w_hh, r.bias_ih_l0, r.bias_hh_l0)
                out.append(h)
            return torch.stack(out, 1)
        xp = F.linear(x, r.weight_ih_l0, r.bias_ih_l0)  # all steps' input projections at once
        for t in range(x.shape[1]):
            hh = F.linear(h if mask is None else h * mask, w_hh, r.bias_hh_l0)
            xr, xz, xn = xp[:, t].chunk(3, 1)  # GRU: z·h_{t−1} takes the unmasked state,
            hr, hz, hn = hh.chunk(3, 1)  # so torch.gru_cell (one h for both) does not fit
            rg, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + rg * hn) + z * h
            out.append(h)
        return torch.stack(out, 1)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, hidden_size={self.hidden_size}"


def configure_recurrent(model: nn.Module, spec: ModelSpec, asked: list[str] | tuple[str, ...],
                        what: str) -> nn.Module:
    """`configure` for the recurrent regularisers of a custom model: reg.variational_dropout sets
    every configurable LockedDropout (p_in on the first, p_out on the others) and RecurrentLayer
    hidden mask (p_hidden); reg.weight_drop every configurable WeightDrop. Refused without them."""
    if "variational_dropout" in asked:
        v = spec.extra["variational_dropout"]
        layers = [m for m in model.modules() if isinstance(m, RecurrentLayer)]
        locked = [m for m in _configurable(model, LockedDropout)
                  if not any(m is lay.hidden_drop for lay in layers)]
        hidden = [lay.hidden_drop for lay in layers if lay.hidden_drop.configurable]
        if not locked and not hidden:
            _refuse("reg.variational_dropout", v, what, "LockedDropout",
                    "regablate.nn.LockedDropout() on (B, T, F) sequences and/or "
                    "regablate.nn.RecurrentLayer for the hidden state")
        for k, m in enumerate(locked):
            m.p = float(v["p_in"] if k == 0 else v["p_out"])
        for m in hidden:
            m.p = float(v["p_hidden"])
    if "weight_drop" in asked:
        p = spec.extra["weight_drop"]
        for m in _required(model, WeightDrop, "reg.weight_drop", p, what,
                           "regablate.nn.RecurrentLayer (its WeightDrop masks weight_hh)", block="RecurrentLayer"):
            m.p = float(p)
    return model


__all__ += ["LockedDropout", "RecurrentLayer", "WeightDrop", "configure_recurrent", "drop_connect",
            "variational_mask"]
