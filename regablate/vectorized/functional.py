"""K members of one conv architecture (convnet, resnet) trained as one stacked model.

Member k's parameters are row k of one flat buffer θ (K, P), weight matrices and conv kernels
(every parameter with ndim >= 2, as `regablate.regularisers.decay.decay_split` / `weight_stats` count them)
first, so penalties and decoupled decay act on the prefix θ[:, :P_w]; the leaves are (K, *shape)
views into θ. The members' common architecture is a *template* (a copy of member 0 with a site
wherever any member has a regulariser block), run in one of two equivalent ways:

- "grouped" (the default): activations are (B, K·C, H, W), member k's channels side by side,
  so a conv is one grouped conv (groups = K) over the stacked kernels, BatchNorm one
  F.batch_norm over K·C channels (member k's statistics over its own batch; running mean/var
  updated in place in its rows of (K, C) buffers), and only the dense head sees a member axis.
- "vmap": out_k = vmap(functional_call(template, (θ_k views, running stats_k), x_k)), the
  running stats passed as batched buffers (torch.func's batch-norm recipe). The same arithmetic
  (vmap lowers the conv to the same grouped conv), but its batch-norm rule adds a second
  batch-norm pass and the affine as separate ops: 1.2–1.7× the grouped step time on the CPU.

Structural regularisers: members may differ in which blocks they have (a member without the
regulariser is the same model at rate 0) and in their rates. Each place where some member has a
block (Dropout, Dropout2d, DropBlock2d, DropPath) is a *site* of the template; before a training
forward, every site's multiplicative mask is drawn outside the model, member by member from member
k's own generator, in the order the ordinary forward would draw them, with the ordinary
module's own ops:

    dropout     m = Bernoulli(1−p)/(1−p) per unit            (F.dropout on the CPU)
    dropout2d   m = Bernoulli(1−p)/(1−p) per sample, channel (F.dropout2d)
    dropblock   m = M·count(M)/count_ones(M)                 (regablate.nn.drop_block_mask)
    droppath    m = Bernoulli(1−p)/(1−p) per sample          (regablate.nn.drop_path)

and the site computes h ← h·m_k (members at rate 0 get m = 1; a site no member drops at is the
identity). So member k's masks depend only on its own generator and rates, never on the group,
and a group of one reproduces the ordinary module drawing from the same RNG state (to float
rounding: DropPath's (h·m)/(1−p) becomes h·(m/(1−p))). Rates are read from the members' own
blocks at every training forward, so a schedule that sets them (DropBlock's ramp by `on_epoch`
on each member's module) takes effect.
"""

from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F
from torch import nn

import regablate.nn as rnn

# Layers with a stacked form in both layouts (exact types: a subclass may change the forward).
LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm,
          nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
          nn.Flatten, nn.Identity)


def _containers() -> tuple[type, ...]:
    """Modules whose own forward is known to be safe in both layouts (no in-place ops on the
    input, no data-dependent control flow, channels touched only through their layers or, for
    BasicBlock's shortcut, `_grouped_shortcut`): nn.Sequential and the built-in ResNet's."""
    from regablate.models.resnet import BasicBlock, ResNet

    return nn.Sequential, ResNet, BasicBlock


def _site_kind(m: nn.Module) -> str | None:
    """The kind of structural-regulariser block `m` is, or None."""
    if type(m) in (nn.Dropout, rnn.Dropout):
        return "dropout"
    if type(m) in (nn.Dropout2d, rnn.Dropout2d):
        return "dropout2d"
    if type(m) is rnn.DropBlock2d:
        return "dropblock"
    if type(m) is rnn.DropPath:
        return "droppath"
    return None


