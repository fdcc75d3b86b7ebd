"""The vectorised training loop: K members of one group as one stacked model, read top to bottom.

Per epoch: each member's batch order from its own generator (torch.Generator().manual_seed(seed),
one randperm per epoch, as the ordinary trainer) -> for each batch slice: stacked forward
(`stacked.StackedMLP`, or `functional.StackedModule` for conv models; per-member structural
regularisers and BatchNorm) -> per-member loss ℓ_k (label smoothing ε_k) -> gradients of
Σ_k ℓ_k (member k's gradient is ∂ℓ_k/∂θ_k: the members share no parameter) -> penalties'
gradients (λ1_k sign w, λ2_k w) -> per-member clipping g_k ← g_k min(1, c_k/‖g_k‖) ->
decoupled decay w ← w(1 − lr_k λ_k) -> optimiser step -> max-norm. Then train and val are
evaluated for all members at once (eval mode, no grad), and each member's own run
(`training.session.RunSession`: recorder, early stopper, history) and LR schedule take its numbers: a member that stops (or diverges) is frozen
there — its rows, best epoch and final state are its own — while the others go on (a stopped
member's rows are still computed, and ignored, until the whole chunk is done).
Each member's own LR schedule is the ordinary trainer's (`Experiment.schedule`): it steps on
the member's val loss, on a torch optimiser that only holds the lr, which the stacked optimiser
reads; a member without a schedule builds no torch optimiser (its lr is the configured one).
At the end each member's final state (best epoch, or where it stopped) is
written into its own module and evaluated exactly as the ordinary trainer evaluates its model.

Members with the same data share one copy of their split tensors (`shared_data`: U distinct
data sets, member k reads data set u_k); batches are gathered as x[u_k, perm_k] and put through
`data.prepare`. Losses, gradients, evaluation and the regularisers' strengths are per member
columns (`losses`). Checkpoints go by time (`trainer.checkpoint_every_s`), as of the last
completed epoch: all members' last.pt states in one file, best.pt per member (`chunk_checkpoints`).

Each member's last.pt is the ordinary trainer's resume state (so `train` continues it alone) plus,
under "stacked", what the chunk needs to go on exactly as if never stopped: the chunk's epoch, the
member's dropout generator (on a GPU) and where its dropout masks stand (`StackedMLP.block_state`).
Under trainer.resume=auto the launcher stacks the members of an interrupted chunk again
(`regablate.vectorized.resume`): `ChunkCheckpoints.start` puts every member's θ, BatchNorm
statistics, best weights, optimiser moments and step back in its row, its session its stopper and
history, and `member_run` its schedule and generators; members that had stopped (or diverged: behind the chunk's epoch) stay done.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from regablate.metrics.weight_stats import named_weight_matrices
from regablate.regularisers.mixing import probs
from regablate.rundir.atomic import one_sync
from regablate.training.evaluate import autocast, gap
from regablate.vectorized import optim
from regablate.vectorized.budget import EVAL_ROWS, PER_MEMBER_EVAL_ROWS
from regablate.vectorized.chunk_checkpoints import ChunkCheckpoints
from regablate.vectorized.grouping import Member, stack_model
from regablate.vectorized.losses import Strengths, evaluate, loss_and_grad, stacked_weight_stats
from regablate.vectorized.member_run import MemberRun, open_runs
from regablate.vectorized.shared_data import SharedData
from regablate.vectorized.state import StackState


@dataclass
class GroupStats:
    members: int
    steps: int
    seconds: float  # training loop, evaluation and files

    @property
    def per_member_step_s(self) -> float:
        return self.seconds / max(1, self.members * self.steps)


def _step_schedule(x, val_loss: float) -> None:
    """A member's lr schedule, one epoch on. Its torch optimiser only holds the lr here (the stack
    steps its own), so torch's warning that the optimiser has not stepped yet does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        x.schedule.step(val_loss)


