"""A run's files (on-disk contract v1): summary.json, metrics.csv, tb/, checkpoints/.

summary.json is written at the start with status "running" and rewritten at the end, both
atomically; metrics.csv gets one complete line per epoch or nothing (a failed append is cut
back off, so a full disk never leaves half a line; lines are written in batches, every
`FLUSH_EVERY_S` and at the end, with the TensorBoard events); TensorBoard gets the layout of docs/ARCHITECTURE.md
("The run dir"):
`train/` and `val/` sub-runs under identical tags, run-level gap, lr and weights, and the
HParams session start and end in the run's own file (see `regablate.tensorboard.hparams`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from regablate.rundir.atomic import write_atomic, write_json

SCHEMA = 1
FLUSH_EVERY_S = 2.0  # metrics.csv lines are written at most this often (and at the end)


def _finite(x: Any) -> Any:
    """JSON has no NaN/inf: store them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):  # a reliability table's bins, say
        return [_finite(v) for v in x]
    return x


def pack_history(rows: list[dict]) -> str:
    """The metric history (metrics.csv's rows) as one JSON string, as a checkpoint holds it: pickling hundreds of floats one by one is slow."""
    return json.dumps(rows)


def unpack_history(packed: str | list) -> list[dict]:
    return json.loads(packed) if isinstance(packed, str) else packed


class Recorder:
    def __init__(self, run_dir: Path, summary: dict, metric: str, hparams: dict | None,
                 tensorboard: bool = True, resume: dict | None = None):
        """`resume`: a checkpoint to continue from; metrics.csv is cut back to its history and
        TensorBoard purges events after its epoch, so nothing is recorded twice."""
        self.dir = Path(run_dir)
        try:
            (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from regablate.errors import UsageError

            raise UsageError(f"cannot write the run dir {self.dir}: {e.strerror}") from e
        self.metric = metric
        self.summary = {"schema": SCHEMA, "status": "running", **summary, "warnings":
                        summary.get("warnings", []), "error": None}
        self._t0 = time.perf_counter() - (resume or {}).get("wall_time_s", 0.0)
        write_json(self.dir / "summary.json", self.summary)
        history = unpack_history((resume or {}).get("history", []))
        csv_path = self.dir / "metrics.csv"
        if history:
            write_atomic(csv_path, lambda f: self._rows(f, history), mode="w")
        self._fd = os.open(csv_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if history else os.O_TRUNC),
                           0o666)
        self._line = io.StringIO()
        self._csv: csv.DictWriter | None = None
        if history:
            self._csv = csv.DictWriter(self._line, fieldnames=list(history[0]), extrasaction="ignore")
        self._open = True
        self._flushed = time.monotonic()
        tb_dir = self.dir / "tb"
        # a resumed run drops the events after its checkpoint; one restarted from scratch, all
        purge = history[-1]["epoch"] + 1 if history else (0 if tb_dir.exists() else None)
        session_group = f"{hparams['reg']} {summary['group']}" if hparams and "reg" in hparams else summary["group"]
        self._tb = (_TensorBoard(tb_dir, metric, hparams, session_group, purge)
                    if tensorboard else None)

    @staticmethod
    def _rows(f, rows: list[dict]) -> None:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def epoch(self, row: dict, best: dict | None = None) -> None:
        """One epoch's metrics: a csv line (columns from the first row) and tb scalars;
        `best` is the row of the best epoch so far (for the `best/*` curves). Lines go to
        metrics.csv in batches, every `FLUSH_EVERY_S` seconds and at `flush`/`finish`."""
        if self._csv is None:
            self._csv = csv.DictWriter(self._line, fieldnames=list(row), extrasaction="ignore")
            self._csv.writeheader()
        self._csv.writerow(row)
        if time.monotonic() - self._flushed >= FLUSH_EVERY_S:
            self.flush()
        if self._tb is not None:
            self._tb.epoch(row, best)

    def flush(self) -> None:
        """The buffered metrics.csv lines onto the file (whole lines or nothing), then the
        TensorBoard events held since the last flush onto their files (whole records or none)."""
        text = self._line.getvalue()
        if text:
            self._append(text)
            self._line.seek(0)
            self._line.truncate()
        if self._tb is not None:
            self._tb.flush()
        self._flushed = time.monotonic()

    def _append(self, text: str) -> None:
        """Whole lines onto metrics.csv, or nothing: a failed write is cut back off."""
        start = os.lseek(self._fd, 0, os.SEEK_END)
        data = memoryview(text.encode())
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as e:
            os.ftruncate(self._fd, start)
            raise OSError(e.errno, e.strerror, str(self.dir / "metrics.csv")) from e

    def histograms(self, named: list, epoch: int, tag: str = "weights/hist") -> None:
        """TensorBoard histograms of weight tensors: [(name, tensor)] -> <tag>/<name>."""
        if self._tb is not None:
            for name, w in named:
                self._tb.histogram(f"{tag}/{name}", w, epoch)

    def finish(self, status: str, final_weights: list | None = None, **fields: Any) -> dict:
        """Rewrite summary.json with the final status and results; close the files.
        `final_weights` [(name, tensor)] of the model as it ends (the best epoch's when
        restored) go to TensorBoard as `weights/final/<name>` histograms.

        If the last metrics.csv lines or TensorBoard events cannot be written, a run that would
        have completed is recorded as failed with that error; a run that is failing keeps its
        own error."""
        self.summary.update(_finite(fields), status=status, wall_time_s=round(self.elapsed(), 3))
        if self._open:
            self._open = False
            try:
                self.flush()
                if self._tb is not None:
                    step = self.summary.get("metrics_epoch") or self.summary.get("epochs_run") or 0
                    self.histograms(final_weights or [], step, tag="weights/final")
                    self._tb.close(self.summary)
            except OSError as e:
                if status == "completed":
                    self.summary.update(status="failed", error=f"cannot write {e.filename or self.dir / 'tb'}: "
                                                               f"{e.strerror or e}")
                    write_json(self.dir / "summary.json", self.summary)
                    raise
            finally:
                os.close(self._fd)
        write_json(self.dir / "summary.json", self.summary)
        return self.summary


