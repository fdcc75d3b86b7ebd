"""The training loop, readable top to bottom: `train(cfg, run_dir)` -> summary dict.

for epoch: batches (slices of a per-epoch permutation) -> stack.transform_batch ->
loss + stack.penalty -> backward -> stack.after_backward -> decoupled decay -> step ->
stack.after_step; then evaluate train and val (eval mode, no grad, full splits), record,
early stopping and the LR schedule. At the end the best epoch's weights are restored and
train/val/test are evaluated once more for the summary.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from regablate.checks.lint import format_findings, lint
from regablate.checks.selfcheck import check_eval_determinism
from regablate.config.settings import load_settings
from regablate.metrics.uncertainty import mc_dropout
from regablate.metrics.weight_stats import named_weight_matrices, weight_stats
from regablate.rundir.recorder import Recorder
from regablate.tensorboard.hparams import run_hparams
from regablate.training import checkpoint
from regablate.training.evaluate import autocast, evaluate, gap
from regablate.training.experiment import Experiment, build_experiment, group_id
from regablate.training.optim import decay_groups, decoupled_decay_
from regablate.training.progress import SILENT, make_progress


class EarlyStopper:
    """Tracks the best validation score; `stop` after `patience` epochs without improvement."""

    def __init__(self, patience: int, min_delta: float, higher_is_better: bool):
        self.patience, self.min_delta, self.sign = patience, min_delta, -1.0 if higher_is_better else 1.0
        self.best, self.best_epoch, self.bad_epochs = math.inf, 0, 0

    def update(self, score: float, epoch: int) -> bool:
        """Record `score` (lower is better after the sign); True if it is a new best."""
        s = self.sign * score
        if s < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = s, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience


def train_epoch(x: Experiment, gen: torch.Generator, decay: list[dict], task=None) -> float:
    """One pass over the training split; returns the mean training objective. `task`: a
    `regablate.training.progress` task advanced once per batch."""
    data, model, opt, stack = x.data, x.model, x.optimizer, x.s.stack
    n = len(data.train)
    bs = min(x.s.trainer.batch_size, n)
    perm = torch.randperm(n, generator=gen).to(x.device)
    if n % bs == 1 and n > 1:  # a batch of one breaks BatchNorm: leave that sample out
        perm, n = perm[:-1], n - 1
    amp = x.s.trainer.amp and x.device.type == "cuda"
    model.train()
    losses = []
    for i in range(0, n, bs):
        idx = perm[i : i + bs]
        inputs, targets = data.prepare(data.train.x[idx]), data.train.y[idx]
        if stack.transforms_batch:
            inputs, targets = stack.transform_batch(inputs, targets)
        if amp:
            with autocast(x.device, True):
                loss = x.loss(model(inputs).float(), targets)
        else:
            loss = x.loss(model(inputs), targets)
        if stack.has_penalty:
            loss = loss + stack.penalty(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        stack.after_backward(model)
        if decay:
            decoupled_decay_(decay)
        opt.step()
        stack.after_step(model)
        losses.append(loss.detach())
        if task is not None:
            task.advance()
    sizes = torch.full((len(losses),), float(bs), device=x.device)
    sizes[-1] = n - bs * (len(losses) - 1)
    return (torch.stack(losses) * sizes).sum().item() / n


def _summary_head(cfg: dict, x: Experiment) -> dict:
    s, data = x.s, x.data
    return {
        "task": data.task, "metric": data.metric, "higher_is_better": data.higher_is_better,
        "seed": s.seed, "data_seed": s.data_seed, "dataset": s.dataset.name,
        "model": s.model.name, "reg": s.stack.names, "group": group_id(cfg),
        "device": str(x.device), "threads": torch.get_num_threads(), "n_params": x.n_params,
    }


def open_run(cfg: dict, x: Experiment, run_dir: Path, resume: dict | None = None,
             findings: list | None = None) -> Recorder:
    """Lint the experiment (findings printed and kept as the summary's warnings) and start its
    run files: summary.json says "running" from here on. `findings`: the lint of an identical
    configuration, given by a caller that starts many (it is then neither redone nor printed)."""
    talk = findings is None
    if findings is None:
        findings = lint(x.s, x.model, x.optimizer.param_groups, x.data.in_shape)
    if findings and talk and x.s.trainer.progress != "none":
        print(format_findings(findings), file=sys.stderr, flush=True)
    head = {**_summary_head(cfg, x), "warnings": [f.as_dict() for f in findings]}
    return Recorder(run_dir, head, x.data.metric, run_hparams(cfg), x.s.trainer.tensorboard, resume=resume)


def closing_fields(x: Experiment, restored: bool, progress=SILENT) -> dict:
    """The closing evaluation of `x.model` as it stands (the best epoch's weights when
    `restored`): train/val/test on the full splits with calibration on val and test, the gap,
    reliability tables, weight statistics and MC dropout when asked for. `progress` shows
    each split's evaluation when it takes long."""
    t, data = x.s.trainer, x.data
    if restored:
        check_eval_determinism(x.model, data)
    bins = x.s.eval.calibration_bins
    final = {}
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        with progress.task(f"closing evaluation {name}", total=len(split), unit="inputs") as task:
            final[name] = evaluate(x.model, data, split, t.eval_batch_size, t.amp,
                                   bins if name != "train" else 0, progress=task)
    extras = {"reliability": {name: final[name].pop("reliability") for name in ("val", "test")
                              if "reliability" in final[name]} or None,
              "weights": weight_stats(x.model)}
    if x.s.eval.mc_samples:
        extras["mc"] = mc_dropout(x.model, data, x.s.eval.mc_samples, t.eval_batch_size)
    return {**final, "gap": gap(final["train"], final["val"], data.metric), **extras}


def _stored_summary(run_dir: Path) -> dict | None:
    """run_dir's summary.json as plain data, None if there is none; one that is not a regular
    file inside the run dir, too large or not sane JSON is refused in one line (the run dir
    may come from someone else: reading it never blocks, expands or runs anything)."""
    from regablate.rundir.claim import RunRefused
    from regablate.rundir.untrusted import RefusedValue, load_json_safe, read_bounded

    path = run_dir / "summary.json"
    try:
        summary = load_json_safe(read_bounded(path, within=run_dir))
    except FileNotFoundError:
        return None
    except (OSError, RefusedValue) as e:
        raise RunRefused(run_dir, f"cannot be resumed: {path} is damaged ({e})",
                         "move the run dir away, or choose another hydra.run.dir / hydra.sweep.dir") from None
    if not isinstance(summary, dict):
        raise RunRefused(run_dir, f"cannot be resumed: {path} is damaged (not a JSON object)",
                         "move the run dir away, or choose another hydra.run.dir / hydra.sweep.dir")
    return summary


def _completed(run_dir: Path) -> dict | None:
    """The summary of a run that already ended (for trainer.resume=auto), else None."""
    summary = _stored_summary(run_dir)
    return summary if summary is not None and summary.get("status") in ("completed", "diverged") else None


def train(cfg: Mapping, run_dir: Path | str) -> dict:
    """Train one configuration into `run_dir`; returns the final summary.

    `cfg` is the resolved config as plain containers. Invalid settings raise ConfigError before
    any file is written. Errors after that leave summary.json with status "failed".
    With `trainer.resume=auto` a finished run is returned as it is and an unfinished one
    continues from `checkpoints/last.pt`.
    """
    cfg = dict(cfg)
    s = load_settings(cfg)
    run_dir = Path(run_dir)
    state = None
    talk = s.trainer.progress != "none"
    if s.trainer.resume == "auto":
        _check_same_configuration(cfg, run_dir)
        done = _completed(run_dir)
        if done is not None:
            if talk:
                print(f"already completed: {run_dir}", flush=True)
            return done
        state = _last_checkpoint(run_dir)
    x = build_experiment(s)
    if state is not None:
        state = _checked(state, x, run_dir)
        if talk:
            print(f"resumed from epoch {state['epoch']}: {run_dir}", flush=True)
    rec = open_run(cfg, x, run_dir, resume=state)
    try:
        check_eval_determinism(x.model, x.data)
        return _fit(x, rec, state)
    except KeyboardInterrupt as e:
        rec.finish("interrupted", error=f"interrupted by {getattr(e, 'signal_name', 'the user (Ctrl-C)')}")
        raise
    except Exception as e:
        rec.finish("failed", error=f"{type(e).__name__}: {e}")
        raise


def _check_same_configuration(cfg: dict, run_dir: Path) -> None:
    """A run continues (or is skipped as done) only under the configuration and seeds that made
    it: the same group, seed and data_seed (a seed of another run would go on from its epochs,
    on another split, or take its result as its own)."""
    from regablate.rundir.claim import RunRefused

    made = _stored_summary(run_dir)
    if made is None:
        return
    ways_on = ("resume it with the settings of its .hydra/overrides.yaml, or choose another "
               "hydra.run.dir / hydra.sweep.dir")
    if made.get("group") is not None and made["group"] != group_id(cfg):
        raise RunRefused(run_dir, f"holds a run of another configuration (group {made['group']}, this "
                                  f"one is {group_id(cfg)})", ways_on)
    keys = [key for key in ("seed", "data_seed") if key in made]
    if any(made[key] != cfg.get(key) for key in keys):
        theirs = ", ".join(f"{key}={made[key]}" for key in keys)
        ours = ", ".join(f"{key}={cfg.get(key)}" for key in keys)
        raise RunRefused(run_dir, f"holds a run of other seeds ({theirs}; this one has {ours})", ways_on)


def _damaged(run_dir: Path, path: Path, why: str) -> Exception:
    """The one-line refusal of a checkpoint that cannot be used (nothing in the run dir is touched)."""
    from regablate.rundir.claim import RunRefused

    return RunRefused(run_dir, f"cannot be resumed: {path} is damaged ({why})",
                      "move it away to train the run again from epoch 1, or choose another "
                      "hydra.run.dir / hydra.sweep.dir")


def _last_checkpoint(run_dir: Path) -> dict | None:
    """`checkpoints/last.pt` as stored, None if there is none; one that cannot be read as plain
    data is refused."""
    try:
        return checkpoint.load_last(run_dir)
    except checkpoint.DamagedCheckpoint as e:
        raise _damaged(run_dir, run_dir / "checkpoints" / "last.pt", str(e)) from None


def _checked(state: dict, x: Experiment, run_dir: Path) -> dict:
    """The resume state checked whole against the freshly built experiment (`checkpoint.
    check_resume`), its best.pt against the model, before any file is written: a damaged one
    is refused, never half used. Returns the state with its history unpacked and, under
    `best`, best.pt's weights (None before a best epoch)."""
    last, best = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    fresh = _stopper(x).__dict__
    try:
        history = checkpoint.check_resume(state, x.model, x.optimizer, x.schedule, fresh,
                                          x.s.trainer.max_epochs)
    except checkpoint.DamagedCheckpoint as e:
        raise _damaged(run_dir, last, str(e)) from None
    weights = None
    if state["stopper"]["best_epoch"] > 0:
        try:
            weights = checkpoint.load(best)
            checkpoint.check_weights(weights, x.model, "best.pt")
        except checkpoint.DamagedCheckpoint as e:
            raise _damaged(run_dir, best, str(e)) from None
    return {**state, "history": history, "best": weights}


def _stopper(x: Experiment) -> EarlyStopper:
    es = x.s.trainer.early_stopping
    return EarlyStopper(es.patience, es.min_delta, x.data.higher_is_better and es.monitor == "metric")


class Checkpointer:
    """`best.pt` and `last.pt` by time: each epoch's resume state is kept in memory and written
    when `every_s` seconds have passed since the last write (0: every epoch), at the end and on
    an interrupt, so a checkpoint is always as of a completed epoch. best.pt goes first: a
    crash between the two leaves a last.pt older than best.pt, whose epochs the resumed run
    recomputes bit for bit."""

    def __init__(self, rec: Recorder, every_s: float, resumable: bool):
        self.rec, self.dir, self.every_s, self.resumable = rec, rec.dir / "checkpoints", every_s, resumable
        self.last: Callable[[], dict] | None = None  # the last completed epoch's state, not yet written
        self.best: dict | None = None  # best weights not yet written
        self.written = time.monotonic()

    def epoch(self, state: Callable[[], Callable[[], dict]], best: dict | None) -> None:
        """After a completed epoch: `state()` takes its resume state (copies) and returns what
        packs it, `best` is the best weights if this epoch improved them."""
        if best is not None:
            self.best = best
        if self.resumable:
            self.last = state()
            if time.monotonic() - self.written >= self.every_s:
                self.write()

    def write(self) -> None:
        """Whatever is pending, best.pt first; metrics.csv is flushed first, so it holds every
        epoch that last.pt holds."""
        self.rec.flush()
        if self.best is not None:
            checkpoint.save(self.dir / "best.pt", self.best)
            self.best = None
        if self.last is not None:
            checkpoint.save(self.dir / "last.pt", self.last())
            self.last = None
        self.written = time.monotonic()


def _fit(x: Experiment, rec: Recorder, state: dict | None) -> dict:
    t, data, model, opt = x.s.trainer, x.data, x.model, x.optimizer
    schedule = x.schedule  # built with the optimiser, before its first step (as torch expects)
    metric = data.metric
    monitor_metric = t.early_stopping.monitor == "metric"
    stopper = _stopper(x)
    gen = torch.Generator().manual_seed(x.s.seed)
    decay = decay_groups(opt)
    saver = Checkpointer(rec, t.checkpoint_every_s, t.checkpoint)
    best_state, status, epoch, history = None, "completed", 0, []
    if state is not None:  # resume: every piece of state the next epoch depends on
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        stopper.__dict__.update(state["stopper"])
        checkpoint.set_rng_state(state["rng"], gen)
        epoch, history, best_state = state["epoch"], state["history"], state["best"]

    def resume_state() -> Callable[[], dict]:
        """This epoch's resume state: copies taken now, packed only if it is written."""
        state = {"epoch": epoch, "model": checkpoint.copy_state(model.state_dict()),
                 "optimizer": checkpoint.copy_state(opt.state_dict()),
                 "schedule": checkpoint.copy_state(schedule.state_dict()),
                 "stopper": dict(stopper.__dict__), "wall_time_s": rec.elapsed()}
        rng, rows = checkpoint.rng_snapshot(gen), len(history)  # rows are appended, never changed
        return lambda: {**state, "rng": checkpoint.pack_rng(rng),
                        "history": checkpoint.pack_history(history[:rows])}

    with make_progress(t.progress, t.max_epochs, metric) as progress:
        try:
            while epoch < t.max_epochs and not stopper.stop:
                epoch += 1
                t0 = time.perf_counter()
                lr = opt.param_groups[0]["lr"]
                x.s.stack.on_epoch(model, epoch, t.max_epochs)
                n = len(data.train)
                batches = math.ceil(n / min(t.batch_size, n)) - (n % t.batch_size == 1 and n > t.batch_size)
                with progress.task(f"train epoch {epoch}", total=batches, unit="batches") as task:
                    objective = train_epoch(x, gen, decay, task)
                with progress.task(f"evaluate epoch {epoch}", total=n + len(data.val), unit="inputs") as task:
                    tr = evaluate(model, data, data.train, t.eval_batch_size, t.amp, progress=task)
                    va = evaluate(model, data, data.val, t.eval_batch_size, t.amp, progress=task)
                if not all(math.isfinite(v) for v in (objective, tr["loss"], va["loss"])):
                    status = "diverged"
                    break
                row = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], f"train_{metric}": tr[metric],
                       "val_loss": va["loss"], f"val_{metric}": va[metric], "gap": gap(tr, va, metric),
                       "train_objective": objective, "epoch_time_s": round(time.perf_counter() - t0, 4),
                       **{f"weights/{k}": v for k, v in weight_stats(model).items()}}
                every = x.s.eval.histogram_every
                if every and (epoch % every == 0 or epoch == 1):
                    rec.histograms(named_weight_matrices(model), epoch)
                history.append(row)
                improved = stopper.update(va[metric] if monitor_metric else va["loss"], epoch)
                if improved:
                    best_state = checkpoint.copy_state(model.state_dict())
                rec.epoch(row, best=history[stopper.best_epoch - 1])
                schedule.step(va["loss"])
                saver.epoch(resume_state, best_state if improved else None)
                progress.epoch(row)  # shown once its checkpoint, if due, is down
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the last completed epoch
            saver.write()
            raise
        saver.write()
        epochs_run = epoch - 1 if status == "diverged" else epoch
        error = f"non-finite loss at epoch {epoch}" if status == "diverged" else None
        if best_state is None:  # diverged before any finite epoch
            return rec.finish(status, best_epoch=None, epochs_run=epochs_run, stopped_early=False,
                              train=None, val=None, test=None, gap=None, error=error)
        restore = t.restore_best or status == "diverged"
        if restore:
            model.load_state_dict(best_state)
        return rec.finish(
            status, final_weights=named_weight_matrices(model), best_epoch=stopper.best_epoch, epochs_run=epochs_run,
            metrics_epoch=stopper.best_epoch if restore else epochs_run,
            stopped_early=stopper.stop and epochs_run < t.max_epochs,
            **closing_fields(x, restore, progress), error=error,
        )
