"""One run's skeleton around its training, the same for the ordinary and the stacked trainer.

A `RunSession` opens the run (lint, summary.json "running"), records each epoch (history row,
early stopping on the monitored val number, metrics.csv and TensorBoard), keeps best.pt and
last.pt by time, continues from a checked resume state, and ends the run: finished (closing
evaluation of the best or last weights), diverged (non-finite loss at epoch e: e − 1 epochs
run) or aborted (interrupted, failed). The trainers supply the engine: the epoch's training,
its evaluation and weight statistics, and the weights it ends with.

last.pt has one layout (`resume_state`), written by both trainers and read back by
`RunSession` (epoch, stopper, history, best) and the engines (model, optimizer, schedule, rng).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from regablate.checks.lint import format_findings, lint
from regablate.checks.selfcheck import check_eval_determinism
from regablate.metrics.uncertainty import mc_dropout
from regablate.metrics.weight_stats import named_weight_matrices, weight_stats
from regablate.tensorboard.hparams import run_hparams
from regablate.training import checkpoint
from regablate.training.evaluate import evaluate, gap
from regablate.training.experiment import Experiment, group_id
from regablate.training.progress import SILENT
from regablate.training.recorder import Recorder


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


def stopper_for(x: Experiment) -> EarlyStopper:
    """A fresh early stopper for `x`: higher is better only when it monitors a higher-is-better metric."""
    es = x.s.trainer.early_stopping
    return EarlyStopper(es.patience, es.min_delta, x.data.higher_is_better and es.monitor == "metric")


def resume_state(epoch: int, model: dict, optimizer: dict, schedule: dict, stopper: dict, wall_time_s: float,
                 rng: dict, history: list[dict], **extras) -> dict:
    """last.pt: everything the next epoch depends on, as of a completed epoch (`rng` packed,
    `history` its rows 1..epoch). `extras`: what only one trainer reads (the stacked chunk's
    "stacked"). `checkpoint.check_resume` checks it whole; `RunSession` and the engines read it."""
    return {"epoch": epoch, "model": model, "optimizer": optimizer, "schedule": schedule, "stopper": stopper,
            "wall_time_s": wall_time_s, "rng": rng, "history": checkpoint.pack_history(history), **extras}


class CheckpointTimer:
    """Checkpoints by time: `due` once `every_s` seconds have passed since the last write (0: every
    epoch; None: never, only at the end and on an interrupt)."""

    def __init__(self, every_s: float | None):
        self.every_s, self.written = every_s, time.monotonic()

    def due(self) -> bool:
        return self.every_s is not None and time.monotonic() - self.written >= self.every_s

    def wrote(self) -> None:
        self.written = time.monotonic()


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
        findings = lint(x.s, x.model, x.optimizer.param_groups, x.data.in_shape, len(x.data.train))
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


class RunSession:
    """One run around its training: its Recorder, early stopper, history and ending. With a
    resume state (checked: `regablate.training.resuming.checked`) it goes on from its epoch,
    stopper, history and best weights.

    The ordinary trainer also keeps its checkpoints here (`keep`, `checkpoint`): each epoch's
    resume state is copied in memory and written when the timer is due, at the end and on an
    interrupt, so a checkpoint is always as of a completed epoch. best.pt goes first: a crash
    between the two leaves a last.pt older than best.pt, whose epochs the resumed run recomputes
    bit for bit. (A stacked chunk writes all its members' last.pt as one file: it keeps them itself.)"""

    def __init__(self, rec: Recorder, x: Experiment, resume: dict | None = None):
        self.rec, self.t, self.metric = rec, x.s.trainer, x.data.metric
        self.histogram_every = x.s.eval.histogram_every
        self.stopper = stopper_for(x)
        self.history: list[dict] = []
        self.status, self.epochs_run = "completed", 0
        self.best_weights: dict | None = None  # the ordinary trainer's best epoch's state_dict
        if resume is not None:
            self.stopper.__dict__.update(resume["stopper"])
            self.history, self.epochs_run = list(resume["history"]), resume["epoch"]
            self.best_weights = resume.get("best")
        self.timer = CheckpointTimer(self.t.checkpoint_every_s)
        self._best_unwritten = False
        self._last: tuple[dict, dict] | None = None  # copies of the kept epoch's state, its rng

    @classmethod
    def open(cls, cfg: dict, x: Experiment, run_dir: Path, resume: dict | None = None,
             findings: list | None = None) -> RunSession:
        """Lint and start the run's files (`open_run`), then the session over them."""
        return cls(open_run(cfg, x, run_dir, resume=resume, findings=findings), x, resume)

    @property
    def has_best(self) -> bool:
        return self.stopper.best_epoch > 0

    @property
    def done(self) -> bool:
        """Stopped early or diverged: no more epochs for this run."""
        return self.stopper.stop or self.status == "diverged"

    @property
    def restores(self) -> bool:
        """Whether the run ends on its best epoch's weights (always after a divergence)."""
        return self.t.restore_best or self.status == "diverged"

    @property
    def running(self) -> bool:
        return self.rec.summary["status"] == "running"

    def epoch(self, row: dict, weights: Callable[[], list] | None = None) -> bool:
        """A completed, finite epoch: weight histograms when due (`weights()`: [(name, tensor)]),
        its row in the history, metrics.csv and TensorBoard (with the best epoch's row), and early
        stopping on the monitored val number. True if it is a new best."""
        epoch, every = row["epoch"], self.histogram_every
        if weights is not None and self.t.tensorboard and every and (epoch % every == 0 or epoch == 1):
            self.rec.histograms(weights(), epoch)
        self.history.append(row)
        monitor_metric = self.t.early_stopping.monitor == "metric"
        improved = self.stopper.update(row[f"val_{self.metric}"] if monitor_metric else row["val_loss"], epoch)
        # the `best/*` curves: the epoch whose weights the run reports (the best so far, or this one)
        self.rec.epoch(row, best=self.history[self.stopper.best_epoch - 1] if self.t.restore_best else row)
        self.epochs_run = epoch
        return improved

    def diverged(self, epoch: int) -> None:
        """A non-finite loss in `epoch`: the run ends after epoch − 1."""
        self.status, self.epochs_run = "diverged", epoch - 1

    def keep(self, x: Experiment, gen: torch.Generator, improved: bool) -> None:
        """After an epoch of the ordinary trainer: copies of what a checkpoint written now holds
        (its best weights if `improved`; its resume state when it keeps checkpoints), written
        when the timer is due."""
        if improved:
            self.best_weights, self._best_unwritten = checkpoint.copy_state(x.model.state_dict()), True
        if self.t.checkpoint:
            state = {"epoch": self.epochs_run, "model": checkpoint.copy_state(x.model.state_dict()),
                     "optimizer": checkpoint.copy_state(x.optimizer.state_dict()),
                     "schedule": checkpoint.copy_state(x.schedule.state_dict()),
                     "stopper": dict(self.stopper.__dict__), "wall_time_s": self.rec.elapsed()}
            self._last = state, checkpoint.rng_snapshot(gen)
            if self.timer.due():
                self.checkpoint()

    def checkpoint(self) -> None:
        """Whatever `keep` holds unwritten, best.pt first; metrics.csv is flushed first, so it holds
        every epoch that last.pt holds."""
        self.rec.flush()
        folder = self.rec.dir / "checkpoints"
        if self._best_unwritten:
            checkpoint.save(folder / "best.pt", self.best_weights)
            self._best_unwritten = False
        if self._last is not None:
            state, rng = self._last
            history = self.history[: state["epoch"]]  # rows are appended, never changed
            checkpoint.save(folder / "last.pt", resume_state(**state, rng=checkpoint.pack_rng(rng), history=history))
            self._last = None
        self.timer.wrote()

    def finish(self, x: Experiment, progress=SILENT) -> dict:
        """The run's end: summary.json with the closing evaluation of `x.model` as it stands (the
        best epoch's weights where `restores`), or without one if no epoch was finite."""
        rec, epochs_run = self.rec, self.epochs_run
        error = f"non-finite loss at epoch {epochs_run + 1}" if self.status == "diverged" else None
        if not self.has_best:  # diverged before any finite epoch
            return rec.finish(self.status, best_epoch=None, epochs_run=epochs_run, stopped_early=False,
                              train=None, val=None, test=None, gap=None, error=error)
        restored, best_epoch = self.restores, self.stopper.best_epoch
        return rec.finish(
            self.status, final_weights=named_weight_matrices(x.model), best_epoch=best_epoch, epochs_run=epochs_run,
            metrics_epoch=best_epoch if restored else epochs_run,
            stopped_early=self.stopper.stop and epochs_run < self.t.max_epochs,
            **closing_fields(x, restored, progress), error=error,
        )

    def abort(self, e: BaseException, note: str = "") -> None:
        """summary.json says why the run ended early: "interrupted" (Ctrl-C, or SIGTERM as
        `regablate.errors.Terminated`; `note` added) or "failed" with the exception."""
        if isinstance(e, KeyboardInterrupt):
            self.rec.finish("interrupted", error=f"interrupted by {getattr(e, 'signal_name', 'the user (Ctrl-C)')}{note}")
        else:
            self.rec.finish("failed", error=f"{type(e).__name__}: {e}")
