"""A stacked chunk's checkpoints by time, and the chunk put back from them.

After each epoch the chunk's state is copied in memory (θ, BatchNorm statistics, best rows,
optimiser moments and every member's small state: `keep`), and written when the period has
passed since the last write (the shortest among members that keep checkpoints), at the end and
on an interrupt (`write`) — always as of the last completed epoch. All members' last.pt states
go in one file (`checkpoint.save_shared`); best.pt stays a plain state_dict per member, written
when it changed. Each member's last.pt is the ordinary trainer's (`session.resume_state`) plus,
under "stacked", what the chunk needs to go on exactly as if never stopped.

`start` reads them back (trainer.resume=auto): every member's θ, BatchNorm statistics, best
weights, optimiser moments and step into its row.
"""

from __future__ import annotations

import copy
import random
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np
import torch

from regablate.rundir.atomic import one_sync
from regablate.training import checkpoint
from regablate.training.optim import state_dict_of
from regablate.training.session import CheckpointTimer, resume_state
from regablate.vectorized.grouping import Member
from regablate.vectorized.member_run import MemberRun
from regablate.vectorized.state import StackState


@dataclass
class Snapshot:
    """The chunk at the end of one epoch, as copies: live state, best rows, optimiser moments."""

    state: StackState
    best: StackState
    moments: dict[str, torch.Tensor]  # (K, P) each, under torch's names
    step: torch.Tensor | None  # Adam's step count


@dataclass
class Entry:
    """One member's resume state as of its last completed epoch (row k of `snap`)."""

    snap: Snapshot
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


