"""K MLPs of one architecture as one stacked model: every tensor has a leading member axis.

Member k's parameters are row k of one flat buffer θ (K, P), weight matrices first (so the
penalties and decoupled decay act on the prefix θ[:, :P_w]); each layer's parameters are leaf
views into it. A Linear layer is a batched matmul h_k ← b_k + h_k W_kᵀ (torch.baddbmm), with
W_kᵀ stored (in, out) so that its gradient needs no transposing copy.
BatchNorm normalises each member over its own batch: the activations (K, B, H) are seen as
B samples of K·H channels, so member k's statistics are over its B samples only, and the
running mean/var are per member. LayerNorm is per sample (no mixing), with per-member scale
and shift. Dropout draws member k's mask from member k's own generator (so a member's masks do
not depend on which members share its group): m = [u < 1−p_k], u ~ U[0, 1), h ← h·m/(1−p_k).

The layer plan is read from each member's ordinary `nn.Sequential` (as `build_mlp` made it),
so `load_member`/`export_member` move weights between the stacked tensors and the member's
own module (its initialisation, its `state_dict` for checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"ReLU": F.relu, "Tanh": torch.tanh, "SiLU": F.silu}
BLOCK_ROWS = 1024  # dropout uniforms are drawn this many rows (samples) at a time per member


@dataclass(frozen=True)
class Layer:
    """One non-dropout layer of the plan: kind and the settings that fix its shapes."""

    kind: str  # flatten | linear | batchnorm | layernorm | act
    args: tuple = ()


def _layer(m: nn.Module) -> Layer | None:
    """The plan entry for module `m`; None for dropout; ValueError if it cannot be stacked."""
    if isinstance(m, nn.Dropout):
        return None
    if type(m) is nn.Linear:
        return Layer("linear", (m.in_features, m.out_features, m.bias is not None))
    if type(m) is nn.BatchNorm1d:
        if not (m.affine and m.track_running_stats and m.momentum is not None):
            raise ValueError("BatchNorm1d without affine/running statistics/momentum")
        return Layer("batchnorm", (m.num_features, m.eps, m.momentum))
    if type(m) is nn.LayerNorm:
        if not m.elementwise_affine or len(m.normalized_shape) != 1 or m.bias is None:
            raise ValueError("LayerNorm other than an affine norm over the last dimension")
        return Layer("layernorm", (m.normalized_shape[0], m.eps))
    if type(m).__name__ in ACTIVATIONS and type(m) is getattr(nn, type(m).__name__):
        return Layer("act", (type(m).__name__,))
    if type(m) is nn.GELU:
        return Layer("act", ("GELU", m.approximate))
    if type(m) is nn.Flatten:
        return Layer("flatten")
    raise ValueError(f"layer {type(m).__name__} has no stacked form")


def plan(model: nn.Sequential) -> tuple[tuple[Layer, ...], dict[int, float]]:
    """(layers without dropout, {slot: p}): dropout at slot j acts after layer j."""
    layers: list[Layer] = []
    drops: dict[int, float] = {}
    for m in model:
        entry = _layer(m)
        if entry is None:
            if not layers:
                raise ValueError("dropout before the first layer")
            drops[len(layers) - 1] = float(m.p)
        else:
            layers.append(entry)
    return tuple(layers), drops


@dataclass
class _Param:
    layer: int
    name: str  # attribute of the member's module: weight | bias
    shape: tuple[int, ...]  # as stored in θ: a Linear weight is kept transposed, (in, out)
    transposed: bool = False
    offset: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class _Buffers:
    running_mean: torch.Tensor  # (K, H)
    running_var: torch.Tensor  # (K, H)


class StackedMLP:
    """K members' MLPs as stacked tensors; `forward(x)` maps (K, B, ...) -> (K, B, out)."""

    def __init__(self, layers: tuple[Layer, ...], rates: list[list[float]], slots: list[int],
                 k: int, device: torch.device):
        self.layers, self.k, self.device = layers, k, device
        self.slots = slots  # layer index after which each dropout slot acts
        # per slot: (member, keep rate 1-p) for the members that drop there, and the float32
        # (K, 1, 1) column of keep rates
        self.dropping = [[(k, 1.0 - row[j]) for k, row in enumerate(rates) if row[j] > 0]
                         for j in range(len(slots))]
        self.keep = [torch.tensor([1.0 - row[j] for row in rates], dtype=torch.float64)
                     .float().view(-1, 1, 1).to(device) for j in range(len(slots))]
        self.params: list[_Param] = []
        for i, layer in enumerate(layers):
            if layer.kind == "linear":
                n_in, n_out, bias = layer.args
                self.params.append(_Param(i, "weight", (n_in, n_out), transposed=True))
                if bias:
                    self.params.append(_Param(i, "bias", (n_out,)))
            elif layer.kind in ("batchnorm", "layernorm"):
                self.params += [_Param(i, "weight", (layer.args[0],)), _Param(i, "bias", (layer.args[0],))]
        self.params.sort(key=lambda p: len(p.shape) < 2)  # weight matrices first (a stable sort)
        offset = 0
        for p in self.params:
            p.offset, offset = offset, offset + p.numel
        self.n_matrix = sum(p.numel for p in self.params if len(p.shape) >= 2)  # P_w
        self.theta = torch.zeros(k, offset, device=device)  # θ (K, P)
        self.views: dict[tuple[int, str], torch.Tensor] = {}
        for p in self.params:
            v = self.theta[:, p.offset : p.offset + p.numel].view(k, *p.shape)
            self.views[p.layer, p.name] = v.requires_grad_()
        self.buffers: dict[int, _Buffers] = {
            i: _Buffers(torch.zeros(k, layer.args[0], device=device),
                        torch.ones(k, layer.args[0], device=device))
            for i, layer in enumerate(layers) if layer.kind == "batchnorm"}
        self.num_batches_tracked = 0  # training steps seen by BatchNorm (the same for every member)
        self.matrices = [self.views[p.layer, p.name] for p in self.params if len(p.shape) >= 2]
        self._blocks: dict[int, tuple[torch.Tensor | None, int]] = {}  # slot -> (uniforms, next row)

    @property
    def leaves(self) -> list[torch.Tensor]:
        """The parameter views, in θ's order (for autograd.grad)."""
        return [self.views[p.layer, p.name] for p in self.params]

    def flat_grad(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Gradients of `leaves` as one (K, P) tensor laid out like θ."""
        return torch.cat([g.reshape(self.k, -1) for g in grads], 1)

    def unflatten(self, row: torch.Tensor, model: nn.Sequential) -> dict[nn.Parameter, torch.Tensor]:
        """One member's θ-shaped row (P,) as tensors shaped like its module's parameters."""
        mods = self._modules(model)
        out = {}
        for p in self.params:
            t = row[p.offset : p.offset + p.numel].view(p.shape)
            out[getattr(mods[p.layer], p.name)] = t.t() if p.transposed else t
        return out

    # -- moving weights between the stack and the members' own modules ------------------
    def _modules(self, model: nn.Sequential) -> list[nn.Module]:
        return [m for m in model if not isinstance(m, nn.Dropout)]

    @torch.no_grad()
    def load_member(self, k: int, model: nn.Sequential) -> None:
        """Copy member k's parameters and BatchNorm buffers from its ordinary module."""
        mods = self._modules(model)
        for p in self.params:
            t = getattr(mods[p.layer], p.name)
            self.views[p.layer, p.name][k].copy_(t.t() if p.transposed else t)
        for i, b in self.buffers.items():
            b.running_mean[k].copy_(mods[i].running_mean)
            b.running_var[k].copy_(mods[i].running_var)

    @torch.no_grad()
    def export_member(self, k: int, model: nn.Sequential, state: StackState | None = None) -> None:
        """Write member k's weights (from `state`, default the live ones) into its module."""
        state = state or self.state()
        for param, t in self.unflatten(state.theta[k].detach(), model).items():
            param.copy_(t)
        mods = self._modules(model)
        for i in self.buffers:
            mods[i].running_mean.copy_(state.running[i][0][k])
            mods[i].running_var.copy_(state.running[i][1][k])
            mods[i].num_batches_tracked.fill_(int(state.batches[k]))

    # -- snapshots (best epoch, stopping point) --------------------------------------------
    def state(self) -> StackState:
        """The live state (shared tensors, not copies)."""
        return StackState(self.theta, {i: (b.running_mean, b.running_var) for i, b in self.buffers.items()},
                          torch.full((self.k,), self.num_batches_tracked, dtype=torch.long))

    @torch.no_grad()
    def load_state(self, state: StackState) -> None:
        """Make `state` the live state (e.g. each member's final weights before the last eval)."""
        self.theta.copy_(state.theta)
        for i, (m, v) in state.running.items():
            self.buffers[i].running_mean.copy_(m)
            self.buffers[i].running_var.copy_(v)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, train: bool, gens: list[torch.Generator] | None = None
                ) -> torch.Tensor:
        """(K, B, ...) -> (K, B, out). Training: batch statistics, dropout from `gens`."""
        h = x
        for i, layer in enumerate(self.layers):
            kind = layer.kind
            if kind == "linear":
                w = self.views[i, "weight"]  # (K, in, out): its gradient comes out contiguous
                b = self.views.get((i, "bias"))
                h = torch.bmm(h, w) if b is None else torch.baddbmm(b.unsqueeze(1), h, w)
            elif kind == "batchnorm":
                h = self._batchnorm(i, h, train)
            elif kind == "layernorm":
                h = torch.addcmul(self.views[i, "bias"].unsqueeze(1),
                                  F.layer_norm(h, (layer.args[0],), eps=layer.args[1]),
                                  self.views[i, "weight"].unsqueeze(1))
            elif kind == "act":
                if layer.args[0] == "GELU":
                    h = F.gelu(h, approximate=layer.args[1])
                elif not train and layer.args[0] == "ReLU" and h is not x:
                    h = h.relu_()  # evaluation runs under no_grad: reuse the layer's output
                else:
                    h = ACTIVATIONS[layer.args[0]](h)
            else:  # flatten
                h = h.flatten(2)
            if train and i in self.slots:
                h = self._dropout(self.slots.index(i), h, gens)
        return h

    def _batchnorm(self, i: int, h: torch.Tensor, train: bool) -> torch.Tensor:
        """Per-member BatchNorm: (K, B, H) as B samples of K·H channels."""
        k, n, width = h.shape
        _, eps, momentum = self.layers[i].args
        buf = self.buffers[i]
        flat = h.transpose(0, 1).reshape(n, k * width)
        out = F.batch_norm(flat, buf.running_mean.view(-1), buf.running_var.view(-1),
                           self.views[i, "weight"].reshape(-1), self.views[i, "bias"].reshape(-1),
                           training=train, momentum=momentum, eps=eps)
        return out.view(n, k, width).transpose(0, 1)

    def _dropout(self, slot: int, h: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        """Inverted dropout h ← h·[u < 1−p_k]/(1−p_k), u ~ U[0, 1) from member k's generator;
        members with p=0 keep u = 0, so they pass unchanged."""
        if not self.dropping[slot]:
            return h
        return h * self._masks(slot, *h.shape[1:], gens)

    def _masks(self, slot: int, n: int, width: int, gens: list[torch.Generator]) -> torch.Tensor:
        """The next n rows (K, n, width) of each member's stream of masks [u < 1−p_k]/(1−p_k) at
        `slot`. Member k draws blocks of max(n, BLOCK_ROWS) rows of u from its own generator (one
        call per member per block, not per step), so its masks depend on its own seed, rate and
        batch size only, never on which members share its group. The block is allocated once and
        refilled in place (a step's mask is used before the next refill: forward and backward);
        the rows of members that do not drop there stay 1."""
        block, pos = self._blocks.get(slot, (None, 0))
        rows = max(n, BLOCK_ROWS)
        if block is None or block.shape[1:] != (rows, width):
            block, pos = torch.ones(self.k, rows, width, device=self.device), rows
        if pos + n > rows:
            for member, _ in self.dropping[slot]:
                u = torch.rand((rows, width), generator=gens[member], device=self.device, out=block[member])
                u.lt_(self.keep[slot][member]).div_(self.keep[slot][member])  # float32 1−p, as before
            pos = 0
        self._blocks[slot] = (block, pos + n)
        return block[:, pos : pos + n]

    def step_done(self) -> None:
        """One training step happened (BatchNorm's num_batches_tracked)."""
        if self.buffers:
            self.num_batches_tracked += 1


def stack_model(members: list):
    """The stacked model of a group's members (`grouping.Member`s), each member's own weights
    loaded: a `functional.StackedModule` for conv models, else a StackedMLP whose dropout slots
    are the union of the members' (a member without one drops at rate 0)."""
    m0 = members[0]
    if m0.conv:
        from regablate.vectorized.functional import StackedModule

        return StackedModule([m.x.model for m in members], m0.x.device)
    slots = sorted(set().union(*(m.drops for m in members)))
    rates = [[m.drops.get(j, 0.0) for j in slots] for m in members]
    model = StackedMLP(m0.layers, rates, slots, len(members), m0.x.device)
    for i, m in enumerate(members):
        model.load_member(i, m.x.model)
    return model


@dataclass
class StackState:
    """θ, BatchNorm running statistics and step counts, per member (leading axis K)."""

    theta: torch.Tensor
    running: dict[int, tuple[torch.Tensor, torch.Tensor]]
    batches: torch.Tensor

    def clone(self) -> StackState:
        return StackState(self.theta.detach().clone(),
                          {i: (m.clone(), v.clone()) for i, (m, v) in self.running.items()},
                          self.batches.clone())

    @torch.no_grad()
    def copy_rows(self, rows: list[int], src: StackState) -> None:
        """Members `rows` take their state from `src`."""
        idx = torch.tensor(rows, device=self.theta.device)
        self.theta[idx] = src.theta.detach()[idx]
        for i, (m, v) in self.running.items():
            m[idx], v[idx] = src.running[i][0][idx], src.running[i][1][idx]
        self.batches[idx.cpu()] = src.batches[idx.cpu()]
