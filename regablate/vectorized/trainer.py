"""The vectorised training loop: K members of one group as one stacked model, read top to bottom.

Per epoch: each member's batch order from its own generator (torch.Generator().manual_seed(seed),
one randperm per epoch, as the ordinary trainer) -> for each batch slice: stacked forward
(per-member dropout and BatchNorm) -> per-member loss ℓ_k (label smoothing ε_k) -> gradients of
Σ_k ℓ_k (member k's gradient is ∂ℓ_k/∂θ_k: the members share no parameter) -> penalties'
gradients (λ1_k sign w, λ2_k w) -> per-member clipping g_k ← g_k min(1, c_k/‖g_k‖) ->
decoupled decay w ← w(1 − lr_k λ_k) -> optimiser step -> max-norm. Then train and val are
evaluated for all members at once (eval mode, no grad), and each member's own Recorder,
EarlyStopper and LR schedule take its numbers: a member that stops (or diverges) is frozen
there — its rows, best epoch and final state are its own — while the others go on (a stopped
member's rows are still computed, and ignored, until the whole chunk is done).
Each member's own LR schedule and optimiser object are the ordinary trainer's (built by
`build_experiment`): the schedule steps on the member's val loss, the stacked optimiser reads
the lr from it. At the end each member's final state (best epoch, or where it stopped) is
written into its own module and evaluated exactly as the ordinary trainer evaluates its model.
"""

from __future__ import annotations

import copy
import math
import pickle
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from regablate import checkpoint
from regablate.evaluate import gap
from regablate.recorder import Recorder
from regablate.selfcheck import check_eval_determinism
from regablate.train import EarlyStopper, closing_fields, open_run
from regablate.vectorized import optim
from regablate.vectorized.grouping import Member
from regablate.vectorized.stacked import StackedMLP, StackState
from regablate.weight_stats import named_weight_matrices


@dataclass
class _Run:
    """One member's bookkeeping: its files, early stopping, history and how it ended."""

    m: Member
    rec: Recorder
    stopper: EarlyStopper
    gen: torch.Generator  # batch order
    drop_gen: torch.Generator  # dropout masks
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


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1)


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


def _train_loss(out: torch.Tensor, y: torch.Tensor, task: str, eps: torch.Tensor | None) -> torch.Tensor:
    """Per-member mean loss (K,): cross-entropy with smoothing ε_k, i.e.
    (1−ε_k)·NLL + ε_k·mean_b(−Σ_c log p)/C, or the mean squared error."""
    k, b = out.shape[:2]
    if task != "classification":
        return F.mse_loss(out, y, reduction="none").reshape(k, -1).mean(1)
    if eps is None:
        return F.cross_entropy(out.reshape(k * b, -1), y.reshape(-1), reduction="none").view(k, b).mean(1)
    logp = F.log_softmax(out, -1)
    nll = F.nll_loss(logp.reshape(k * b, -1), y.reshape(-1), reduction="none").view(k, b).mean(1)
    smooth = -logp.sum(-1).mean(1) / out.shape[-1]
    return (1 - eps[:, 0]) * nll + eps[:, 0] * smooth


@torch.no_grad()
def evaluate(model: StackedMLP, x: torch.Tensor, y: torch.Tensor, sizes: list[int], task: str,
             chunk: int) -> list[list[dict[str, float]]]:
    """Per split, per member {"loss", "acc"} or {"loss", "mse"}, in eval mode: the plain objective
    (no smoothing, no penalty), as `regablate.evaluate.evaluate`. `x`, `y` hold the splits one
    after another along dim 1 (`sizes` samples each), so they share forward passes."""
    k, n = y.shape[:2]
    losses, hits = [], []
    for i in range(0, n, chunk):
        out = model.forward(x[:, i : i + chunk], train=False)
        yb = y[:, i : i + chunk]
        if task == "classification":
            losses.append(F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1),
                                          reduction="none").view(k, -1))
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


