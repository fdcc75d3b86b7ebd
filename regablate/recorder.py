"""A run's files (on-disk contract v1): summary.json, metrics.csv, tb/, checkpoints/.

summary.json is written at the start with status "running" and rewritten at the end, both
atomically; metrics.csv gets one complete line per epoch or nothing (a failed append is cut
back off, so a full disk never leaves half a line); TensorBoard gets
the contract's scalar tags plus hparams in the run's own directory (session group = the
config-without-seeds id, so seeds of one config group together).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any

from regablate.atomic import write_atomic, write_json

SCHEMA = 1


def _finite(x: Any) -> Any:
    """JSON has no NaN/inf: store them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    return x


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
        from regablate.checkpoint import unpack_history

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
        tb_dir = self.dir / "tb"
        # a resumed run drops the events after its checkpoint; one restarted from scratch, all
        purge = history[-1]["epoch"] + 1 if history else (0 if tb_dir.exists() else None)
        self._tb = (_TensorBoard(tb_dir, metric, hparams, summary["group"], purge)
                    if tensorboard else None)

    @staticmethod
    def _rows(f, rows: list[dict]) -> None:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def epoch(self, row: dict) -> None:
        """One epoch's metrics: a csv line (columns from the first row) and tb scalars."""
        if self._csv is None:
            self._csv = csv.DictWriter(self._line, fieldnames=list(row), extrasaction="ignore")
            self._csv.writeheader()
        self._csv.writerow(row)
        self._append(self._line.getvalue())
        self._line.seek(0)
        self._line.truncate()
        if self._tb is not None:
            self._tb.epoch(row)

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

    def histograms(self, named: list, epoch: int) -> None:
        """TensorBoard histograms of weight tensors: [(name, tensor)] -> weights/hist/<name>."""
        if self._tb is not None:
            for name, w in named:
                self._tb.w.add_histogram(f"weights/hist/{name}", w.detach().float().cpu(), epoch)

    def finish(self, status: str, **fields: Any) -> dict:
        """Rewrite summary.json with the final status and results; close the files.

        If TensorBoard cannot write its last events, a run that would have completed is
        recorded as failed with that error; a run that is failing keeps its own error."""
        self.summary.update(_finite(fields), status=status, wall_time_s=round(self.elapsed(), 3))
        if self._open:
            self._open = False
            os.close(self._fd)
            try:
                if self._tb is not None:
                    self._tb.close(self.summary)
            except OSError as e:
                if status == "completed":
                    self.summary.update(status="failed", error=f"cannot write {e.filename or self.dir / 'tb'}: "
                                                               f"{e.strerror or e}")
                    write_json(self.dir / "summary.json", self.summary)
                    raise
        write_json(self.dir / "summary.json", self.summary)
        return self.summary


class _TensorBoard:
    """Scalars under the contract's tags, hparams and a custom-scalars layout."""

    def __init__(self, logdir: Path, metric: str, hparams: dict | None, group: str,
                 purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.metric = metric
        self.w = SummaryWriter(log_dir=str(logdir), purge_step=purge_step)
        self.w.add_custom_scalars({"regablate": {
            "loss": ["Multiline", ["loss/train", "loss/val"]],
            metric: ["Multiline", [f"{metric}/train", f"{metric}/val"]],
            "gap": ["Multiline", ["gap"]],
        }})
        self.hparams = hparams
        if hparams is not None:
            self._write_hparams_start(hparams, group)

    def _metric_tags(self) -> list[str]:
        return [f"hparams/{s}_{self.metric}" for s in ("train", "val", "test")] + ["hparams/gap"]

    def _write_hparams_start(self, hparams: dict, group: str) -> None:
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        exp, ssi, _ = hparams_summary(hparams, dict.fromkeys(self._metric_tags(), 0.0))
        value = ssi.value[0]
        data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
        data.session_start_info.group_name = group
        value.metadata.plugin_data.content = data.SerializeToString()
        self.w.file_writer.add_summary(exp)
        self.w.file_writer.add_summary(ssi)

    def epoch(self, row: dict) -> None:
        """All of an epoch's scalars in one event (one write instead of one per tag)."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard.summary import scalar

        m = self.metric
        tags = [("loss/train", "train_loss"), ("loss/val", "val_loss"), (f"{m}/train", f"train_{m}"),
                (f"{m}/val", f"val_{m}"), ("gap", "gap"), ("lr", "lr")]
        tags += [(key, key) for key in row if key.startswith("weights/")]
        values = [v for tag, key in tags if row.get(key) is not None
                  for v in scalar(tag, row[key]).value]
        self.w.file_writer.add_summary(Summary(value=values), row["epoch"])

    def close(self, summary: dict) -> None:
        if self.hparams is not None:
            from tensorboard.plugins.hparams.api_pb2 import Status
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            step = summary.get("best_epoch") or 0
            for split in ("train", "val", "test"):
                value = (summary.get(split) or {}).get(self.metric)
                if value is not None:
                    self.w.add_scalar(f"hparams/{split}_{self.metric}", value, step)
            if summary.get("gap") is not None:
                self.w.add_scalar("hparams/gap", summary["gap"], step)
            _, _, sei = hparams_summary({}, {})
            from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

            value = sei.value[0]
            data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
            ok = summary["status"] == "completed"
            data.session_end_info.status = Status.Value("STATUS_SUCCESS" if ok else "STATUS_FAILURE")
            value.metadata.plugin_data.content = data.SerializeToString()
            self.w.file_writer.add_summary(sei)
        self.w.close()
