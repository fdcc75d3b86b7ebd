"""`StackedModule`: K members of one conv architecture as one stacked model (the template,
sites and grouped layers are built in `regablate.vectorized.functional`, whose docstring gives
the maths)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from regablate.vectorized.functional import _grouped, _mask, _merge, _Site, skeleton, stack_reason
from regablate.vectorized.state import StackState

CPU_EVAL_SAMPLES = 128


@dataclass
class _Param:
    name: str  # in the template
    shape: tuple[int, ...]
    offset: int = 0

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


class StackedModule:
    """K members of one conv architecture as stacked tensors; `forward(x)` maps (K, B, C, H, W)
    -> (K, B, out), or a batch shared by all members (B, C, H, W) -> (K, B, out) (`shared=True`:
    the first conv then takes one input against K kernels, no K copies of it; for evaluation
    when the members' splits are one tensor). The interface is StackedMLP's: `theta`, `params`
    (offset/numel, θ order), `n_matrix`, `matrices` ((K, fan_in, out) views: unit j's incoming
    weights are wm[:, :, j]), `leaves`, `flat_grad`, `unflatten`, `load_member`,
    `export_member`, `state`/`load_state` (StackState; `running` keyed by BatchNorm layer in
    module order), `step_done`.

    `models` are the members' ordinary modules (equal `skeleton`s; `stack_reason` None for
    each); their weights and BatchNorm statistics are loaded, and their structural blocks stay
    the source of each member's rates. `mode`: "grouped" (the channels layout above; faster)
    or "vmap" (vmap over functional_call of the template; the reference). Both compute the same.
    """

    def __init__(self, models: list[nn.Module], device: torch.device, mode: str = "grouped"):
        if mode not in ("grouped", "vmap"):
            raise ValueError(f"mode must be grouped or vmap, not {mode!r}")
        self.mode = mode
        for m in models:
            reason = stack_reason(m)
            if reason:
                raise ValueError(reason)
        if any(skeleton(m) != skeleton(models[0]) for m in models):
            raise ValueError("members differ in architecture (beyond their regulariser blocks)")
        self.k, self.device = len(models), torch.device(device)
        self.template = _merge(models).to(self.device)
        self.sites = [m for m in self.template.modules() if isinstance(m, _Site)]
        named = list(self.template.named_parameters())
        self.params = [_Param(n, tuple(p.shape)) for n, p in named]
        self.params.sort(key=lambda p: len(p.shape) < 2)  # weight matrices first (stable)
        offset = 0
        for p in self.params:
            p.offset, offset = offset, offset + p.numel
        self.n_matrix = sum(p.numel for p in self.params if len(p.shape) >= 2)  # P_w
        # the members' floating dtype (float32 as built; float64 where rounding must not blur
        # a comparison): θ, running statistics and the dropout masks are kept in it
        self.dtype = next(models[0].parameters()).dtype
        self.theta = torch.zeros(self.k, offset, device=self.device, dtype=self.dtype)  # θ (K, P)
        self.views = {p.name: self.theta[:, p.offset : p.offset + p.numel].view(self.k, *p.shape)
                      .requires_grad_() for p in self.params}
        names = [n for n, _ in named]
        self._index = [names.index(p.name) for p in self.params]  # θ order -> parameter order
        self.norms = [m for m in self.template.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        prefix = {m: n for n, m in self.template.named_modules()}
        self.buffers: dict[str, torch.Tensor] = {}
        self.running: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, m in enumerate(self.norms):
            mean = torch.zeros(self.k, m.num_features, device=self.device, dtype=self.dtype)
            var = torch.ones(self.k, m.num_features, device=self.device, dtype=self.dtype)
            self.buffers[f"{prefix[m]}.running_mean"], self.buffers[f"{prefix[m]}.running_var"] = mean, var
            self.running[i] = (mean, var)
        self.grouped = _grouped(self.template, self.k, self.views,
                                {prefix[m]: self.running[i] for i, m in enumerate(self.norms)})
        self.num_batches_tracked = 0  # training steps seen by BatchNorm (the same for every member)
        # unit j's incoming weights are wm[:, :, j] (as StackedMLP's (K, in, out) matrices)
        self.matrices = [self.views[p.name].view(self.k, p.shape[0], -1).transpose(1, 2)
                         for p in self.params if len(p.shape) >= 2]
        self._shapes: dict[tuple[int, ...], list[tuple[_Site, tuple[int, ...]]]] = {}
        self._out: torch.Tensor | None = None  # the last training forward's output, for `backward`
        self._batched = vmap(self._call, in_dims=(0, 0, 0, 0))
        self._shared = vmap(self._call, in_dims=(0, 0, None, 0))
        for k, m in enumerate(models):
            self.load_member(k, m)

    @property
    def leaves(self) -> list[torch.Tensor]:
        """The parameter views (K, *shape), in θ's order (for autograd.grad)."""
        return [self.views[p.name] for p in self.params]

    def flat_grad(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Gradients of `leaves` as one (K, P) tensor laid out like θ."""
        return torch.cat([g.reshape(self.k, -1) for g in grads], 1)

    def _member_params(self, model: nn.Module) -> list[nn.Parameter]:
        """Member's parameters in θ's order (its own parameter order is the template's)."""
        own = list(model.parameters())
        if [tuple(p.shape) for p in own] != [tuple(p.shape) for p in self.template.parameters()]:
            raise ValueError("the module's parameters are not the stack's")
        return [own[i] for i in self._index]

    def unflatten(self, row: torch.Tensor, model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
        """One member's θ-shaped row (P,) as tensors shaped like its module's parameters."""
        return {param: row[p.offset : p.offset + p.numel].view(p.shape)
                for param, p in zip(self._member_params(model), self.params, strict=True)}

    # -- moving weights between the stack and the members' own modules ------------------
    def _member_norms(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @torch.no_grad()
    def load_member(self, k: int, model: nn.Module) -> None:
        """Copy member k's parameters and BatchNorm running statistics from its module."""
        for param, p in zip(self._member_params(model), self.params, strict=True):
            self.views[p.name][k].copy_(param)
        for i, m in enumerate(self._member_norms(model)):
            self.running[i][0][k].copy_(m.running_mean)
            self.running[i][1][k].copy_(m.running_var)

    @torch.no_grad()
    def export_member(self, k: int, model: nn.Module, state: StackState | None = None) -> None:
        """Write member k's weights and BatchNorm statistics (from `state`, default the live
        ones) into its module."""
        state = state or self.state()
        for param, t in self.unflatten(state.theta[k].detach(), model).items():
            param.copy_(t)
        for i, m in enumerate(self._member_norms(model)):
            m.running_mean.copy_(state.running[i][0][k])
            m.running_var.copy_(state.running[i][1][k])
            m.num_batches_tracked.fill_(int(state.batches[k]))

    # -- snapshots (best epoch, stopping point) --------------------------------------------
    def state(self) -> StackState:
        """The live state (shared tensors, not copies); `running` is keyed by BatchNorm layer."""
        return StackState(self.theta, dict(self.running),
                          torch.full((self.k,), self.num_batches_tracked, dtype=torch.long))

    @torch.no_grad()
    def load_state(self, state: StackState) -> None:
        """Make `state` the live state."""
        self.theta.copy_(state.theta)
        for i, (m, v) in state.running.items():
            self.running[i][0].copy_(m)
            self.running[i][1].copy_(v)

    # -- forward ---------------------------------------------------------------------------
    def _call(self, params: dict, buffers: dict, x: torch.Tensor, masks: list) -> torch.Tensor:
        """One member's forward (under vmap): the template with its parameters, statistics and
        this forward's site masks."""
        active = self._active
        for site, mask in zip(active, masks, strict=True):
            site.mask = mask
        try:
            return functional_call(self.template, (params, buffers), (x,))
        finally:
            for site in active:
                site.mask = None

    def _trace(self, sample: tuple[int, ...]) -> list[tuple[_Site, tuple[int, ...]]]:
        """(site, its input's shape per sample) in the order the forward reaches them."""
        if sample not in self._shapes:
            order: list = []
            for s in self.sites:
                s.trace = order
            meta = {n: torch.empty(t.shape[1:], device="meta")
                    for n, t in [*self.views.items(), *self.buffers.items()]}
            try:
                with torch.no_grad():
                    functional_call(self.template.eval(), meta, (torch.empty(1, *sample, device="meta"),))
            finally:
                for s in self.sites:
                    s.trace = None
            if len({id(s) for s, _ in order}) < len(order):
                raise ValueError("a regulariser block is used twice in one forward")
            for s, shape in order:
                if s.kind in ("dropout2d", "dropblock") and len(shape) != 3:
                    raise ValueError(f"{s.kind} on a {len(shape) + 1}-D input (needs (B, C, H, W))")
            self._shapes[sample] = order
        return self._shapes[sample]

    def masks(self, batch: int, sample: tuple[int, ...],
              gens: list[torch.Generator] | None) -> tuple[list[_Site], list[torch.Tensor]]:
        """The active sites and their (K, B, ...) masks for one training forward: at each site
        in forward order, each member with a positive rate draws from its own generator
        (`gens[k]`; None: the device's global RNG); members at rate 0 get ones."""
        active, masks = [], []
        for site, shape in self._trace(sample):
            rates = [site.rate(k) for k in range(self.k)]
            if not any(rates):
                continue
            full = (batch, *shape)
            drawn = {k: _mask(site, k, full, self.device, gens[k] if gens else None, self.dtype)
                     for k in range(self.k) if rates[k] > 0}
            mshape = torch.broadcast_shapes(*(m.shape for m in drawn.values()))
            if len(drawn) == self.k:
                stacked = torch.stack([m.expand(mshape) for m in drawn.values()])
            else:
                stacked = torch.ones(self.k, *mshape, device=self.device,
                                     dtype=next(iter(drawn.values())).dtype)
                for k, m in drawn.items():
                    stacked[k] = m
            active.append(site)
            masks.append(stacked)
        return active, masks

    def forward(self, x: torch.Tensor, train: bool, gens: list[torch.Generator] | None = None,
                shared: bool = False) -> torch.Tensor:
        """(K, B, ...) -> (K, B, out), or (B, ...) -> (K, B, out) with `shared`. Training: batch
        statistics (running ones updated per member) and member k's masks from `gens[k]`.
        Evaluation on the CPU goes in slices of about CPU_EVAL_SAMPLES member-samples (each
        sample's output is its own then), where the activations stay in the caches."""
        sample = tuple(x.shape[1:] if shared else x.shape[2:])
        batch = x.shape[0 if shared else 1]
        step = max(1, CPU_EVAL_SAMPLES // self.k)
        if not train and x.device.type == "cpu" and batch > step:
            return torch.cat([self.forward(x[i : i + step] if shared else x[:, i : i + step], False,
                                           shared=shared) for i in range(0, batch, step)], 1)
        self._active, masks = self.masks(batch, sample, gens) if train else ([], [])
        self.template.train(train)  # after `masks`: tracing runs the template in eval mode
        if self.mode == "vmap":
            out = (self._shared if shared else self._batched)(dict(self.views), self.buffers, x, masks)
            self._out = out if train else None
            return out
        self.grouped.train(train)
        h = x if shared else x.transpose(0, 1).reshape(batch, -1, *x.shape[3:])  # (B, K·C, H, W)
        if h.dim() == 4 and h.device.type == "cpu":  # mkldnn's grouped convs are faster on NHWC
            h = h.contiguous(memory_format=torch.channels_last)  # (about 1.5× fwd+bwd at K=8)
        for site, mask in zip(self._active, masks, strict=True):
            site.mask = mask
        try:
            out = self.grouped(h)
        finally:
            for site in self._active:
                site.mask = None
        out = out.view(batch, self.k, -1).transpose(0, 1)
        self._out = out if train else None
        return out

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        """∂L/∂θ (K, P) from ∂L/∂out of the last training forward, through autograd. Under
        `trainer.amp` that output is bf16 and ∂L/∂out (from the float32 loss) is cast to it, as
        autograd casts it through an ordinary run's `model(x).float()`."""
        out, self._out = self._out, None
        return self.flat_grad(torch.autograd.grad(out, self.leaves, grad_out.to(out.dtype)))

    def step_done(self) -> None:
        """One training step happened (BatchNorm's num_batches_tracked)."""
        if self.norms:
            self.num_batches_tracked += 1

    # masks are drawn afresh for every step: nothing of them outlives a step (StackedMLP keeps
    # blocks of uniforms across steps, which a continued chunk redraws)
    def block_state(self) -> dict:
        return {}

    def restore_blocks(self, blocks: dict, gens: list[torch.Generator]) -> None:
        pass


__all__ = ["StackedModule"]