@torch.no_grad()
def stacked_weight_stats(w: torch.Tensor, threshold: float = 1e-3) -> dict[str, list[float]]:
    """`regablate.weight_stats.weight_stats` for every member at once: w is (K, P_w), all weight
    matrices of each member; sparsity = share of |w| < threshold, l1 = Σ|w|, l2 = √Σw²."""
    small = (w.abs() < threshold).sum(1, dtype=torch.float64) / w.shape[1]
    l1 = w.abs().sum(1, dtype=torch.float64)
    l2 = w.double().pow(2).sum(1).sqrt()
    return dict(zip(("sparsity", "l1", "l2"), torch.stack([small, l1, l2]).tolist()))


class VectorizedTrainer:
    """Trains one chunk of members (equal `Member.key`) into their own run dirs."""

    def __init__(self, members: list[Member]):
        self.members = members
        m0 = members[0]
        self.device, self.t, self.data = m0.x.device, m0.s.trainer, m0.x.data
        self.task, self.metric = self.data.task, self.data.metric
        k = len(members)
        slots = sorted(set().union(*(m.drops for m in members)))
        rates = [[m.drops.get(j, 0.0) for j in slots] for m in members]
        self.model = StackedMLP(m0.layers, rates, slots, k, self.device)
        for i, m in enumerate(members):
            self.model.load_member(i, m.x.model)
        self.splits = {name: (torch.stack([getattr(m.x.data, name).x for m in members]),
                              torch.stack([getattr(m.x.data, name).y for m in members]))
                       for name in ("train", "val")}
        self.sizes = [self.splits[name][1].shape[1] for name in ("train", "val")]
        # train and val side by side: each epoch's evaluation is one pass over both
        self.eval_xy = [torch.cat([self.splits[name][i] for name in ("train", "val")], 1) for i in (0, 1)]
        self.regs = _Regs(members, self.device)
        lr = [self._lr(m) for m in members]
        self.opt = optim.build(m0.s.optim.name, self.model.theta, lr,
                               [m.s.optim.weight_decay for m in members], m0.s.optim)
        self.regs.set_lr(lr, self.device)
        self.segments = [(p.offset, p.numel) for p in self.model.params]
        self.steps = 0
        self._writes: list[Future] = []

    @staticmethod
    def _lr(m: Member) -> float:
        return m.x.optimizer.param_groups[0]["lr"]

    # -- one step, one epoch ---------------------------------------------------------------
    def _step(self, xb: torch.Tensor, yb: torch.Tensor, drop_gens: list[torch.Generator]) -> torch.Tensor:
        model, regs = self.model, self.regs
        loss = _train_loss(model.forward(xb, True, drop_gens), yb, self.task, regs.smoothing)
        g = model.flat_grad(torch.autograd.grad(loss.sum(), model.leaves))
        with torch.no_grad():
            objective = loss.detach()
            w = model.theta[:, : model.n_matrix]  # the weight matrices of every member
            gw = g[:, : model.n_matrix]
            if regs.l1 is not None:  # λ1 Σ|w|, gradient λ1 sign(w)
                objective = objective + regs.l1[:, 0] * w.abs().sum(1)
                gw.addcmul_(w.sign(), regs.l1)
            if regs.l2 is not None:  # (λ2/2) Σw², gradient λ2 w
                objective = objective + 0.5 * regs.l2[:, 0] * (w * w).sum(1)
                gw.addcmul_(w, regs.l2)
            if regs.clip is not None:  # as clip_grad_norm_: norm of the per-parameter norms
                norms = torch.stack([torch.linalg.vector_norm(g[:, o : o + n], dim=1)
                                     for o, n in self.segments], 1)
                total = torch.linalg.vector_norm(norms, dim=1)
                coef = torch.clamp(regs.clip / (total + 1e-6), max=1.0)
                g.mul_(torch.where(torch.isinf(regs.clip), torch.ones_like(coef), coef).view(-1, 1))
            if regs.decay_factor is not None:
                w.mul_(regs.decay_factor)
            self.opt.step(g)
            if regs.max_norm is not None:  # as torch.renorm(w, 2, 0, c): rows to norm <= c
                c = regs.max_norm.view(-1, 1, 1).double()
                for wm in model.matrices:  # (K, in, out): unit j's incoming weights are wm[:, :, j]
                    norm = torch.linalg.vector_norm(wm, dim=1, keepdim=True, dtype=torch.float64)
                    wm.mul_(torch.where(norm > c, c / (norm + 1e-7), torch.ones_like(norm)).float())
        model.step_done()
        return objective

    def _epoch(self, runs: list[_Run]) -> list[float]:
        """One pass over every member's training split; the mean training objectives."""
        x, y = self.splits["train"]
        n = y.shape[1]
        bs = min(self.t.batch_size, n)
        perm = torch.stack([torch.randperm(n, generator=r.gen) for r in runs]).to(self.device)
        if n % bs == 1 and n > 1:  # a batch of one breaks BatchNorm: leave that sample out
            perm, n = perm[:, :-1], n - 1
        rows = torch.arange(len(runs), device=self.device).view(-1, 1)
        xp, yp = x[rows, perm], y[rows, perm]
        drop_gens = [r.drop_gen for r in runs]
        total = torch.zeros(len(runs), device=self.device)
        for i in range(0, n, bs):
            total += self._step(xp[:, i : i + bs], yp[:, i : i + bs], drop_gens) * min(bs, n - i)
            self.steps += 1
        return [v / n for v in total.tolist()]

    # -- the whole run ---------------------------------------------------------------------
    def fit(self) -> tuple[list[dict], GroupStats]:
        """Train every member into its run dir; per-member summaries and the group's figures."""
        t0 = time.perf_counter()
        runs = [self._open(m) for m in self.members]
        try:
            with ThreadPoolExecutor(max_workers=8, thread_name_prefix="regablate-ckpt") as self._io:
                summaries = self._fit(runs)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as regablate.errors.Terminated
            for r in runs:
                if r.rec.summary["status"] == "running":
                    r.rec.finish("interrupted",
                                 error=f"interrupted by {getattr(e, 'signal_name', 'the user (Ctrl-C)')}")
            raise
        except Exception as e:
            for r in runs:
                if r.rec.summary["status"] == "running":
                    r.rec.finish("failed", error=f"{type(e).__name__}: {e}")
            raise
        return summaries, GroupStats(len(runs), self.steps, time.perf_counter() - t0)

    def _open(self, m: Member) -> _Run:
        t = m.s.trainer
        es = t.early_stopping
        monitor_metric = es.monitor == "metric"
        rec = open_run(m.cfg, m.x, m.run_dir)
        check_eval_determinism(m.x.model, m.x.data)
        stopper = EarlyStopper(es.patience, es.min_delta, self.data.higher_is_better and monitor_metric)
        if self.device.type == "cuda":  # ordinary runs draw dropout from the freshly seeded CUDA RNG
            drop_gen = torch.Generator(self.device).manual_seed(m.s.seed)
        else:
            drop_gen = torch.Generator()
            drop_gen.set_state(m.cpu_rng)
        return _Run(m, rec, stopper, torch.Generator().manual_seed(m.s.seed), drop_gen)

    def _fit(self, runs: list[_Run]) -> list[dict]:
        model, metric = self.model, self.metric
        best = model.state().clone()  # each member's best epoch
        frozen = model.state().clone()  # each member's state where it stopped
        epoch = 0
        while epoch < self.t.max_epochs and not all(r.done for r in runs):
            epoch += 1
            t0 = time.perf_counter()
            lrs = [self._lr(r.m) for r in runs]
            self.opt.set_lr(lrs)
            self.regs.set_lr(lrs, self.device)
            objective = self._epoch(runs)
            tr, va = evaluate(model, *self.eval_xy, self.sizes, self.task, self.t.eval_batch_size)
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
                       "objective": objective[k], "epoch_time_s": elapsed,
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
                r.m.x.schedule.step(va[k]["loss"])
                if r.stopper.stop:
                    r.done = True
                    stopped.append(k)
            if improved:
                best.copy_rows(improved, model.state())
            if stopped:
                frozen.copy_rows(stopped, model.state())
            self._wait_for_writes()  # the previous epoch's files are down before these replace them
            for k in improved:
                if runs[k].m.s.trainer.checkpoint:
                    self._write(runs[k].rec.dir / "checkpoints" / "best.pt", self._best_state(k, runs[k], best))
            for k, r in enumerate(runs):
                if r.m.s.trainer.checkpoint and r.epochs_run == epoch:
                    self._save_last(k, r, epoch)
        self._wait_for_writes()
        return self._finish(runs, best, frozen)

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
        summaries = []
        for k, r in enumerate(runs):
            max_epochs = r.m.s.trainer.max_epochs
            error = f"non-finite loss at epoch {r.epochs_run + 1}" if r.status == "diverged" else None
            if not r.has_best:  # diverged before any finite epoch
                summaries.append(r.rec.finish(r.status, best_epoch=None, epochs_run=r.epochs_run,
                                              stopped_early=False, train=None, val=None, test=None,
                                              gap=None, error=error))
                continue
            if not r.m.s.trainer.checkpoint:  # written once, at the end
                checkpoint.save(r.rec.dir / "checkpoints" / "best.pt", self._best_state(k, r, best))
            self.model.export_member(k, r.m.x.model, final)
            fields = closing_fields(r.m.x, k in restore)
            summaries.append(r.rec.finish(
                r.status, final_weights=named_weight_matrices(r.m.x.model),
                best_epoch=r.stopper.best_epoch, epochs_run=r.epochs_run,
                metrics_epoch=r.stopper.best_epoch if k in restore else r.epochs_run,
                stopped_early=r.stopper.stop and r.epochs_run < max_epochs, error=error, **fields))
        return summaries

    # -- checkpoints in the ordinary trainer's format ----------------------------------------
    # Each file's contents are copied when it is queued, then written (with its fsync) by a
    # thread pool while training goes on; one epoch's files are down before the next epoch's
    # replace them, and all of them before the summaries are written.
    def _write(self, path: Path, obj: dict) -> None:
        self._writes.append(self._io.submit(checkpoint.save, path, obj))

    def _wait_for_writes(self) -> None:
        writes, self._writes = self._writes, []
        for w in writes:
            w.result()

    def _best_state(self, k: int, r: _Run, best: StackState) -> dict:
        """Member k's best-epoch state_dict (best.pt's contents), as copies."""
        self.model.export_member(k, r.m.x.model, best)
        return {name: t.clone() for name, t in r.m.x.model.state_dict().items()}

    def _save_last(self, k: int, r: _Run, epoch: int) -> None:
        """last.pt as the ordinary trainer writes it, so `trainer.resume=auto` continues it."""
        m = r.m
        self.model.export_member(k, m.x.model)
        opt = m.x.optimizer
        opt.state.clear()
        rows = self.opt.state_rows(k)
        shaped = {name: self.model.unflatten(row, m.x.model) for name, row in rows.items()}
        for group in opt.param_groups:
            for p in group["params"]:
                opt.state[p] = {name: t[p].clone() for name, t in shaped.items()}
                if hasattr(self.opt, "step_t"):
                    opt.state[p]["step"] = self.opt.step_t.detach().cpu().clone()
        # python's and numpy's states packed as `checkpoint.rng_state` packs them
        rng = {"python": pickle.dumps(random.Random(m.s.seed).getstate()),
               "numpy": pickle.dumps(np.random.RandomState(m.s.seed % 2**32).get_state()),
               "torch": r.drop_gen.get_state() if self.device.type == "cpu" else m.cpu_rng,
               "order": r.gen.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
            if self.device.type == "cuda":
                rng["cuda"][self.device.index or 0] = r.drop_gen.get_state()
        self._write(r.rec.dir / "checkpoints" / "last.pt", {
            "epoch": epoch, "model": {n: t.clone() for n, t in m.x.model.state_dict().items()},
            "optimizer": copy.deepcopy(opt.state_dict()),
            "schedule": copy.deepcopy(m.x.schedule.state_dict()), "stopper": dict(r.stopper.__dict__),
            "rng": rng, "history": list(r.history), "wall_time_s": r.rec.elapsed()})
