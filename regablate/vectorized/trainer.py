"""The vectorised training loop: K members of one group as one stacked model, read top to bottom.

Per epoch: each member's batch order from its own generator (torch.Generator().manual_seed(seed),
one randperm per epoch, as the ordinary trainer) -> for each batch slice: stacked forward
(`stacked.StackedMLP`, or `functional.StackedModule` for conv models; per-member structural
regularisers and BatchNorm) -> per-member loss ℓ_k (label smoothing ε_k) -> gradients of
Σ_k ℓ_k (member k's gradient is ∂ℓ_k/∂θ_k: the members share no parameter) -> penalties'
gradients (λ1_k sign w, λ2_k w) -> per-member clipping g_k ← g_k min(1, c_k/‖g_k‖) ->
decoupled decay w ← w(1 − lr_k λ_k) -> optimiser step -> max-norm. Then train and val are
evaluated for all members at once (eval mode, no grad), and each member's own Recorder,
EarlyStopper and LR schedule take its numbers: a member that stops (or diverges) is frozen
there — its rows, best epoch and final state are its own — while the others go on (a stopped
member's rows are still computed, and ignored, until the whole chunk is done).
Each member's own LR schedule is the ordinary trainer's (`Experiment.schedule`): it steps on
the member's val loss, on a torch optimiser that only holds the lr, which the stacked optimiser
reads; a member without a schedule builds no torch optimiser (its lr is the configured one).
At the end each member's final state (best epoch, or where it stopped) is
written into its own module and evaluated exactly as the ordinary trainer evaluates its model.

Members with the same data share one copy of their split tensors (U distinct data sets, member
k reads data set u_k); batches are gathered as x[u_k, perm_k] and put through `data.prepare`.
Checkpoints go by time (`trainer.checkpoint_every_s`): after each epoch the chunk's state is
copied in memory (θ, BatchNorm statistics, best rows, optimiser moments and every member's
small state), and written when that many seconds have passed since the last write, at the end
and on an interrupt — always as of the last completed epoch. A chunk writes at the shortest
period among its members. All members' last.pt states go in one file (`checkpoint.save_shared`);
best.pt stays a plain state_dict per member, written when it changed.

Each member's last.pt is the ordinary trainer's resume state (so `train` continues it alone) plus,
under "stacked", what the chunk needs to go on exactly as if never stopped: the chunk's epoch, the
member's dropout generator (on a GPU) and where its dropout masks stand (`StackedMLP.block_state`).
Under trainer.resume=auto the launcher stacks the members of an interrupted chunk again
(`regablate.vectorized.resume`): `_start` puts every member's θ, BatchNorm statistics, best
weights, optimiser moments and step back in its row, and `_open` its schedule, stopper, history
and generators; members that had stopped (or diverged: behind the chunk's epoch) stay done.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from regablate.checks.lint import format_findings, lint
from regablate.checks.selfcheck import check_eval_determinism
from regablate.data.base import unchanged
from regablate.metrics.weight_stats import named_weight_matrices
from regablate.regularisers.mixing import probs
from regablate.rundir.atomic import one_sync
from regablate.rundir.recorder import Recorder
from regablate.training import checkpoint
from regablate.training.evaluate import gap
from regablate.training.experiment import group_id
from regablate.training.loop import EarlyStopper, closing_fields, open_run
from regablate.training.optim import state_dict_of
from regablate.vectorized import optim
from regablate.vectorized.grouping import Member, data_key, stack_model
from regablate.vectorized.state import StackState

EVAL_ROWS = 8192


@dataclass
class _Run:
    """One member's bookkeeping: its files, early stopping, history and how it ended."""

    m: Member
    rec: Recorder
    stopper: EarlyStopper
    gen: torch.Generator  # batch order
    drop_gen: torch.Generator  # dropout masks and batch transforms' tensors, on the device
    cpu_gen: torch.Generator  # mixup's and cutmix's scalars (the drop_gen itself on the CPU)
    history: list = field(default_factory=list)
    status: str = "completed"
    done: bool = False
    epochs_run: int = 0
    has_best: bool = False


@dataclass
class GroupStats:
    members: int
    steps: int
    seconds: float  # training loop, evaluation and files

    @property
    def per_member_step_s(self) -> float:
        return self.seconds / max(1, self.members * self.steps)


def _continue_run(r: _Run, state: dict) -> None:
    """Member r's bookkeeping from its checked resume state: stopper, history, generators, its lr
    schedule (and the torch optimiser that holds its lr, where it has one), and whether it is
    done: stopped early, or behind the chunk's epoch without stopping (it diverged there)."""
    x = r.m.x
    r.stopper.__dict__.update(state["stopper"])
    r.history = list(state["history"])
    r.epochs_run = state["epoch"]
    r.has_best = r.stopper.best_epoch > 0
    r.gen.set_state(state["rng"]["order"])
    r.cpu_gen.set_state(state["rng"]["torch"])
    if r.drop_gen is not r.cpu_gen:
        r.drop_gen.set_state(state["stacked"]["drop"])
    if "optimizer" in x.__dict__ or x.s.sched.name != "none":  # its lr and the schedule's keys
        x.optimizer.load_state_dict({"state": {}, "param_groups": state["optimizer"]["param_groups"]})
    x.schedule.load_state_dict(state["schedule"])
    if r.stopper.stop:
        r.done = True
    elif state["epoch"] < state["stacked"]["epoch"]:
        r.status, r.done = "diverged", True


