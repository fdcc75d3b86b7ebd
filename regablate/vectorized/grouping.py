"""Which jobs of a sweep can train as one stacked model, and in which groups.

A job is vectorisable when it is a built-in MLP on generated data, or a built-in convnet/resnet on
generated or CIFAR-10 data, with only stackable regularisers (conv members: batch transforms too —
augment, cutout, mixup, cutmix —, each member's on its own rows from its own generator). MLPs
stack as `StackedMLP`, conv models as `stacked_conv.StackedModule`. Members of one group share
everything that fixes tensor shapes or the shared loop: the device, the split shapes and task, the
architecture (the MLP's layer plan, or the conv model's `skeleton`, regulariser blocks aside), the
optimiser family with its fixed settings (betas, eps / momentum, nesterov), batch size, epochs,
eval chunk and `trainer.amp` (conv members only: bf16 autocast on CUDA). Seeds, data seeds, drop
rates (a member without a structural regulariser is the same model at rate 0), penalty and decay
strengths, label smoothing, max-norm and clipping bounds, lr, optim.weight_decay, schedule and
early-stopping settings may differ per member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from regablate.training.experiment import Experiment, build_experiment, resolve_device
from regablate.training.settings import Settings
from regablate.vectorized.stacked import StackedMLP, plan

# Regularisers with a stacked form (per-member strengths), per model kind.
STACKABLE = frozenset({"dropout", "l1", "l2", "weight_decay", "batchnorm", "layernorm",
                       "label_smoothing", "max_norm", "grad_clip"})
CONV_STACKABLE = frozenset({"dropout", "spatial_dropout", "dropblock", "droppath", "l1", "l2",
                            "weight_decay", "batchnorm", "label_smoothing", "max_norm", "grad_clip",
                            "augment", "cutout", "mixup", "cutmix"})
CONV_MODELS = frozenset({"convnet", "resnet"})
# Data sets generated from data_seed on the fly (cheap to build once per member).
GENERATED = frozenset({"sine", "sparse_synthetic"})
IMAGES = frozenset({"cifar10"})


@dataclass
class Member:
    """One job of a group: its config, run dir, settings, experiment and layer plan."""

    job: int  # the sweep's job number
    cfg: dict  # resolved config (no hydra key)
    run_dir: Path
    s: Settings
    x: Experiment  # built exactly as the ordinary trainer builds it (data, init)
    layers: tuple  # an MLP's layer plan (tuple of Layer), or a conv model's skeleton
    drops: dict[int, float]  # an MLP's dropout slot -> rate (conv models: their blocks hold them)
    cpu_rng: torch.Tensor  # the global torch RNG state right after init (dropout on the CPU)
    # trainer.resume=auto: the member's checked last.pt state (history unpacked, best.pt's
    # weights under "best") and its chunk, (epoch, run dirs in order) as that chunk wrote it
    # (`regablate.vectorized.resume`); None and () for a member that starts at epoch 1
    resume: dict | None = None
    chunk: tuple = ()

    @property
    def key(self) -> tuple:
        """Members with equal keys can share one stacked model."""
        s, d = self.s, self.x.data
        shapes = tuple((tuple(sp.x.shape), sp.x.dtype, tuple(sp.y.shape), sp.y.dtype)
                       for sp in (d.train, d.val, d.test))
        o = s.optim
        opt = ((o.name, tuple(o.betas), o.eps) if o.name in ("adam", "adamw")
               else (o.name, o.momentum, o.nesterov))
        t = s.trainer
        return (str(self.x.device), d.task, d.out_dim, shapes, self.layers, opt,
                t.batch_size, t.max_epochs, t.eval_batch_size, t.amp, self.chunk)


    @property
    def conv(self) -> bool:
        return self.s.model.name in CONV_MODELS


def not_stackable(s: Settings) -> str | None:
    """Why these settings must train the ordinary way, or None (before anything is built)."""
    if s.model.name == "custom":
        return f"model=custom ({s.model.target}) has no stacked form (built-in MLPs and conv models only)"
    conv = s.model.name in CONV_MODELS
    if s.model.name != "mlp" and not conv:
        return f"model {s.model.name} has no stacked form (mlp, convnet and resnet only)"
    data = GENERATED | IMAGES if conv else GENERATED
    if s.dataset.name not in data:
        return f"dataset {s.dataset.name} has no stacked form here (only {', '.join(sorted(data))})"
    other = [n for n in s.stack.names if n not in (CONV_STACKABLE if conv else STACKABLE)]
    if other:
        return "reg " + ", ".join(other) + " has no stacked form"
    if s.trainer.amp and not conv:  # a stacked MLP's gradients are by hand, in float32
        return "trainer.amp runs an MLP the ordinary way"
    return None


def data_key(s: Settings, device: torch.device) -> tuple:
    """Members with equal keys train on identical data (built from the same settings and seed)."""
    return (repr(s.dataset), s.data_seed, str(device))


def make_member(job: int, cfg: dict, run_dir: Path, s: Settings, shared: dict | None = None) -> Member | str:
    """Build the member's experiment (as `train.train` does); a reason string if it cannot stack.
    `shared`: data sets by `data_key`, kept across calls, so each data set is built (or loaded)
    once and members of one data set hold one copy (a CIFAR-10-sized split is not held K times).

    ConfigError propagates: the caller sends such a job the ordinary way, which records it.
    """
    key = data_key(s, resolve_device(s.trainer.device))
    x = build_experiment(s, data=(shared or {}).get(key))  # each data set is built once
    cpu_rng = torch.get_rng_state()  # what F.dropout would draw from next in the ordinary run
    if shared is not None:
        shared.setdefault(key, x.data)
    if s.model.name in CONV_MODELS:
        from regablate.vectorized.functional import skeleton, stack_reason

        reason = stack_reason(x.model)
        if reason:
            return f"model: {reason}"
        return Member(job, cfg, Path(run_dir), s, x, ("conv", skeleton(x.model)), {}, cpu_rng)
    try:
        layers, drops = plan(x.model)
    except ValueError as e:
        return f"model: {e}"
    return Member(job, cfg, Path(run_dir), s, x, layers, drops, cpu_rng)


def group(members: list[Member]) -> list[list[Member]]:
    """Members with equal keys, groups in the order of their first job. Members that continue an
    interrupted chunk group only with that chunk's other members, in the chunk's order."""
    groups: dict[tuple, list[Member]] = {}
    for m in members:
        groups.setdefault(m.key, []).append(m)
    for g in groups.values():
        if g[0].chunk:
            dirs = g[0].chunk[1]
            g.sort(key=lambda m: dirs.index(m.run_dir.resolve()))
    return list(groups.values())


def chunks(members: list[Member], max_members: int) -> list[list[Member]]:
    """Split into ceil(K / max_members) contiguous chunks of near-equal size. A group that
    continues an interrupted chunk is in that chunk's order; split (it ran out of memory and goes
    on under a smaller hydra.launcher.max_members, or less memory is free now), each member
    continues from its own state and generators: its numbers stay the whole chunk's to the
    rounding of a stack of another size (as between any two K; the tests find an MLP member's
    equal to the bit)."""
    n = max(1, math.ceil(len(members) / max(1, max_members)))
    size, extra = divmod(len(members), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(members[start:end])
        start = end
    return out


def stack_model(members: list):
    """The stacked model of a group's members (`grouping.Member`s), each member's own weights
    loaded: a `stacked_conv.StackedModule` for conv models, else a StackedMLP whose dropout slots
    are the union of the members' (a member without one drops at rate 0)."""
    m0 = members[0]
    if m0.conv:
        from regablate.vectorized.stacked_conv import StackedModule

        return StackedModule([m.x.model for m in members], m0.x.device)
    slots = sorted(set().union(*(m.drops for m in members)))
    rates = [[m.drops.get(j, 0.0) for j in slots] for m in members]
    model = StackedMLP(m0.layers, rates, slots, len(members), m0.x.device)
    for i, m in enumerate(members):
        model.load_member(i, m.x.model)
    return model
