"""Progress: a rich bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys


def make_progress(mode: str, max_epochs: int, metric: str):
    if mode == "none":
        return _Silent()
    if mode == "rich" or (mode == "auto" and sys.stdout.isatty()):
        return _Rich(max_epochs, metric)
    return _Plain(max_epochs, metric)


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def epoch(self, row: dict) -> None:
        pass


class _Plain(_Silent):
    def __init__(self, max_epochs: int, metric: str):
        self.max_epochs, self.metric = max_epochs, metric

    def epoch(self, row: dict) -> None:
        m = self.metric
        print(f"epoch {row['epoch']:>4}/{self.max_epochs}  lr {row['lr']:.2e}  "
              f"train loss {row['train_loss']:.4f} {m} {row[f'train_{m}']:.4f}  "
              f"val loss {row['val_loss']:.4f} {m} {row[f'val_{m}']:.4f}  gap {row['gap']:+.4f}",
              flush=True)


class _Rich(_Plain):
    def __enter__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
        self.bar.__enter__()
        self.task = self.bar.add_task("train", total=self.max_epochs, info="")
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def epoch(self, row: dict) -> None:
        m = self.metric
        info = (f"val loss {row['val_loss']:.4f}  val {m} {row[f'val_{m}']:.4f}  "
                f"gap {row['gap']:+.4f}  lr {row['lr']:.1e}")
        self.bar.update(self.task, completed=row["epoch"], info=info)