def _batches_tracked(weights: dict) -> int | None:
    """BatchNorm's step count in a member's state_dict (the same in every norm layer), or None."""
    return next((int(t) for name, t in weights.items() if name.endswith("num_batches_tracked")), None)


def _stored_step(state: dict) -> torch.Tensor | None:
    """Adam's step count in a member's stored optimiser state (the same for every parameter)."""
    step = next((per["step"] for per in state["optimizer"]["state"].values() if "step" in per), None)
    return None if step is None else torch.as_tensor(step, dtype=torch.float32).reshape(())


def stored_blocks(state: dict) -> dict[int, tuple[int, int, int, torch.Tensor | None]]:
    """A member's last.pt "stacked" blocks as `StackedMLP.block_state` gives them, with its own
    generator's state (None where it does not drop): {layer: (pos, rows, width, state)}."""
    return {int(layer): (b["pos"], b["rows"], b["width"], b.get("state"))
            for layer, b in state["stacked"]["blocks"].items()}


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1)


def _span(values: list[float]) -> tuple[int, int]:
    """(a, b): the rows from the first non-zero value to the last (0, 0 if none)."""
    rows = [k for k, v in enumerate(values) if v != 0]
    return (rows[0], rows[-1] + 1) if rows else (0, 0)


class _Regs:
    """Per-member regulariser strengths as columns; None where no member uses one."""

    def __init__(self, members: list[Member], device: torch.device):
        def strength(name: str, attr: str, absent: float) -> list[float]:
            return [getattr(m.s.stack[name].s, attr) if m.s.stack[name] is not None else absent
                    for m in members]

        def col(values: list[float], absent: float) -> torch.Tensor | None:
            return None if all(v == absent for v in values) else _column(values, device)

        self.l1 = col(strength("l1", "lam", 0.0), 0.0)
        self.l2 = col(strength("l2", "lam", 0.0), 0.0)
        self.decay = strength("weight_decay", "lam", 0.0)  # decoupled, weight matrices only
        # the rows [a, b) from the first member with the penalty to the last (the others are 0)
        self.l1_rows, self.l2_rows, self.decay_rows = (_span(strength(name, "lam", 0.0))
                                                       for name in ("l1", "l2", "weight_decay"))
        eps = [m.s.stack.loss_spec().label_smoothing if m.x.data.task == "classification" else 0.0
               for m in members]
        self.smoothing = col(eps, 0.0)
        self.max_norm = col(strength("max_norm", "c", math.inf), math.inf)
        clip = strength("grad_clip", "max_norm", math.inf)
        self.clip = None if all(math.isinf(c) for c in clip) else torch.tensor(clip, device=device)
        self.decay_factor: torch.Tensor | None = None

    def set_lr(self, lr: list[float], device: torch.device) -> None:
        """w ← w(1 − lr_k λ_k): the factor in double, then float32 (as torch casts the scalar)."""
        if any(self.decay):
            self.decay_factor = torch.tensor([1 - a * d for a, d in zip(lr, self.decay)],
                                             dtype=torch.float64).to(torch.float32).view(-1, 1).to(device)


