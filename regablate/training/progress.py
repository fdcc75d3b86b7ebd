"""Progress: a rich bar on a terminal, plain lines otherwise, nothing with `none`.

Per epoch, `progress.epoch(row)`: the epoch bar's figures (rich), or one line (plain).
Within long work (an epoch's batches, the closing evaluation of each split):

    with progress.task("train epoch 3", total=782, unit="batches") as task:
        for ...:
            task.advance()

A task that ends within `delay` seconds (2) shows nothing. Past that it gets a bar of its own
under the epoch bar (rich; removed when the task ends), or one line every `every` seconds
(plain, the first after `every` seconds): `train epoch 3: 412/782 batches, 14 s`. `advance` costs
one clock read while nothing is due. `clock` (and the thresholds) can be replaced, for tests.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

DELAY_S = 2.0  # a task shorter than this shows nothing
EVERY_S = 5.0  # seconds between two plain lines of one task


def make_progress(mode: str, max_epochs: int, metric: str, *, delay: float = DELAY_S,
                  every: float = EVERY_S, clock: Callable[[], float] = time.monotonic,
                  console=None):
    """`mode`: auto (rich on a terminal, plain otherwise) | rich | plain | none. `console`: the
    rich Console to draw on (default: rich's own, on stdout)."""
    if mode == "none":
        return _Silent()
    if mode == "rich" or (mode == "auto" and sys.stdout.isatty()):
        return _Rich(max_epochs, metric, delay, every, clock, console)
    return _Plain(max_epochs, metric, delay, every, clock)


class _NullTask:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n: int = 1) -> None:
        pass


_NULL_TASK = _NullTask()


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def epoch(self, row: dict) -> None:
        pass

    def task(self, description: str, total: int, unit: str = "items"):
        """A context manager whose `advance(n=1)` counts `n` more of `total` `unit`s done."""
        return _NULL_TASK


SILENT = _Silent()  # shows nothing: a default for functions that take a progress


class _Task:
    """Counts what is done; calls `_due(now)` at the first `advance` at or after `self.due`
    (`first` seconds after entering), which shows the task and sets the next due time."""

    def __init__(self, description: str, total: int, unit: str, clock: Callable[[], float],
                 first: float):
        self.description, self.total, self.unit = description, total, unit
        self.clock, self.first = clock, first
        self.done, self.start, self.due = 0, 0.0, float("inf")

    def __enter__(self):
        self.start = self.clock()
        self.due = self.start + self.first
        return self

    def __exit__(self, *exc):
        self.due = float("inf")
        return False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now >= self.due:
            self._due(now)

    def _due(self, now: float) -> None:
        raise NotImplementedError


class _PlainTask(_Task):
    def __init__(self, description: str, total: int, unit: str, clock, every: float):
        super().__init__(description, total, unit, clock, every)
        self.every = every

    def _due(self, now: float) -> None:
        print(f"{self.description}: {self.done}/{self.total} {self.unit}, {now - self.start:.0f} s",
              flush=True)
        self.due = now + self.every


class _Plain(_Silent):
    def __init__(self, max_epochs: int, metric: str, delay: float = DELAY_S,
                 every: float = EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.max_epochs, self.metric = max_epochs, metric
        self.delay, self.every, self.clock = delay, every, clock

    def epoch(self, row: dict) -> None:
        m = self.metric
        print(f"epoch {row['epoch']:>4}/{self.max_epochs}  lr {row['lr']:.2e}  "
              f"train loss {row['train_loss']:.4f} {m} {row[f'train_{m}']:.4f}  "
              f"val loss {row['val_loss']:.4f} {m} {row[f'val_{m}']:.4f}  gap {row['gap']:+.4f}",
              flush=True)

    def task(self, description: str, total: int, unit: str = "items"):
        return _PlainTask(description, total, unit, self.clock, self.every)


class _RichTask(_Task):
    """Shown (after `delay`) as a row of the running epoch bar, or on a transient bar of its own
    when there is none (work after the epochs, such as the closing evaluation)."""

    def __init__(self, owner: _Rich, description: str, total: int, unit: str):
        super().__init__(description, total, unit, owner.clock, owner.delay)
        self.owner, self.bar, self.id, self.own_bar = owner, None, None, False

    def _due(self, now: float) -> None:
        if self.bar is None:
            self.bar = self.owner.bar if self.owner.live else None
            if self.bar is None:
                self.bar, self.own_bar = self.owner.new_bar(transient=True), True
                self.bar.start()
            self.id = self.bar.add_task(self.description, start=False, total=self.total,
                                        completed=self.done, info=self.unit)
            for t in self.bar.tasks:  # started at the task's own start, not when first shown
                if t.id == self.id:
                    t.start_time = self.start
            self.bar.refresh()  # add_task drew the row unstarted: draw it again at once
        else:
            self.bar.update(self.id, completed=self.done)
        self.due = now  # shown: every advance updates the bar (it redraws on its own clock)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if self.bar is not None:
            self.bar.remove_task(self.id)
            if self.own_bar:
                self.bar.stop()
            self.bar = None
        return False


class _Rich(_Plain):
    def __init__(self, max_epochs: int, metric: str, delay: float = DELAY_S,
                 every: float = EVERY_S, clock: Callable[[], float] = time.monotonic, console=None):
        super().__init__(max_epochs, metric, delay, every, clock)
        self.console, self.live, self.bar = console, False, None

    def new_bar(self, transient: bool = False):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                        console=self.console, get_time=self.clock, transient=transient)

    def __enter__(self):
        self.bar = self.new_bar()
        self.bar.__enter__()
        self.live = True
        self.epochs = self.bar.add_task("train", total=self.max_epochs, info="")
        return self

    def __exit__(self, *exc):
        self.live = False
        return self.bar.__exit__(*exc)

    def epoch(self, row: dict) -> None:
        m = self.metric
        info = (f"val loss {row['val_loss']:.4f}  val {m} {row[f'val_{m}']:.4f}  "
                f"gap {row['gap']:+.4f}  lr {row['lr']:.1e}")
        self.bar.update(self.epochs, completed=row["epoch"], info=info)

    def task(self, description: str, total: int, unit: str = "items"):
        return _RichTask(self, description, total, unit)