def stack_reason(model: nn.Module) -> str | None:
    """Why `model` cannot train as a member of a StackedModule, or None if it can: every module
    must be a known layer, a structural-regulariser block or a known container; BatchNorm must
    keep running statistics with a fixed momentum."""
    containers = _containers()
    if not any(True for _ in model.parameters()):
        return "the model has no parameters"
    unknown = []  # (has children, -depth, order, where): a layer, or the innermost container, first
    for name, m in model.named_modules():
        where = f"{type(m).__name__} at '{name or '(root)'}'"
        if isinstance(m, nn.RNNBase):
            return f"{where}: recurrent layers have no stacked form (conv models and MLPs only)"
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                not m.track_running_stats or m.momentum is None):
            return f"{where}: BatchNorm without running statistics or with a cumulative average"
        if type(m) is nn.Conv2d and (m.groups != 1 or m.padding_mode != "zeros"):
            return f"{where}: only ungrouped, zero-padded convolutions stack"
        if type(m) is nn.Flatten and (m.start_dim, m.end_dim) != (1, -1):
            return f"{where}: only Flatten() of everything but the batch stacks"
        if type(m) is nn.LayerNorm and len(m.normalized_shape) != 1:
            return f"{where}: only a LayerNorm over the last dimension stacks"
        if type(m) not in containers and _site_kind(m) is None and type(m) not in LEAVES:
            unknown.append((bool(m._modules), -name.count(".") - bool(name), len(unknown), where))
    if unknown:
        first = min(unknown)[3]
        return (f"{first} has no stacked form (stackable: conv/linear/norm/activation/"
                f"pool layers, regablate.nn Dropout/Dropout2d/DropBlock2d/DropPath, nn.Sequential "
                f"and the built-in ResNet)")
    return None


def skeleton(model: nn.Module) -> tuple:
    """What members of one stack must share: the module tree without its structural-regulariser
    blocks (an empty resnet slot counts as no block), with every layer's settings and shapes.
    Members with equal skeletons stack; rates and which blocks are present may differ."""
    if _site_kind(model) is not None:
        return ("site",)
    if isinstance(model, nn.Sequential):
        return ("seq", tuple(skeleton(c) for c in model if _site_kind(c) is None))
    own = tuple((n, tuple(t.shape)) for n, t in [*model._parameters.items(), *model._buffers.items()]
                if t is not None)
    if not model._modules:
        return (type(model), repr(model), own)
    attrs = tuple(sorted((k, v) for k, v in vars(model).items() if not k.startswith("_")
                         and k != "training" and isinstance(v, (bool, int, float, str, tuple))))
    kids = tuple((n, ("site",) if _site_kind(c) is not None or type(c) is nn.Identity else skeleton(c))
                 for n, c in model._modules.items())
    return (type(model), attrs, own, kids)