class ChunkCheckpoints:
    """Each member's latest resume state (`Entry`), the members whose best.pt is not written, and
    the writes: timed ones on `io` (a one-thread executor, the previous write done first), the
    final one in place."""

    def __init__(self, model, opt, device: torch.device, members: list[Member]):
        self.model, self.opt, self.device = model, opt, device
        self.entries: dict[int, Entry] = {}
        self.best_dirty: frozenset[int] = frozenset()
        self.unwritten = False  # entries newer than the last.pt on disk
        every = [m.s.trainer.checkpoint_every_s for m in members if m.s.trainer.checkpoint]
        self.timer = CheckpointTimer(min(every) if every else None)
        self.chunk_epoch = 0  # the last epoch the chunk completed and kept
        self.io: Executor | None = None
        self._writes: list[Future] = []

    # -- written -------------------------------------------------------------------------------
    def keep(self, runs: list[MemberRun], epoch: int, best: StackState, improved: list[int]) -> None:
        """After a completed epoch: copy what a checkpoint written now would hold. Members that
        are done keep the entry of their last epoch. One assignment each at the end, so an
        interrupt in between leaves the previous epoch's copy whole."""
        now = [k for k, r in enumerate(runs) if r.session.epochs_run == epoch]
        if not now and not improved:
            return
        snap = Snapshot(self.model.state().clone(), best.clone(),
                        {name: t.clone() for name, t in self.opt.moments().items()},
                        None if getattr(self.opt, "step_t", None) is None else self.opt.step_t.clone())
        entries = dict(self.entries)
        blocks = self.model.block_state()
        for k in now:
            r, session = runs[k], runs[k].session
            entries[k] = Entry(snap, epoch, [g["lr"] for g in r.m.x.param_groups()],
                               checkpoint.copy_state(r.m.x.schedule.state_dict()), dict(session.stopper.__dict__),
                               r.gen.get_state(), r.drop_gen.get_state(), r.cpu_gen.get_state(),
                               len(session.history), session.rec.elapsed(), blocks)
        if now:
            self.chunk_epoch = epoch
        dirty = self.best_dirty | frozenset(improved)
        self.entries, self.best_dirty, self.unwritten = entries, dirty, self.unwritten or bool(now)

    def write(self, runs: list[MemberRun], final: bool) -> None:
        """Write what `keep` holds: metrics.csv lines, best.pt of each member whose best changed,
        then one last.pt file for every member that keeps checkpoints. Timed writes go to `io`
        (the previous one done first); the final one (end of the run, or an interrupt) writes
        every member's best.pt and is waited for."""
        self.wait()
        for r in runs:  # metrics.csv holds every epoch a checkpoint holds
            r.session.rec.flush()
        entries, dirty = self.entries, self.best_dirty
        resumable = {k for k, r in enumerate(runs) if r.m.s.trainer.checkpoint and k in entries}
        best_files = {runs[k].session.rec.dir / "checkpoints" / "best.pt":
                      self._best_state(k, runs[k], entries[k].snap.best)
                      for k in sorted(dirty) if k in entries and (final or k in resumable)}
        last = {runs[k].session.rec.dir: self._last_state(k, runs[k], entries[k])
                for k in sorted(resumable)} if self.unwritten else {}
        self.unwritten = False
        self.best_dirty = frozenset(k for k in dirty if k not in entries or not (final or k in resumable))
        self.timer.wrote()

        def files() -> None:  # best.pt first: a last.pt never points past the best.pt on disk
            with one_sync():
                for path, state in best_files.items():
                    checkpoint.save(path, state)
            if last:
                checkpoint.save_shared(last)

        if final:
            files()
        else:
            self._writes.append(self.io.submit(files))

    def wait(self) -> None:
        """The timed writes under way, done (their errors raised)."""
        writes, self._writes = self._writes, []
        for w in writes:
            w.result()

    def _best_state(self, k: int, r: MemberRun, best: StackState) -> dict:
        """Member k's best-epoch state_dict (best.pt's contents), as copies."""
        self.model.export_member(k, r.m.x.model, best)
        return {name: t.clone() for name, t in r.m.x.model.state_dict().items()}

    def _last_state(self, k: int, r: MemberRun, e: Entry) -> dict:
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
        stacked = {"epoch": self.chunk_epoch, "drop": e.drop.clone(),
                   "blocks": {str(layer): {"pos": pos, "rows": rows, "width": width,
                                           **({"state": drawn[k]} if k in drawn else {})}
                              for layer, (pos, rows, width, drawn) in e.blocks.items()}}
        return resume_state(e.epoch, {n: t.clone() for n, t in m.x.model.state_dict().items()},
                            _optimizer_state(m, e.lrs, per_param), e.schedule, e.stopper, e.wall_time_s,
                            rng, r.session.history[: e.rows], stacked=stacked)

    # -- read back -----------------------------------------------------------------------------
    @torch.no_grad()
    def start(self, runs: list[MemberRun]) -> tuple[StackState, StackState, int]:
        """(best, frozen, epoch) before the chunk's first epoch here: fresh copies of the initial
        state and epoch 0; or, for members that continue (trainer.resume=auto), each one's row from
        its last.pt: θ and BatchNorm statistics (live, and best.pt's as its best row; where it
        stopped is its live state), optimiser moments and step, its dropout masks, and the entry
        a later checkpoint writes for it while it is done. Its session and `member_run` did the rest."""
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
        live_k, live = min(resumed, key=lambda e: (runs[e[0]].session.done, e[1]["epoch"] != epoch))
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
            self.entries[k] = Entry(
                Snapshot(state_now, best_now, moments, step), state["epoch"],
                [g["lr"] for g in state["optimizer"]["param_groups"]], state["schedule"],
                dict(state["stopper"]), state["rng"]["order"], state["stacked"]["drop"], state["rng"]["torch"],
                len(state["history"]), float(state.get("wall_time_s", 0.0)),
                {layer: (pos, rows, width, {} if drawn is None else {k: drawn})
                 for layer, (pos, rows, width, drawn) in own[k].items()})
        self.chunk_epoch = epoch
        return best, frozen, epoch

    def _load_moments(self, runs: list[MemberRun], resumed: list[tuple[int, dict]]) -> None:
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