@torch.no_grad()
def _loss_and_grad(out: torch.Tensor, y: torch.Tensor, task: str, eps: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member mean loss ℓ (K,) and ∂(Σ_k ℓ_k)/∂out, by hand (F.cross_entropy's and
    F.mse_loss's values; their gradients without autograd's graph). Cross-entropy with smoothing
    ε_k over C classes, lse = log Σ_c exp(o_c):

        ℓ_k = mean_b[lse − (1−ε_k)·o_y − ε_k·mean_c o],  ∂ℓ_k/∂o = (softmax(o) − (1−ε_k)·[c=y] − ε_k/C) / B

    With probability targets y (K, B, C) (mixup, cutmix), t = (1−ε_k)·y + ε_k/C:

        ℓ_k = mean_b[lse − Σ_c t_c·o_c],  ∂ℓ_k/∂o = (softmax(o) − t) / B

    or the mean squared error ℓ_k = mean (o − y)², ∂ℓ_k/∂o = 2(o − y) / (B·D)."""
    k, b = out.shape[:2]
    if task != "classification":
        diff = out - y
        return diff.square().reshape(k, -1).mean(1), diff.mul_(2 / diff[0].numel())
    top = out.amax(-1, keepdim=True)
    p = (out - top).exp_()
    total = p.sum(-1, keepdim=True)
    lse = total.log().add_(top).squeeze(-1)  # (K, B)
    if y.is_floating_point():
        t = y if eps is None else torch.lerp(y, torch.full_like(y, 1 / y.shape[-1]), eps.view(k, 1, 1))
        loss = (lse - torch.linalg.vecdot(t, out)).mean(1)
        return loss, p.div_(total).sub_(t).div_(b)
    target = y.unsqueeze(-1)
    picked = out.gather(-1, target).squeeze(-1)
    p.div_(total)  # softmax
    if eps is None:
        loss = (lse - picked).mean(1)
        p.scatter_add_(-1, target, torch.full_like(picked, -1.0).unsqueeze(-1))
    else:
        e = eps.view(k, 1)
        loss = (lse - (1 - e) * picked - e * out.mean(-1)).mean(1)
        p.scatter_add_(-1, target, (e - 1).expand(k, b).unsqueeze(-1)).sub_(e.unsqueeze(-1) / out.shape[-1])
    return loss, p.div_(b)


class _SharedData:
    """The members' splits, one copy per distinct data set: `train_x` (U, N, ...) etc., and
    `index` (K,), member k's data set u_k. `rows(t)` gives each member its data set's rows of a
    (U, B, ...) tensor as (K, B, ...) (a view when all members share one data set)."""

    def __init__(self, members: list[Member]):
        keys: dict[tuple, int] = {}
        firsts = []
        for m in members:
            key = data_key(m.s, m.x.device)
            if key not in keys:
                keys[key] = len(firsts)
                firsts.append(m.x.data)
            m.x.data = firsts[keys[key]]  # members keep one copy, not K
        self.index = torch.tensor([keys[data_key(m.s, m.x.device)] for m in members], device=members[0].x.device)
        self.k, self.u = len(members), len(firsts)
        self.prepare_one = firsts[0].prepare
        self.train_x = torch.stack([d.train.x for d in firsts])
        self.train_y = torch.stack([d.train.y for d in firsts])
        # train and val side by side: each epoch's evaluation is one pass over both
        self.eval_x = torch.stack([torch.cat([d.train.x, d.val.x]) for d in firsts])
        self.eval_y = torch.stack([torch.cat([d.train.y, d.val.y]) for d in firsts])
        self.sizes = [len(firsts[0].train), len(firsts[0].val)]

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        if self.u == 1:
            return t.expand(self.k, *t.shape[1:])
        return t.index_select(0, self.index)

    def rows_of(self, perm: torch.Tensor) -> torch.Tensor:
        """Member k's rows perm[k] of its data set as rows of the data sets laid end to end."""
        return perm + self.index.view(-1, 1) * self.train_x.shape[1]

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training rows (K, B) from `rows_of`: (K, B, ...) inputs and targets (one index_select
        each over the flattened splits: a third of advanced indexing's time)."""
        idx = rows.reshape(-1)
        x = self.train_x.flatten(0, 1).index_select(0, idx)
        y = self.train_y.flatten(0, 1).index_select(0, idx)
        return x.view(*rows.shape, *x.shape[1:]), y.view(*rows.shape, *y.shape[1:])

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """`data.prepare` on (K, B, ...) stored inputs (unchanged for features, uint8 -> float
        for images), sample by sample."""
        if self.prepare_one is unchanged:
            return x
        k, b = x.shape[:2]
        out = self.prepare_one(x.reshape(k * b, *x.shape[2:]))
        return out.reshape(k, b, *out.shape[1:])

    def eval_rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [start, stop) of the evaluation splits, prepared, as (K, B, ...) inputs and
        targets: each data set prepared once, then spread to its members."""
        x = self.prepare(self.eval_x[:, start:stop])
        return self.rows(x), self.rows(self.eval_y[:, start:stop])


@dataclass
class _Snapshot:
    """The chunk at the end of one epoch, as copies: live state, best rows, optimiser moments."""

    state: StackState
    best: StackState
    moments: dict[str, torch.Tensor]  # (K, P) each, under torch's names
    step: torch.Tensor | None  # Adam's step count


@dataclass
class _Entry:
    """One member's resume state as of its last completed epoch (row k of `snap`)."""

    snap: _Snapshot
    epoch: int
    lrs: list[float]
    schedule: dict
    stopper: dict
    order: torch.Tensor  # batch-order generator state
    drop: torch.Tensor  # dropout generator state
    cpu: torch.Tensor  # CPU generator state (the global RNG of an ordinary run)
    rows: int  # history rows
    wall_time_s: float
    blocks: dict  # where the dropout masks stand (`StackedMLP.block_state`)


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy −log softmax(out)_y = logsumexp(out) − out_y over the last dim, for
    evaluation (F.cross_entropy with reduction="none"; for a few classes its log_softmax is 3-4x
    slower). Training keeps F.cross_entropy: as an autograd Function this measured slower there."""
    m = out.amax(-1)
    lse = (out - m.unsqueeze(-1)).exp_().sum(-1).log_().add_(m)
    return lse.sub_(out.gather(-1, y.unsqueeze(-1)).squeeze(-1))


@torch.no_grad()
def evaluate(model, data: _SharedData, sizes: list[int], task: str, chunk: int) -> list[list[dict[str, float]]]:
    """Per split, per member {"loss", "acc"} or {"loss", "mse"}, in eval mode: the plain objective
    (no smoothing, no penalty), as `regablate.training.evaluate.evaluate`. `data.eval_x`, `data.eval_y`
    hold the splits one after another along dim 1 (`sizes` samples each), so they share passes."""
    k = len(data.index)
    n = data.eval_y.shape[1]
    losses, hits = [], []
    for i in range(0, n, chunk):
        xb, yb = data.eval_rows(i, i + chunk)
        out = model.forward(xb, train=False)
        if task == "classification":
            losses.append(_cross_entropy(out, yb))
            hits.append(out.argmax(-1) == yb)
        else:
            losses.append(F.mse_loss(out, yb, reduction="none").reshape(k, yb.shape[1], -1).mean(2))
    loss = torch.cat(losses, 1)
    hit = torch.cat(hits, 1) if hits else None
    sums, counts, start = [], [], 0
    for size in sizes:
        sums.append(loss[:, start : start + size].sum(1))
        if hit is not None:
            counts.append(hit[:, start : start + size].sum(1))
        start += size
    sums_l = torch.stack(sums).tolist()
    counts_l = torch.stack(counts).tolist() if counts else None
    out_l = []
    for j, size in enumerate(sizes):
        if task == "classification":
            out_l.append([{"loss": s / size, "acc": c / size} for s, c in zip(sums_l[j], counts_l[j])])
        else:
            out_l.append([{"loss": s / size, "mse": s / size} for s in sums_l[j]])
    return out_l


def _step_schedule(x, val_loss: float) -> None:
    """A member's lr schedule, one epoch on. Its torch optimiser only holds the lr here (the stack
    steps its own), so torch's warning that the optimiser has not stepped yet does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        x.schedule.step(val_loss)


@torch.no_grad()
def stacked_weight_stats(w: torch.Tensor, threshold: float = 1e-3) -> dict[str, list[float]]:
    """`regablate.metrics.weight_stats.weight_stats` for every member at once: w is (K, P_w), all weight
    matrices of each member; sparsity = share of |w| < threshold, l1 = Σ|w|, l2 = √Σw²."""
    a = w.abs()
    small = (a < threshold).sum(1).double() / w.shape[1]
    l1 = a.sum(1, dtype=torch.float64)
    l2 = torch.linalg.vector_norm(w, dim=1, dtype=torch.float64)  # summed in double, as weight_stats
    return dict(zip(("sparsity", "l1", "l2"), torch.stack([small, l1, l2]).tolist()))


class VectorizedTrainer:
    """Trains one chunk of members (equal `Member.key`) into their own run dirs."""

    def __init__(self, members: list[Member]):
        self.members = members
        m0 = members[0]
        self.device, self.t = m0.x.device, m0.s.trainer
        self.task, self.metric = m0.x.data.task, m0.x.data.metric
        self.model = stack_model(members)
        self.data = _SharedData(members)
        self.sizes = self.data.sizes
        self.regs = _Regs(members, self.device)
        # batch transforms (conv members): each member's own stack, or None; probability targets
        # for every member once any member mixes (mixup, cutmix)
        self.transforms = [m.s.stack if m.s.stack.transforms_batch else None for m in members]
        if not any(self.transforms):
            self.transforms = []
        self.mixes = any(m.s.stack[key] is not None for m in members for key in ("mixup", "cutmix"))
        lr = [self._lr(m) for m in members]
        self.opt = optim.build(m0.s.optim.name, self.model.theta, lr,
                               [m.s.optim.weight_decay for m in members], m0.s.optim)
        self.regs.set_lr(lr, self.device)
        self.segments = [(p.offset, p.numel) for p in self.model.params]
        # evaluation chunks of at most EVAL_ROWS rows over all members: K·B rows of activations
        # stay in cache (per-sample results do not depend on the chunk)
        self.eval_chunk = min(self.t.eval_batch_size, max(256, EVAL_ROWS // len(members)))
        self.steps = 0
        self._writes: list[Future] = []
        # checkpoints: each member's latest resume state, members whose best.pt is not written
        self._entries: dict[int, _Entry] = {}
        self._best_dirty: frozenset[int] = frozenset()
        self._unwritten = False  # entries newer than the last.pt on disk
        every = [m.s.trainer.checkpoint_every_s for m in members if m.s.trainer.checkpoint]
        self._every_s = min(every) if every else None
        self._written = time.monotonic()
        self._chunk_epoch = 0  # the last epoch the chunk completed and kept

    @staticmethod
    def _lr(m: Member) -> float:
        return m.x.param_groups()[0]["lr"]

    # -- one step, one epoch ---------------------------------------------------------------
    def _step(self, xb: torch.Tensor, yb: torch.Tensor, drop_gens: list[torch.Generator],
              cpu_gens: list[torch.Generator]) -> torch.Tensor:
        model, regs = self.model, self.regs
        xb = self.data.prepare(xb)
        if self.transforms:
            xb, yb = self._transform(xb, yb, drop_gens, cpu_gens)
        out = model.forward(xb, True, drop_gens)
        objective, grad_out = _loss_and_grad(out, yb, self.task, regs.smoothing)
        g = model.backward(grad_out)
        with torch.no_grad():
            w = model.theta[:, : model.n_matrix]  # the weight matrices of every member
            gw = g[:, : model.n_matrix]
            if regs.l1 is not None:  # λ1 Σ|w|, gradient λ1 sign(w) (on the rows from the first
                a, b = regs.l1_rows  # member with λ1 > 0 to the last)
                objective[a:b] += regs.l1[a:b, 0] * torch.linalg.vector_norm(w[a:b], 1, dim=1)
                gw[a:b].addcmul_(w[a:b].sign(), regs.l1[a:b])
            if regs.l2 is not None:  # (λ2/2) Σw², gradient λ2 w
                a, b = regs.l2_rows
                objective[a:b] += 0.5 * regs.l2[a:b, 0] * torch.linalg.vecdot(w[a:b], w[a:b])
                gw[a:b].addcmul_(w[a:b], regs.l2[a:b])
            if regs.clip is not None:  # as clip_grad_norm_: norm of the per-parameter norms
                norms = torch.stack([torch.linalg.vector_norm(g[:, o : o + n], dim=1)
                                     for o, n in self.segments], 1)
                total = torch.linalg.vector_norm(norms, dim=1)
                coef = torch.clamp(regs.clip / (total + 1e-6), max=1.0)
                g.mul_(torch.where(torch.isinf(regs.clip), torch.ones_like(coef), coef).view(-1, 1))
            if regs.decay_factor is not None:
                a, b = regs.decay_rows
                w[a:b].mul_(regs.decay_factor[a:b])
            self.opt.step(g)
            if regs.max_norm is not None:
                self._max_norm(regs.max_norm)
        model.step_done()
        return objective

    def _transform(self, x: torch.Tensor, y: torch.Tensor, gens: list[torch.Generator],
                   cpu_gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Member k's batch transforms (augment, cutout, mixup, cutmix) on its rows x[k], y[k],
        drawing from its own generators as its ordinary run draws from the global ones (tensors
        on the device, as its dropout; mixup's and cutmix's scalars on the CPU), so its batches
        never depend on who shares its group. Targets (K, B, C) probabilities where any member
        mixes."""
        xs, ys = [], []
        for k, stack in enumerate(self.transforms):
            xk, yk = (x[k], y[k]) if stack is None else stack.transform_batch(x[k], y[k], gens[k], cpu_gens[k])
            xs.append(xk)
            ys.append(probs(yk, self.members[k].x.data.out_dim) if self.mixes else yk)
        return torch.stack(xs), torch.stack(ys)

    def _max_norm(self, c: torch.Tensor) -> None:
        """As torch.renorm(w, 2, 0, c) on every weight matrix: each unit's incoming weights to
        norm <= c_k. A matrix stored transposed, (K, in, out), has unit j in column j; one in
        torch's layout, (K, out, ...), in row j."""
        c = c.view(-1, 1, 1).double()
        theta = self.model.theta
        for p in self.model.params:
            if len(p.shape) < 2:
                continue
            w = theta[:, p.offset : p.offset + p.numel]
            w = w.view(self.model.k, *p.shape) if getattr(p, "transposed", False) \
                else w.view(self.model.k, p.shape[0], -1).transpose(1, 2)
            norm = torch.linalg.vector_norm(w, dim=1, keepdim=True, dtype=torch.float64)
            w.mul_(torch.where(norm > c, c / (norm + 1e-7), torch.ones_like(norm)).float())

    def _epoch(self, runs: list[_Run]) -> list[float]:
        """One pass over every member's training split; the mean training objectives."""
        n = self.sizes[0]
        bs = min(self.t.batch_size, n)
        perm = torch.stack([torch.randperm(n, generator=r.gen) for r in runs]).to(self.device)
        if n % bs == 1 and n > 1:  # a batch of one breaks BatchNorm: leave that sample out
            perm, n = perm[:, :-1], n - 1
        perm = self.data.rows_of(perm)
        drop_gens, cpu_gens = [r.drop_gen for r in runs], [r.cpu_gen for r in runs]
        total = torch.zeros(len(runs), device=self.device)
        for i in range(0, n, bs):
            xb, yb = self.data.batch(perm[:, i : i + bs])
            total += self._step(xb, yb, drop_gens, cpu_gens) * min(bs, n - i)
            self.steps += 1
        return [v / n for v in total.tolist()]

    # -- the whole run ---------------------------------------------------------------------
    def fit(self) -> tuple[list[dict], GroupStats]:
        """Train every member into its run dir; per-member summaries and the group's figures."""
        t0 = time.perf_counter()
        runs = self._open_all()
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="regablate-ckpt") as self._io:
                summaries = self._fit(runs)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as regablate.errors.Terminated
            error = f"interrupted by {getattr(e, 'signal_name', 'the user (Ctrl-C)')}"
            try:
                self._checkpoint(runs, final=True)  # as of the last completed epoch
            except OSError as w:  # the interrupt is still what is reported
                error += f"; the last checkpoint could not be written ({w})"
            for r in runs:
                if r.rec.summary["status"] == "running":
                    r.rec.finish("interrupted", error=error)
            raise
        except Exception as e:
            for r in runs:
                if r.rec.summary["status"] == "running":
                    r.rec.finish("failed", error=f"{type(e).__name__}: {e}")
            raise
        return summaries, GroupStats(len(runs), self.steps, time.perf_counter() - t0)

    def _open_all(self) -> list[_Run]:
        """Each member's files; the lint and the eval-determinism check once per configuration
        (members that differ only in seeds share them)."""
        findings: dict[str, list] = {}
        runs = {}
        with one_sync():  # every member's "running" summary.json made durable at once
            for k, m in enumerate(self.members):
                if m.resume is None:
                    runs[k] = self._open(m, findings)
        # a continuing member's Recorder rewrites metrics.csv and then appends to the file it
        # opens: that rewrite must be in place before, not deferred to the end of a one_sync
        for k, m in enumerate(self.members):
            if m.resume is not None:
                runs[k] = self._open(m, findings)
        return [runs[k] for k in range(len(self.members))]

    def _open(self, m: Member, findings: dict[str, list]) -> _Run:
        """Member m's files and bookkeeping (lint and self-check once per `group_id`)."""
        key = group_id(m.cfg)
        if key not in findings:
            findings[key] = lint(m.s, m.x.model, m.x.param_groups(), m.x.data.in_shape)
            if findings[key] and m.s.trainer.progress != "none":
                print(format_findings(findings[key]), file=sys.stderr, flush=True)
            check_eval_determinism(m.x.model, m.x.data)
        if m.resume is not None and m.s.trainer.progress != "none":
            print(f"resumed from epoch {m.resume['epoch']}: {m.run_dir}", flush=True)
        rec = open_run(m.cfg, m.x, m.run_dir, resume=m.resume, findings=findings[key])
        es = m.s.trainer.early_stopping
        stopper = EarlyStopper(es.patience, es.min_delta, m.x.data.higher_is_better and es.monitor == "metric")
        cpu_gen = torch.Generator()  # an ordinary run's global CPU RNG, right after init
        cpu_gen.set_state(m.cpu_rng)
        # ordinary runs draw dropout from the freshly seeded CUDA RNG, or the CPU one
        drop_gen = torch.Generator(self.device).manual_seed(m.s.seed) if self.device.type == "cuda" else cpu_gen
        run = _Run(m, rec, stopper, torch.Generator().manual_seed(m.s.seed), drop_gen, cpu_gen)
        if m.resume is not None:
            _continue_run(run, m.resume)
        return run

    def _fit(self, runs: list[_Run]) -> list[dict]:
        model, metric = self.model, self.metric
        # each member's best epoch, its state where it stopped, and the chunk's epoch
        best, frozen, epoch = self._start(runs)
        while epoch < self.t.max_epochs and not all(r.done for r in runs):
            epoch += 1
            t0 = time.perf_counter()
            lrs = [self._lr(r.m) for r in runs]
            for r in runs:  # schedules of structural rates (DropBlock's ramp) on each member's
                r.m.s.stack.on_epoch(r.m.x.model, epoch, r.m.s.trainer.max_epochs)  # own blocks
            self.opt.set_lr(lrs)
            self.regs.set_lr(lrs, self.device)
            objective = self._epoch(runs)
            tr, va = evaluate(model, self.data, self.sizes, self.task, self.eval_chunk)
            elapsed = round(time.perf_counter() - t0, 4)
            stats = stacked_weight_stats(model.theta[:, : model.n_matrix].detach())
            improved, stopped = [], []
            for k, r in enumerate(runs):
                if r.done:
                    continue
                if not all(math.isfinite(v) for v in (objective[k], tr[k]["loss"], va[k]["loss"])):
                    r.status, r.done, r.epochs_run = "diverged", True, epoch - 1
                    continue
                r.epochs_run = epoch
                row = {"epoch": epoch, "lr": lrs[k], "train_loss": tr[k]["loss"],
                       f"train_{metric}": tr[k][metric], "val_loss": va[k]["loss"],
                       f"val_{metric}": va[k][metric], "gap": gap(tr[k], va[k], metric),
                       "train_objective": objective[k], "epoch_time_s": elapsed,
                       **{f"weights/{name}": v[k] for name, v in stats.items()}}
                every = r.m.s.eval.histogram_every
                if r.m.s.trainer.tensorboard and every and (epoch % every == 0 or epoch == 1):
                    self.model.export_member(k, r.m.x.model)
                    r.rec.histograms(named_weight_matrices(r.m.x.model), epoch)
                r.history.append(row)
                monitor_metric = r.m.s.trainer.early_stopping.monitor == "metric"
                if r.stopper.update(va[k][metric] if monitor_metric else va[k]["loss"], epoch):
                    improved.append(k)
                    r.has_best = True
                r.rec.epoch(row, best=r.history[r.stopper.best_epoch - 1])  # as the ordinary trainer
                _step_schedule(r.m.x, va[k]["loss"])
                if r.stopper.stop:
                    r.done = True
                    stopped.append(k)
            if improved:
                best.copy_rows(improved, model.state())
            if stopped:
                frozen.copy_rows(stopped, model.state())
            self._keep(runs, epoch, best, improved)
            if self._every_s is not None and time.monotonic() - self._written >= self._every_s:
                self._checkpoint(runs, final=False)
        self._wait_for_writes()
        self._checkpoint(runs, final=True)
        return self._finish(runs, best, frozen)

    @torch.no_grad()
    def _start(self, runs: list[_Run]) -> tuple[StackState, StackState, int]:
        """(best, frozen, epoch) before the chunk's first epoch here: fresh copies of the initial
        state and epoch 0; or, for members that continue (trainer.resume=auto), each one's row from
        its last.pt: θ and BatchNorm statistics (live, and best.pt's as its best row; where it
        stopped is its live state), optimiser moments and step, its dropout masks, and the entry
        a later checkpoint writes for it while it is done. `_open` did the rest."""
        model = self.model
        resumed = [(k, r.m.resume) for k, r in enumerate(runs) if r.m.resume is not None]
        if not resumed:
            return model.state().clone(), model.state().clone(), 0
        epoch = max(state["stacked"]["epoch"] for _, state in resumed)
        for k, state in resumed:  # best rows first, through the live ones
            if state["best"] is not None:
                runs[k].m.x.model.load_state_dict(state["best"])
                model.load_member(k, runs[k].m.x.model)
        best = model.state().clone()
        for k, state in resumed:
            runs[k].m.x.model.load_state_dict(state["model"])
            model.load_member(k, runs[k].m.x.model)
        # the chunk's shared state (BatchNorm's and the optimiser's step counts, where the
        # dropout masks stand) is that of a member at the chunk's epoch, one not done if any
        live_k, live = min(resumed, key=lambda e: (runs[e[0]].done, e[1]["epoch"] != epoch))
        tracked = _batches_tracked(live["model"])
        if tracked is not None:
            model.num_batches_tracked = tracked
        frozen = model.state().clone()
        for k, state in resumed:  # each member's own count in its best and stopping rows
            for target, weights in ((best, state["best"]), (frozen, state["model"])):
                if weights is not None and _batches_tracked(weights) is not None:
                    target.batches[k] = _batches_tracked(weights)
        self._load_moments(runs, resumed)
        step = _stored_step(live)
        if getattr(self.opt, "step_t", None) is not None and step is not None:
            self.opt.step_t.copy_(step)
        own = {k: stored_blocks(state) for k, state in resumed}
        model.restore_blocks({layer: (pos, rows, width, {k: own[k][layer][3] for k in own
                                                         if layer in own[k] and own[k][layer][3] is not None})
                              for layer, (pos, rows, width, _) in own[live_k].items()},
                             [r.drop_gen for r in runs])
        # each member's entry as stored, which checkpoints write while it is done
        state_now, best_now = model.state().clone(), best.clone()
        moments = {name: t.clone() for name, t in self.opt.moments().items()}
        for k, state in resumed:
            step = _stored_step(state)
            self._entries[k] = _Entry(
                _Snapshot(state_now, best_now, moments, step), state["epoch"],
                [g["lr"] for g in state["optimizer"]["param_groups"]], state["schedule"],
                dict(state["stopper"]), state["rng"]["order"], state["stacked"]["drop"], state["rng"]["torch"],
                len(state["history"]), float(state.get("wall_time_s", 0.0)),
                {layer: (pos, rows, width, {} if drawn is None else {k: drawn})
                 for layer, (pos, rows, width, drawn) in own[k].items()})
        self._chunk_epoch = epoch
        return best, frozen, epoch

    def _load_moments(self, runs: list[_Run], resumed: list[tuple[int, dict]]) -> None:
        """Each continuing member's optimiser moments (torch's per-parameter state) into its rows."""
        names = {name for _, state in resumed for per in state["optimizer"]["state"].values() for name in per}
        if "momentum_buffer" in names and getattr(self.opt, "buf", False) is None:  # SGD before a step
            self.opt.buf = torch.zeros_like(self.opt.theta)
        moments = self.opt.moments()
        for k, state in resumed:
            m, stored = runs[k].m, state["optimizer"]["state"]
            params = [p for g in m.x.groups for p in g["params"]]
            for name, t in moments.items():
                rows = self.model.unflatten(t[k], m.x.model)
                for i, p in enumerate(params):
                    if name in stored.get(i, {}):
                        rows[p].copy_(stored[i][name])

    def _finish(self, runs: list[_Run], best: StackState, frozen: StackState) -> list[dict]:
        """Each member's final state (best epoch, or where it stopped) goes into its own module,
        which is evaluated exactly as the ordinary trainer evaluates its model."""
        final = self.model.state().clone()
        restore = [k for k, r in enumerate(runs) if r.m.s.trainer.restore_best or r.status == "diverged"]
        early = [k for k, r in enumerate(runs) if k not in restore and r.done]
        if restore:
            final.copy_rows(restore, best)
        if early:
            final.copy_rows(early, frozen)
        with one_sync():  # every member's summary.json (and TensorBoard session end) at once
            return [self._finish_member(k, r, final, restore) for k, r in enumerate(runs)]

    def _finish_member(self, k: int, r: _Run, final: StackState, restore: list[int]) -> dict:
        """Member k's closing evaluation and its summary."""
        max_epochs = r.m.s.trainer.max_epochs
        error = f"non-finite loss at epoch {r.epochs_run + 1}" if r.status == "diverged" else None
        if not r.has_best:  # diverged before any finite epoch
            return r.rec.finish(r.status, best_epoch=None, epochs_run=r.epochs_run, stopped_early=False,
                                train=None, val=None, test=None, gap=None, error=error)
        self.model.export_member(k, r.m.x.model, final)
        fields = closing_fields(r.m.x, k in restore)
        return r.rec.finish(
            r.status, final_weights=named_weight_matrices(r.m.x.model),
            best_epoch=r.stopper.best_epoch, epochs_run=r.epochs_run,
            metrics_epoch=r.stopper.best_epoch if k in restore else r.epochs_run,
            stopped_early=r.stopper.stop and r.epochs_run < max_epochs, error=error, **fields)

    # -- checkpoints by time -----------------------------------------------------------------
    def _keep(self, runs: list[_Run], epoch: int, best: StackState, improved: list[int]) -> None:
        """After a completed epoch: copy what a checkpoint written now would hold. Members that
        are done keep the entry of their last epoch. One assignment each at the end, so an
        interrupt in between leaves the previous epoch's copy whole."""
        now = [k for k, r in enumerate(runs) if r.epochs_run == epoch]
        if not now and not improved:
            return
        snap = _Snapshot(self.model.state().clone(), best.clone(),
                         {name: t.clone() for name, t in self.opt.moments().items()},
                         None if getattr(self.opt, "step_t", None) is None else self.opt.step_t.clone())
        entries = dict(self._entries)
        blocks = self.model.block_state()
        for k in now:
            r = runs[k]
            entries[k] = _Entry(snap, epoch, [g["lr"] for g in r.m.x.param_groups()],
                                checkpoint.copy_state(r.m.x.schedule.state_dict()), dict(r.stopper.__dict__),
                                r.gen.get_state(), r.drop_gen.get_state(), r.cpu_gen.get_state(), len(r.history),
                                r.rec.elapsed(), blocks)
        if now:
            self._chunk_epoch = epoch
        dirty = self._best_dirty | frozenset(improved)
        self._entries, self._best_dirty, self._unwritten = entries, dirty, self._unwritten or bool(now)

    def _checkpoint(self, runs: list[_Run], final: bool) -> None:
        """Write what `_keep` holds: metrics.csv lines, best.pt of each member whose best changed,
        then one last.pt file for every member that keeps checkpoints. Timed writes go to a background thread
        (the previous one done first); the final one (end of the run, or an interrupt) writes
        every member's best.pt and is waited for."""
        self._wait_for_writes()
        for r in runs:  # metrics.csv holds every epoch a checkpoint holds
            r.rec.flush()
        entries, dirty = self._entries, self._best_dirty
        resumable = {k for k, r in enumerate(runs) if r.m.s.trainer.checkpoint and k in entries}
        best_files = {runs[k].rec.dir / "checkpoints" / "best.pt": self._best_state(k, runs[k], entries[k].snap.best)
                      for k in sorted(dirty) if k in entries and (final or k in resumable)}
        last = {runs[k].rec.dir: self._last_state(k, runs[k], entries[k])
                for k in sorted(resumable)} if self._unwritten else {}
        self._unwritten = False
        self._best_dirty = frozenset(k for k in dirty if k not in entries or not (final or k in resumable))
        self._written = time.monotonic()

        def write() -> None:  # best.pt first: a last.pt never points past the best.pt on disk
            with one_sync():
                for path, state in best_files.items():
                    checkpoint.save(path, state)
            if last:
                checkpoint.save_shared(last)

        if final:
            write()
        else:
            self._writes.append(self._io.submit(write))

    def _wait_for_writes(self) -> None:
        writes, self._writes = self._writes, []
        for w in writes:
            w.result()

    def _best_state(self, k: int, r: _Run, best: StackState) -> dict:
        """Member k's best-epoch state_dict (best.pt's contents), as copies."""
        self.model.export_member(k, r.m.x.model, best)
        return {name: t.clone() for name, t in r.m.x.model.state_dict().items()}

    def _last_state(self, k: int, r: _Run, e: _Entry) -> dict:
        """Member k's last.pt as the ordinary trainer writes it, so `trainer.resume=auto` continues
        it: its module's and optimiser's state dicts from row k of the snapshot."""
        m = r.m
        self.model.export_member(k, m.x.model, e.snap.state)
        shaped = {name: self.model.unflatten(t[k], m.x.model) for name, t in e.snap.moments.items()}
        per_param = {}
        for group in m.x.groups:
            for p in group["params"]:  # each its own step tensor: a fused step adds to each
                per_param[p] = {name: t[p].clone() for name, t in shaped.items()}
                if e.snap.step is not None:
                    per_param[p]["step"] = e.snap.step.detach().cpu().clone()
        # python's and numpy's states packed as `checkpoint.rng_state` packs them
        rng = {"python": checkpoint.pack_python_rng(random.Random(m.s.seed).getstate()),
               "numpy": checkpoint.pack_numpy_rng(np.random.RandomState(m.s.seed % 2**32).get_state()),
               "torch": e.cpu, "order": e.order}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
            if self.device.type == "cuda":
                rng["cuda"][self.device.index or 0] = e.drop
        # what only a stacked chunk needs to go on (the ordinary trainer ignores it): the chunk's
        # epoch (a member behind it and not stopped diverged), the member's dropout generator,
        # and where its dropout masks stand
        stacked = {"epoch": self._chunk_epoch, "drop": e.drop.clone(),
                   "blocks": {str(layer): {"pos": pos, "rows": rows, "width": width,
                                           **({"state": drawn[k]} if k in drawn else {})}
                              for layer, (pos, rows, width, drawn) in e.blocks.items()}}
        return {"epoch": e.epoch, "model": {n: t.clone() for n, t in m.x.model.state_dict().items()},
                "optimizer": self._optimizer_state(m, e.lrs, per_param), "schedule": e.schedule,
                "stopper": e.stopper, "rng": rng, "history": checkpoint.pack_history(r.history[: e.rows]),
                "wall_time_s": e.wall_time_s, "stacked": stacked}

    @staticmethod
    def _optimizer_state(m: Member, lrs: list[float], per_param: dict) -> dict:
        """Member m's optimiser state_dict at group lrs `lrs` holding `per_param`: through its torch
        optimiser where a schedule built one (its groups carry the schedule's keys), else by hand."""
        if "optimizer" not in m.x.__dict__:
            return state_dict_of(m.s.optim, m.x.groups, lrs, per_param)
        opt = m.x.optimizer
        live = [group["lr"] for group in opt.param_groups]
        opt.state.clear()
        opt.state.update(per_param)
        for group, lr in zip(opt.param_groups, lrs):  # the lr as of the entry's epoch
            group["lr"] = lr
        state = copy.deepcopy(opt.state_dict())
        for group, lr in zip(opt.param_groups, live):  # training goes on with the live lr
            group["lr"] = lr
        return state
