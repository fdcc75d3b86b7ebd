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

Training takes its gradients by hand, not through autograd: a training `forward` keeps what
each layer's backward needs (a tape), and `backward(∂L/∂out)` walks it in reverse, writing every
parameter's gradient straight into its slice of one (K, P) buffer laid out like θ:

  linear      a = b + hW          ∂W = hᵀg,  ∂b = Σ_B g,  ∂h = gWᵀ (not for the input)
  activation  y = f(a)            ∂a = f'(a)·g  (aten's own backward kernels)
  batchnorm   aten's native_batch_norm and its backward, on the K·H-channel view
  layernorm   x̂ = norm(h), y = x̂w + b   ∂w = Σ_B g x̂,  ∂b = Σ_B g, ∂h by aten's backward of norm
  dropout     y = h·m             ∂h = g·m  (in place, on the rows of the members that drop)

The same arithmetic as autograd over the same ops, without its graph: a test checks the
gradients against autograd through each member's own module.

The layer plan is read from each member's ordinary `nn.Sequential` (as `build_mlp` made it),
so `load_member`/`export_member` move weights between the stacked tensors and the member's
own module (its initialisation, its `state_dict` for checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from regablate.vectorized.state import StackState

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
        # slot -> {member: its generator's state before it drew the slot's current block}
        self._drawn: dict[int, dict[int, torch.Tensor]] = {}
        self.grad = torch.zeros_like(self.theta)  # ∂L/∂θ (K, P), rewritten by every `backward`
        self.grads = {(p.layer, p.name): self.grad[:, p.offset : p.offset + p.numel].view(k, *p.shape)
                      for p in self.params}
        self._tape: list[tuple] = []  # what the last training forward kept for `backward`
        # dropping members as one run of rows [a, b) per slot (masks touch only those), or None
        self._drop_rows = [_run_of([k for k, _ in d]) for d in self.dropping]

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
        """(K, B, ...) -> (K, B, out). Training: batch statistics, dropout from `gens`, and the
        tape for `backward` (no autograd graph); evaluation: running statistics, no dropout."""
        if train:
            with torch.no_grad():
                return self._forward_train(x, gens)
        h = x
        for i, layer in enumerate(self.layers):
            kind = layer.kind
            if kind == "linear":
                w = self.views[i, "weight"]  # (K, in, out): its gradient comes out contiguous
                b = self.views.get((i, "bias"))
                h = torch.bmm(h, w) if b is None else torch.baddbmm(b.unsqueeze(1), h, w)
            elif kind == "batchnorm":
                h = self._batchnorm_eval(i, h)
            elif kind == "layernorm":
                h = torch.addcmul(self.views[i, "bias"].unsqueeze(1),
                                  F.layer_norm(h, (layer.args[0],), eps=layer.args[1]),
                                  self.views[i, "weight"].unsqueeze(1))
            elif kind == "act":
                if layer.args[0] == "GELU":
                    h = F.gelu(h, approximate=layer.args[1])
                elif layer.args[0] == "ReLU" and h is not x:
                    h = h.relu_()  # evaluation runs under no_grad: reuse the layer's output
                else:
                    h = ACTIVATIONS[layer.args[0]](h)
            else:  # flatten
                h = h.flatten(2)
        return h

    def _forward_train(self, x: torch.Tensor, gens: list[torch.Generator] | None) -> torch.Tensor:
        """The training forward, keeping per layer what its backward needs. `fresh`: h is a
        tensor of this forward that no backward reads, so it may be changed in place."""
        tape: list[tuple] = []
        h, fresh = x, False
        for i, layer in enumerate(self.layers):
            kind = layer.kind
            if kind == "linear":
                w, b = self.views[i, "weight"], self.views.get((i, "bias"))
                tape.append((h,))
                h, fresh = (torch.bmm(h, w) if b is None else torch.baddbmm(b.unsqueeze(1), h, w)), True
            elif kind == "batchnorm":
                k, n, width = h.shape
                _, eps, momentum = layer.args
                buf = self.buffers[i]
                flat = h.transpose(0, 1).reshape(n, k * width)
                weight = self.views[i, "weight"].reshape(-1)
                out, mean, invstd = torch.native_batch_norm(
                    flat, weight, self.views[i, "bias"].reshape(-1), buf.running_mean.view(-1),
                    buf.running_var.view(-1), True, momentum, eps)
                tape.append((flat, weight, mean, invstd))
                h, fresh = out.view(n, k, width).transpose(0, 1), True
            elif kind == "layernorm":
                width, eps = layer.args
                normed, mean, rstd = torch.native_layer_norm(h, (width,), None, None, eps)
                tape.append((h, normed, mean, rstd))
                h = torch.addcmul(self.views[i, "bias"].unsqueeze(1), normed, self.views[i, "weight"].unsqueeze(1))
                fresh = True
            elif kind == "act":
                name = layer.args[0]
                if name in ("ReLU", "Tanh"):  # their backward reads the output
                    h = h.relu_() if name == "ReLU" and fresh else ACTIVATIONS[name](h)
                    tape.append((h,))
                    # a dropout may scale a ReLU's output in place: [y·m > 0] = [y > 0] where m > 0,
                    # and where m = 0 the gradient is 0 either way
                    fresh = name == "ReLU"
                else:  # SiLU, GELU: their backward reads the input
                    tape.append((h,))
                    h, fresh = F.gelu(h, approximate=layer.args[1]) if name == "GELU" else F.silu(h), True
            else:  # flatten (a view: as fresh as its input)
                tape.append((h.shape,))
                h = h.flatten(2)
            if i in self.slots and self.dropping[self.slots.index(i)]:
                slot = self.slots.index(i)
                mask = self._masks(slot, *h.shape[1:], gens)
                h, fresh = self._scale(slot, h if fresh else h.clone(), mask), True
                tape[-1] = (*tape[-1], mask)
        self._tape = tape
        return h

    def _scale(self, slot: int, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """t ← t·m in place, on the rows of the members that drop at `slot` where they are one run."""
        rows = self._drop_rows[slot]
        if rows is None:
            return t.mul_(mask)
        t[rows[0] : rows[1]].mul_(mask[rows[0] : rows[1]])
        return t

    @torch.no_grad()
    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        """∂L/∂θ (K, P) from ∂L/∂out of the last training forward. `grad_out` is used up (scaled
        in place); the returned buffer is rewritten by the next call."""
        g = grad_out
        first = min(p.layer for p in self.params)  # nothing before it needs a gradient
        for i in reversed(range(first, len(self.layers))):
            layer, saved = self.layers[i], self._tape[i]
            if i in self.slots and self.dropping[self.slots.index(i)]:
                *saved, mask = saved
                g = self._scale(self.slots.index(i), g, mask)
            kind = layer.kind
            if kind == "linear":
                (h,) = saved
                self.grads[i, "weight"].copy_(torch.bmm(h.transpose(1, 2), g))  # (bmm's out= into a
                # strided view goes member by member: slower than this copy)
                if (i, "bias") in self.grads:
                    torch.sum(g, 1, out=self.grads[i, "bias"])
                if i > first:
                    g = torch.bmm(g, self.views[i, "weight"].transpose(1, 2))
            elif kind == "batchnorm":
                flat, weight, mean, invstd = saved
                k, n, width = g.shape
                _, eps, _ = layer.args
                buf = self.buffers[i]
                gin, gw, gb = torch.ops.aten.native_batch_norm_backward(
                    g.transpose(0, 1).reshape(n, k * width), flat, weight, buf.running_mean.view(-1),
                    buf.running_var.view(-1), mean, invstd, True, eps, [True, True, True])
                self.grads[i, "weight"].copy_(gw.view(k, width))
                self.grads[i, "bias"].copy_(gb.view(k, width))
                g = gin.view(n, k, width).transpose(0, 1)
            elif kind == "layernorm":
                h, normed, mean, rstd = saved
                torch.sum(g * normed, 1, out=self.grads[i, "weight"])
                torch.sum(g, 1, out=self.grads[i, "bias"])
                g = torch.ops.aten.native_layer_norm_backward(
                    g * self.views[i, "weight"].unsqueeze(1), h, (layer.args[0],), mean, rstd,
                    None, None, [True, False, False])[0]
            elif kind == "act":
                (t,) = saved
                name = layer.args[0]
                if name == "ReLU":
                    g = torch.ops.aten.threshold_backward(g, t, 0)
                elif name == "Tanh":
                    g = torch.ops.aten.tanh_backward(g, t)
                elif name == "GELU":
                    g = torch.ops.aten.gelu_backward(g, t, approximate=layer.args[1])
                else:
                    g = torch.ops.aten.silu_backward(g, t)
            else:
                (shape,) = saved
                g = g.reshape(shape)
        self._tape = []
        return self.grad

    def _batchnorm_eval(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Per-member BatchNorm in eval mode on (K, B, H), as torch's CPU inference kernel
        computes it: h·α + β with α = w/√(running var + ε), β = b − running mean·α (one pass,
        no transposes to the K·H-channel layout)."""
        _, eps, _ = self.layers[i].args
        buf = self.buffers[i]
        alpha = self.views[i, "weight"] * (buf.running_var + eps).sqrt().reciprocal()
        beta = self.views[i, "bias"] - buf.running_mean * alpha
        return torch.addcmul(beta.unsqueeze(1), h, alpha.unsqueeze(1))

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
            drawn = {}
            for member, _ in self.dropping[slot]:
                drawn[member] = gens[member].get_state()
                self._draw(slot, member, block, gens[member])
            self._drawn[slot] = drawn
            pos = 0
        self._blocks[slot] = (block, pos + n)
        return block[:, pos : pos + n]

    def _draw(self, slot: int, member: int, block: torch.Tensor, gen: torch.Generator) -> None:
        """Member `member`'s rows of `block`: the next uniforms of `gen` made a mask in place."""
        u = torch.rand(block.shape[1:], generator=gen, device=self.device, out=block[member])
        u.lt_(self.keep[slot][member]).div_(self.keep[slot][member])  # float32 1−p, as before

    # -- where the dropout streams stand (for a chunk continued from its checkpoint) --------
    def block_state(self) -> dict[int, tuple[int, int, int, dict[int, torch.Tensor]]]:
        """{layer a dropout slot follows: (next row, rows, width, {member: its generator's state
        before it drew the slot's current block})}: with the generators' states now, all a later
        process needs to go on drawing the same masks (`restore_blocks`). The states are never
        changed in place, so this is a snapshot."""
        return {self.slots[j]: (pos, block.shape[1], block.shape[2], dict(self._drawn.get(j, {})))
                for j, (block, pos) in self._blocks.items() if block is not None}

    @torch.no_grad()
    def restore_blocks(self, blocks: dict[int, tuple[int, int, int, dict[int, torch.Tensor]]],
                       gens: list[torch.Generator]) -> None:
        """Redraw each slot's current block from the states `block_state` gave (each generator
        left as it is now) and go on from its next row: the masks of an uninterrupted run."""
        for j, layer in enumerate(self.slots):
            if layer not in blocks or not self.dropping[j]:
                continue
            pos, rows, width, drawn = blocks[layer]
            block = torch.ones(self.k, rows, width, device=self.device)
            for member, _ in self.dropping[j]:
                gen, now = gens[member], gens[member].get_state()
                gen.set_state(drawn[member])
                self._draw(j, member, block, gen)
                gen.set_state(now)
            self._blocks[j] = (block, pos)
            self._drawn[j] = {member: drawn[member] for member, _ in self.dropping[j]}

    def step_done(self) -> None:
        """One training step happened (BatchNorm's num_batches_tracked)."""
        if self.buffers:
            self.num_batches_tracked += 1


def _run_of(rows: list[int]) -> tuple[int, int] | None:
    """(a, b) if `rows` are a, a+1, ..., b-1; else None."""
    if rows and rows == list(range(rows[0], rows[-1] + 1)):
        return rows[0], rows[-1] + 1
    return None