class VectorizedTrainer:
    """Trains one chunk of members (equal `Member.key`) into their own run dirs."""

    def __init__(self, members: list[Member]):
        self.members = members
        m0 = members[0]
        self.device, self.t = m0.x.device, m0.s.trainer
        self.amp = self.t.amp  # conv members only (`grouping.not_stackable`); bf16 on CUDA (`autocast`)
        self.task, self.metric = m0.x.data.task, m0.x.data.metric
        self.model = stack_model(members)
        self.data = SharedData(members)
        self.sizes = self.data.sizes
        self.regs = Strengths(members, self.device)
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
        self.eval_chunk = min(self.t.eval_batch_size, max(PER_MEMBER_EVAL_ROWS, EVAL_ROWS // len(members)))
        self.steps = 0
        self.checkpoints = ChunkCheckpoints(self.model, self.opt, self.device, members)

    @staticmethod
    def _lr(m: Member) -> float:
        return m.x.param_groups()[0]["lr"]

    # -- one step, one epoch ---------------------------------------------------------------
    def _step(self, xb: torch.Tensor, yb: torch.Tensor, drop_gens: list[torch.Generator],
              cpu_gens: list[torch.Generator]) -> torch.Tensor:
        model, regs = self.model, self.regs
        xb = self.data.prepare(xb, self.data.index)
        if self.transforms:
            xb, yb = self._transform(xb, yb, drop_gens, cpu_gens)
        with autocast(self.device, self.amp):  # bf16 conv members (`trainer.amp`), as `loop.train_epoch`
            out = model.forward(xb, True, drop_gens)
        objective, grad_out = loss_and_grad(out.float(), yb, self.task, regs.smoothing)
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

    def _epoch(self, runs: list[MemberRun]) -> list[float]:
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
        runs = open_runs(self.members, self.device)
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="regablate-ckpt") as self.checkpoints.io:
                summaries = self._fit(runs)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as regablate.errors.Terminated
            note = ""
            try:
                self.checkpoints.write(runs, final=True)  # as of the last completed epoch
            except OSError as w:  # the interrupt is still what is reported
                note = f"; the last checkpoint could not be written ({w})"
            self._abort(runs, e, note)
            raise
        except Exception as e:
            self._abort(runs, e)
            raise
        return summaries, GroupStats(len(runs), self.steps, time.perf_counter() - t0)

    @staticmethod
    def _abort(runs: list[MemberRun], e: BaseException, note: str = "") -> None:
        """Every member still running ends as interrupted or failed (`RunSession.abort`)."""
        for r in runs:
            if r.session.running:
                r.session.abort(e, note)

    def _fit(self, runs: list[MemberRun]) -> list[dict]:
        # each member's best epoch, its state where it stopped, and the chunk's epoch
        best, frozen, epoch = self.checkpoints.start(runs)
        while epoch < self.t.max_epochs and not all(r.session.done for r in runs):
            epoch += 1
            improved, stopped = self._run_epoch(runs, epoch)
            if improved:
                best.copy_rows(improved, self.model.state())
            if stopped:
                frozen.copy_rows(stopped, self.model.state())
            self.checkpoints.keep(runs, epoch, best, improved)
            if self.checkpoints.timer.due():
                self.checkpoints.write(runs, final=False)
        self.checkpoints.wait()
        self.checkpoints.write(runs, final=True)
        return self._finish(runs, best, frozen)

    def _run_epoch(self, runs: list[MemberRun], epoch: int) -> tuple[list[int], list[int]]:
        """Train and evaluate every member one epoch, and give each member that is not done its
        numbers (`RunSession.epoch`, or `diverged`) and its schedule's step: the members whose best
        improved, and those that stopped early."""
        model, metric = self.model, self.metric
        t0 = time.perf_counter()
        lrs = [self._lr(r.m) for r in runs]
        for r in runs:  # schedules of structural rates (DropBlock's ramp) on each member's
            r.m.s.stack.on_epoch(r.m.x.model, epoch, r.m.s.trainer.max_epochs)  # own blocks
        self.opt.set_lr(lrs)
        self.regs.set_lr(lrs, self.device)
        objective = self._epoch(runs)
        tr, va = evaluate(model, self.data, self.sizes, self.task, self.eval_chunk, self.amp)
        elapsed = round(time.perf_counter() - t0, 4)
        stats = stacked_weight_stats(model.theta[:, : model.n_matrix].detach())
        improved, stopped = [], []
        for k, r in enumerate(runs):
            session = r.session
            if session.done:
                continue
            if not all(math.isfinite(v) for v in (objective[k], tr[k]["loss"], va[k]["loss"])):
                session.diverged(epoch)
                continue
            row = {"epoch": epoch, "lr": lrs[k], "train_loss": tr[k]["loss"],
                   f"train_{metric}": tr[k][metric], "val_loss": va[k]["loss"],
                   f"val_{metric}": va[k][metric], "gap": gap(tr[k], va[k], metric),
                   "train_objective": objective[k], "epoch_time_s": elapsed,
                   **{f"weights/{name}": v[k] for name, v in stats.items()}}
            if session.epoch(row, weights=functools.partial(self._member_weights, k, r)):
                improved.append(k)
            _step_schedule(r.m.x, va[k]["loss"])
            if session.stopper.stop:
                stopped.append(k)
        return improved, stopped

    def _member_weights(self, k: int, r: MemberRun) -> list:
        """Member k's weight matrices as they stand, through its own module (for histograms)."""
        self.model.export_member(k, r.m.x.model)
        return named_weight_matrices(r.m.x.model)

    def _finish(self, runs: list[MemberRun], best: StackState, frozen: StackState) -> list[dict]:
        """Each member's final state (best epoch, or where it stopped) goes into its own module,
        which is evaluated exactly as the ordinary trainer evaluates its model (`RunSession.finish`)."""
        final = self.model.state().clone()
        restore = [k for k, r in enumerate(runs) if r.session.restores]
        early = [k for k, r in enumerate(runs) if k not in restore and r.session.done]
        if restore:
            final.copy_rows(restore, best)
        if early:
            final.copy_rows(early, frozen)
        with one_sync():  # every member's summary.json (and TensorBoard session end) at once
            return [self._finish_member(k, r, final) for k, r in enumerate(runs)]

    def _finish_member(self, k: int, r: MemberRun, final: StackState) -> dict:
        if r.session.has_best:  # else it diverged before any finite epoch: nothing to evaluate
            self.model.export_member(k, r.m.x.model, final)
        return r.session.finish(r.m.x)