class _TensorBoard:
    """A run's events: `train/` and `val/` sub-runs with the same tags (`loss`, `<metric>` and
    the curves `best/loss`, `best/<metric>` of the epoch whose weights the run reports: the best
    so far, or with trainer.restore_best=false the epoch itself), so every chart overlays train
    and val; run-level `gap`, `best/gap`, `lr`, `weights/*`; at the end `test/` gets the `best/*`
    point of the weights tested, at their epoch (`metrics_epoch`). The HParams session start and end go in their own file
    (`hparams.SESSION_FILE`), which `regablate tb` replaces by one that names the session by
    its label.

    The events files are those torch's SummaryWriter writes for the same calls (one event per
    epoch and sub-run holding its scalars, one per histogram), but each event is framed when
    it happens and the files are appended to at `flush` (every `FLUSH_EVERY_S`, before a
    checkpoint, at the end): no writer threads."""

    def __init__(self, logdir: Path, metric: str, hparams: dict | None, group: str,
                 purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        from regablate.tensorboard.records import EventsFile

        self.Event, self.Summary = Event, Summary
        self.dir, self.metric = Path(logdir), metric
        self.files = {"": EventsFile(self.dir, purge_step)}
        self.files.update({s: EventsFile(self.dir / s, purge_step) for s in ("train", "val")})
        self.hparams, self.group, self.start = hparams, group, time.time()
        if hparams is not None and purge_step is None:  # a resumed run has its session start
            self._write_session()

    def _write_session(self, status: str | None = None) -> None:
        from regablate.tensorboard import hparams as hp

        assert self.hparams is not None
        events = [hp.session_start(self.hparams, self.group, self.start)]
        if status is not None:
            events.append(hp.session_end(status, time.time()))
        hp.write(self.dir / hp.SESSION_FILE, events)

    def flush(self) -> None:
        """The events so far onto their files."""
        for f in self.files.values():
            f.flush()

    def histogram(self, tag: str, w, step: int) -> None:
        """A histogram of `w` as it is now (SummaryWriter.add_histogram's, of its float32 values)."""
        from regablate.tensorboard.histogram import histogram

        histo = histogram(w.detach().float().cpu().numpy())
        self._add(self.files[""], step, [self.Summary.Value(tag=tag, histo=histo)], time.time())

    def _add(self, file, step: int, values: list, wall_time: float) -> None:
        file.add(self.Event(wall_time=wall_time, step=step, summary=self.Summary(value=values)))

    def _scalars(self, file, step: int, pairs: list[tuple[str, Any]], wall_time: float) -> None:
        """All of an epoch's scalars of one (sub-)run in one event (SummaryWriter's `scalar`:
        a float32 `simple_value` each); none for a value that is None."""
        value = self.Summary.Value
        values = [value(tag=tag, simple_value=float(x)) for tag, x in pairs if x is not None]
        if values:
            self._add(file, step, values, wall_time)

    def epoch(self, row: dict, best: dict | None) -> None:
        m, step, now = self.metric, row["epoch"], time.time()
        for split in ("train", "val"):
            pairs = [("loss", row.get(f"{split}_loss")), (m, row.get(f"{split}_{m}"))]
            if best is not None:
                pairs += [("best/loss", best.get(f"{split}_loss")), (f"best/{m}", best.get(f"{split}_{m}"))]
            self._scalars(self.files[split], step, pairs, now)
        pairs = [("gap", row.get("gap")), ("lr", row.get("lr"))]
        pairs += [(key, row[key]) for key in row if key.startswith("weights/")]
        if best is not None:
            pairs.append(("best/gap", best.get("gap")))
        self._scalars(self.files[""], step, pairs, now)

    def close(self, summary: dict) -> None:
        if summary.get("status") == "diverged" and summary.get("val"):  # it ends on its best epoch's weights
            step, now = (summary.get("epochs_run") or 0) + 1, time.time()  # at the epoch that diverged
            for split in ("train", "val"):
                part = summary.get(split) or {}
                self._scalars(self.files[split], step, [("best/loss", part.get("loss")),
                                                        (f"best/{self.metric}", part.get(self.metric))], now)
            self._scalars(self.files[""], step, [("best/gap", summary.get("gap"))], now)
        self.flush()
        test = summary.get("test") or {}
        step = summary.get("metrics_epoch") or summary.get("best_epoch")  # the weights tested
        if step and test:
            from regablate.tensorboard.records import EventsFile

            f = EventsFile(self.dir / "test")
            self._scalars(f, step, [("best/loss", test.get("loss")),
                                                     (f"best/{self.metric}", test.get(self.metric))],
                          time.time())
            f.flush()
        if self.hparams is not None:
            self._write_session(summary["status"])