def _as_input(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The mask in the input's dtype, as each member's own block multiplies by it: a bf16
    activation stays bf16 under `trainer.amp` (DropBlock draws its mask in float32 and casts it)."""
    return mask if mask.dtype == x.dtype else mask.to(x.dtype)


class _Site(nn.Module):
    """A place where some members have a structural-regulariser block: h ← h·mask (the mask of
    the forward being run, set from outside), or records its input's shape while tracing."""

    def __init__(self, kind: str, sources: list[nn.Module | None]):
        super().__init__()
        self.kind = kind
        self.__dict__["sources"] = sources  # members' blocks (None: rate 0), not submodules
        self.mask: torch.Tensor | None = None
        self.trace: list | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trace is not None:
            self.trace.append((self, tuple(x.shape[1:])))
            return x
        return x if self.mask is None else x * _as_input(self.mask, x)

    def rate(self, k: int) -> float:
        src = self.sources[k]
        if src is None:
            return 0.0
        return float(src.p if self.kind in ("dropout", "dropout2d") else src.drop_prob)

    def extra_repr(self) -> str:
        return self.kind


def _split(seq: nn.Sequential) -> tuple[list[nn.Module], list[list[nn.Module]]]:
    """(core layers, gaps): gaps[i] = the blocks right before core[i] (the last: after all)."""
    core: list[nn.Module] = []
    gaps: list[list[nn.Module]] = [[]]
    for c in seq:
        if _site_kind(c) is None:
            core.append(c)
            gaps.append([])
        else:
            gaps[-1].append(c)
    return core, gaps


def _union(gaps: list[list[nn.Module]]) -> list[_Site]:
    """One site per block kind present in any member's gap, in the members' common order."""
    kinds: list[str] = []
    for gap in gaps:
        mine = [_site_kind(c) for c in gap]
        if len(set(mine)) < len(mine):
            raise ValueError(f"two {mine[0]} blocks in a row have no stacked form")
        for kind in mine:
            if kind not in kinds:
                kinds.append(kind)
        if [k for k in kinds if k in mine] != mine:
            raise ValueError(f"members place their blocks in different orders: {mine} vs {kinds}")
    return [_Site(kind, [next((c for c in gap if _site_kind(c) == kind), None) for gap in gaps])
            for kind in kinds]


def _merge(mods: list[nn.Module]) -> nn.Module:
    """The template for members `mods` (equal skeletons): member 0's layers (copies), a _Site
    wherever any member has a block."""
    m0 = mods[0]
    if isinstance(m0, nn.Sequential):
        splits = [_split(m) for m in mods]
        out: list[nn.Module] = []
        for i in range(len(splits[0][1])):
            out += _union([gaps[i] for _, gaps in splits])
            if i < len(splits[0][0]):
                out.append(_merge([core[i] for core, _ in splits]))
        return nn.Sequential(*out)
    if not m0._modules:
        return copy.deepcopy(m0)
    t = copy.copy(m0)  # a container: its own attributes, new children
    t._parameters = {n: copy.deepcopy(p) for n, p in m0._parameters.items()}
    t._buffers = {n: copy.deepcopy(b) for n, b in m0._buffers.items()}
    t._modules = {}
    for name in m0._modules:
        kids = [m._modules[name] for m in mods]
        kinds = {_site_kind(c) for c in kids} - {None}
        if kinds:
            if len(kinds) > 1:
                raise ValueError(f"members have different blocks at '{name}': {sorted(kinds)}")
            t._modules[name] = _Site(kinds.pop(), [c if _site_kind(c) else None for c in kids])
        else:
            t._modules[name] = _merge(kids)
    return t


def _mask(site: _Site, k: int, shape: tuple[int, ...], device: torch.device,
          gen: torch.Generator | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Member k's mask at `site` for an input of `shape` (B, ...) and `dtype`, drawn as the
    ordinary block draws it (see the module docstring; DropBlock's mask is drawn in float32, as
    `drop_block_mask` makes it, and cast by `_as_input`); broadcastable against the input."""
    src, p = site.sources[k], site.rate(k)
    keep = 1.0 - p
    if site.kind == "dropout":
        return torch.empty(shape, device=device, dtype=dtype).bernoulli_(keep, generator=gen).div_(keep)
    if site.kind == "dropout2d":
        noise = (shape[0], shape[1]) + (1,) * (len(shape) - 2)
        return torch.empty(noise, device=device, dtype=dtype).bernoulli_(keep, generator=gen).div_(keep)
    if site.kind == "droppath":
        noise = (shape[0],) + (1,) * (len(shape) - 1)
        return torch.empty(noise, device=device, dtype=dtype).bernoulli_(keep, generator=gen).div_(keep)
    return rnn.drop_block_mask(shape, p, src.block_size, src.per_channel, device, gen)


# -- the grouped layout: K members side by side in the channels, no vmap --------------------
#
# Activations are (B, K·C, ...) with member k's channels at [k·C, (k+1)·C) ("member-major"), so
# the per-channel layers act per member as they are: a conv is one conv with groups = K and the
# members' kernels stacked (K·O, C, kh, kw); BatchNorm is one F.batch_norm over K·C channels
# (member k's statistics over its own B samples, running stats updated in place in its rows);
# GroupNorm(G, C) is GroupNorm(K·G, K·C); pools, activations and Flatten(1) keep the layout.
# Only the dense layers see the member axis: x (B, K·F) → (K, B, F) → bmm with W_kᵀ (+ b_k).


class _Grouped(nn.Module):
    """One layer of the template in the grouped layout; `w`, `b`, `stats` are the stack's
    leaves (K, *shape) and running statistics (K, C)."""

    def __init__(self, layer: nn.Module, k: int, w: torch.Tensor | None, b: torch.Tensor | None,
                 stats: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.layer, self.k = layer, k
        self.__dict__.update(w=w, b=b, stats=stats)  # tensors of the stack, not parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, k, w, b = self.layer, self.k, self.w, self.b
        if isinstance(m, nn.Conv2d):  # a batch shared by all members enters with C channels
            groups = 1 if x.shape[1] == m.in_channels and k > 1 else k
            return F.conv2d(x, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                            m.stride, m.padding, m.dilation, groups)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            mean, var = self.stats
            return F.batch_norm(x, mean.view(-1), var.view(-1), None if w is None else w.reshape(-1),
                                None if b is None else b.reshape(-1), self.training, m.momentum, m.eps)
        if isinstance(m, nn.GroupNorm):
            return F.group_norm(x, k * m.num_groups, None if w is None else w.reshape(-1),
                                None if b is None else b.reshape(-1), m.eps)
        n = x.shape[0]
        h = x.view(n, k, -1)
        if isinstance(m, nn.LayerNorm):
            h = F.layer_norm(h, m.normalized_shape, eps=m.eps)
            if w is not None:
                h = h * w if b is None else torch.addcmul(b, h, w)
            return h.view(n, -1)
        # Linear: (K, B, F) @ (K, F, O) (+ b_k) -> (B, K·O)
        h = h.transpose(0, 1)
        out = torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        return out.transpose(0, 1).reshape(n, -1)


class _GroupedSite(nn.Module):
    """A site in the grouped layout: x (B, K·C, ...) times the site's mask (K, B, C|1, ...)
    laid out the same way."""

    def __init__(self, site: _Site, k: int):
        super().__init__()
        self.__dict__["site"] = site
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.site.mask
        if mask is None:
            return x
        k, n, c, rest = self.k, x.shape[0], x.shape[1] // self.k, mask.shape[3:]
        return x * _as_input(mask, x).expand(k, n, c, *rest).transpose(0, 1).reshape(n, k * c, *rest)


def _grouped_shortcut(self, x: torch.Tensor) -> torch.Tensor:
    """BasicBlock.shortcut (option A) in the grouped layout: each member's channels padded."""
    if self.stride == 1 and self.pad == 0:
        return x
    x = x[:, :, :: self.stride, :: self.stride]
    n, kc, h, w = x.shape
    x = F.pad(x.reshape(n, self.stack_k, kc // self.stack_k, h, w),
              (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    x = x.view(n, -1, h, w)
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def _grouped(t: nn.Module, k: int, views: dict, stats: dict, path: str = "") -> nn.Module:
    """The grouped-layout twin of template `t`: its containers (own forward; a BasicBlock with
    `_grouped_shortcut`) over `_Grouped` layers and `_GroupedSite`s."""
    from regablate.models.resnet import BasicBlock

    def name(leaf: str) -> str:
        return f"{path}.{leaf}" if path else leaf

    if isinstance(t, _Site):
        return _GroupedSite(t, k)
    if type(t) in (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm):
        return _Grouped(t, k, views.get(name("weight")), views.get(name("bias")), stats.get(path))
    if not t._modules:
        return t  # parameter-free and per channel or elementwise: the layer itself
    g = copy.copy(t)
    g._modules = {n: _grouped(c, k, views, stats, name(n)) for n, c in t._modules.items()}
    if isinstance(t, BasicBlock):
        g.stack_k = k
        g.shortcut = types.MethodType(_grouped_shortcut, g)
    return g


# Evaluation slices on the CPU: K·B of about this many samples keeps a resnet's maps in cache
# (resnet20 at K = 8: ~2× the member-images/s of one K×256 batch).


__all__ = ["skeleton", "stack_reason"]
