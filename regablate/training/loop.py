"""The ordinary training loop, readable top to bottom: `train(cfg, run_dir)` -> summary dict.

for epoch: batches (slices of a per-epoch permutation) -> stack.transform_batch ->
loss + stack.penalty -> backward -> stack.after_backward -> decoupled decay -> step ->
stack.after_step; then evaluate train and val (eval mode, no grad, full splits), the LR
schedule, and the run's bookkeeping (`session.RunSession`: record, early stopping, timed
checkpoints). At the end the best epoch's weights are restored and train/val/test are
evaluated once more for the summary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from regablate.checks.selfcheck import check_eval_determinism
from regablate.metrics.weight_stats import named_weight_matrices, weight_stats
from regablate.training import checkpoint, resuming
from regablate.training.evaluate import amp_on, autocast, evaluate, gap
from regablate.training.experiment import Experiment, build_experiment
from regablate.training.optim import decay_groups, decoupled_decay_
from regablate.training.progress import make_progress
from regablate.training.session import EarlyStopper, RunSession, closing_fields
from regablate.training.settings import load_settings

__all__ = ["EarlyStopper", "closing_fields", "train", "train_epoch"]


def train_epoch(x: Experiment, gen: torch.Generator, decay: list[dict], task=None) -> float:
    """One pass over the training split; returns the mean training objective. `task`: a
    `regablate.training.progress` task advanced once per batch."""
    data, model, opt, stack = x.data, x.model, x.optimizer, x.s.stack
    n = len(data.train)
    bs = min(x.s.trainer.batch_size, n)
    perm = torch.randperm(n, generator=gen).to(x.device)
    if n % bs == 1 and n > 1:  # a batch of one breaks BatchNorm: leave that sample out
        perm, n = perm[:-1], n - 1
    amp = amp_on(x.device, x.s.trainer.amp)
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
        resuming.check_same_configuration(cfg, run_dir)
        done = resuming.completed(run_dir)
        if done is not None:
            if talk:
                print(f"already {done['status']}: {run_dir}", flush=True)  # completed or diverged
            return done
        state = resuming.last_checkpoint(run_dir)
    x = build_experiment(s)
    if state is not None:
        state = resuming.checked(state, x, run_dir)
        if talk:
            print(f"resumed from epoch {state['epoch']}: {run_dir}", flush=True)
    session = RunSession.open(cfg, x, run_dir, resume=state)
    try:
        check_eval_determinism(x.model, x.data)
        return _fit(x, session, state)
    except (KeyboardInterrupt, Exception) as e:
        session.abort(e)
        raise


def _resume_engine(x: Experiment, gen: torch.Generator, state: dict) -> None:
    """The engine's part of a checked resume state: model, optimiser, schedule and every RNG."""
    x.model.load_state_dict(state["model"])
    x.optimizer.load_state_dict(state["optimizer"])
    x.schedule.load_state_dict(state["schedule"])
    checkpoint.set_rng_state(state["rng"], gen)


def _epoch_row(x: Experiment, epoch: int, gen: torch.Generator, decay: list[dict], progress) -> dict | None:
    """Train one epoch and evaluate train and val: its metrics.csv row, None if a loss is not finite."""
    t, data, model = x.s.trainer, x.data, x.model
    t0 = time.perf_counter()
    lr = x.optimizer.param_groups[0]["lr"]
    x.s.stack.on_epoch(model, epoch, t.max_epochs)
    n, metric = len(data.train), data.metric
    batches = math.ceil(n / min(t.batch_size, n)) - (n % t.batch_size == 1 and n > t.batch_size)
    with progress.task(f"train epoch {epoch}", total=batches, unit="batches") as task:
        objective = train_epoch(x, gen, decay, task)
    with progress.task(f"evaluate epoch {epoch}", total=n + len(data.val), unit="inputs") as task:
        tr = evaluate(model, data, data.train, t.eval_batch_size, t.amp, progress=task)
        va = evaluate(model, data, data.val, t.eval_batch_size, t.amp, progress=task)
    if not all(math.isfinite(v) for v in (objective, tr["loss"], va["loss"])):
        return None
    return {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], f"train_{metric}": tr[metric],
            "val_loss": va["loss"], f"val_{metric}": va[metric], "gap": gap(tr, va, metric),
            "train_objective": objective, "epoch_time_s": round(time.perf_counter() - t0, 4),
            **{f"weights/{k}": v for k, v in weight_stats(model).items()}}


def _fit(x: Experiment, session: RunSession, state: dict | None) -> dict:
    """Epochs until max_epochs, early stopping or a divergence (each epoch recorded and kept for
    its checkpoint), then the closing evaluation of the best (or last) weights."""
    t, model = x.s.trainer, x.model
    schedule = x.schedule  # built with the optimiser, before its first step (as torch expects)
    gen = torch.Generator().manual_seed(x.s.seed)
    decay = decay_groups(x.optimizer)
    if state is not None:
        _resume_engine(x, gen, state)
    epoch = session.epochs_run
    with make_progress(t.progress, t.max_epochs, x.data.metric) as progress:
        try:
            while epoch < t.max_epochs and not session.done:
                epoch += 1
                row = _epoch_row(x, epoch, gen, decay, progress)
                if row is None:
                    session.diverged(epoch)
                    break
                schedule.step(row["val_loss"])
                improved = session.epoch(row, weights=lambda: named_weight_matrices(model))
                session.keep(x, gen, improved)
                progress.epoch(row)  # shown once its checkpoint, if due, is down
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the last completed epoch
            session.checkpoint()
            raise
        session.checkpoint()
        if session.has_best and session.restores:
            model.load_state_dict(session.best_weights)
        return session.finish(x, progress)
