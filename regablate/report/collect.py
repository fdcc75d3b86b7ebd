"""Find run dirs and read them into `Run` records (on-disk contract v1).

A run dir is a directory holding `summary.json`; a directory holding `.hydra/` but no
`summary.json` is a run that never got going and is reported as skipped. A run whose
`summary.json` cannot be read, whose `metrics.csv` is corrupt (or missing for a completed run),
or whose `.hydra/*.yaml` is corrupt, is skipped with a reason (absent `.hydra` files only mean
no config columns). Running, diverged, failed and interrupted runs are kept, with their status,
but never averaged: a job that failed before training has no metric and no metrics.csv, and a
running run's metrics.csv may end in a half-written line, which is dropped.

A run's group is recomputed from `.hydra/config.yaml` with the runner's `group_id`, so runs
written when operational settings were still part of summary.json's `group` join the runs of the
same science; without a config, or with an unresolved `${...}` in a science setting (two runs
would read alike), the summary's `group` is kept.

Runs of one group on the same seeds from different sweeps or single runs (the same sweep run
again into another dir) are one replicate: one sweep's are kept, each other is skipped with the
reason.

A run dir may come from someone else (regablate.rundir.untrusted): its files are read only when they
are regular files inside the run dir and under a size cap, YAML without aliases, numbers only of
sane size, each summary field of the type the contract gives it; a dir that fails any of these
is skipped with the reason. A completed run whose metric or gap is NaN or infinite is kept
(`Run.nonfinite` names the values) but not averaged (`Run.done` is false).
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from regablate.rundir.group import group_id, science
from regablate.rundir.untrusted import (
    FLOAT_LIMIT,
    LARGE_CAP,
    SMALL_CAP,
    RefusedFile,
    RefusedValue,
    load_json_safe,
    load_yaml_safe,
    read_bounded,
)

STATUSES = ("completed", "running", "diverged", "failed", "interrupted")
SPLITS = ("train", "val", "test")
_SEED_LINE = re.compile(r"^(seed|data_seed): *(-?\d{1,15}|null) *\n", re.MULTILINE)


class Unreadable(ValueError):
    """A run dir that cannot be used; the message says which file and why."""


@dataclass
class Run:
    """One run: its summary, flattened config, overrides and per-epoch curves."""

    path: Path
    summary: dict
    config: dict = field(default_factory=dict)
    overrides: list = field(default_factory=list)
    curves: dict = field(default_factory=dict)
    group: str = ""  # the group id the report uses (see the module doc)
    lists: dict = field(default_factory=dict)  # config settings that are lists, as lists

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def done(self) -> bool:
        """Completed, with finite metrics: a run that is averaged."""
        return self.status == "completed" and not self.nonfinite

    @property
    def nonfinite(self) -> list[str]:
        """The averaged values (train/val/test metric, gap) that are NaN or infinite."""
        out = []
        for split in (*SPLITS, "gap"):
            x = self.summary.get("gap") if split == "gap" else \
                (self.summary.get(split) or {}).get(self.metric)
            if isinstance(x, float) and not math.isfinite(x):
                out.append(split if split == "gap" else f"{split}.{self.metric}")
        return out

    @property
    def metric(self) -> str | None:
        return self.summary["metric"]

    @property
    def stack(self) -> tuple:
        return tuple(self.summary["reg"])

    def value(self, split: str, key: str | None = None) -> float:
        """A number from the summary (`gap`, or a split's metric), NaN when absent."""
        if split == "gap":
            x = self.summary.get("gap")
        else:
            x = (self.summary.get(split) or {}).get(key or self.metric)
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def flatten(tree: dict, prefix: str = "", lists: dict | None = None) -> dict:
    """{"optim": {"lr": 0.1}, "reg": {}} -> {"optim.lr": 0.1}; lists become text (and go
    into `lists` as they are, when given)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + ".", lists))
        else:
            flat[name] = str(value) if isinstance(value, list) else value
            if isinstance(value, list) and lists is not None:
                lists[name] = value
    return flat


def find_run_dirs(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Run dirs below `root` (sorted), and dirs that look like runs but lack summary.json."""
    found, broken = [], []
    for here, dirs, files in os.walk(root):
        if "summary.json" in files or "summary.json" in dirs:  # a dir there: read_run names it
            found.append(Path(here))
            dirs.clear()
        elif ".hydra" in dirs:
            broken.append((Path(here), "no summary.json"))
            dirs.clear()
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found), broken


def _read(path: str, name: str, cap: int) -> bytes | None:
    """The bytes of `name` in the run dir `path` (regablate.rundir.untrusted.read_bounded); None when
    absent; Unreadable naming the file otherwise."""
    try:
        return read_bounded(os.path.join(path, name), cap, within=path)
    except FileNotFoundError:
        return None
    except RefusedFile as e:
        raise Unreadable(f"{name}: {e.reason}") from None
    except OSError as e:
        raise Unreadable(f"{name}: {e.strerror or e}") from None


_NUMBER, _TEXT = (int, float), (str, type(None))
FIELDS = {  # summary.json fields of contract v1 and the types they may hold
    "seed": (int, type(None)), "data_seed": (int, type(None)),
    "best_epoch": (int, type(None)), "epochs_run": (int, type(None)),
    "n_params": (int, type(None)), "higher_is_better": (bool, type(None)),
    "stopped_early": (bool, type(None)), "gap": (*_NUMBER, type(None)),
    "wall_time_s": (*_NUMBER, type(None)), "dataset": _TEXT, "model": _TEXT, "task": _TEXT,
    "device": _TEXT, "error": _TEXT, "warnings": (list, type(None)),
    **{split: (dict, type(None)) for split in SPLITS}}
_NAMES = {int: "an integer", float: "a number", bool: "true/false", str: "text",
          list: "a list", dict: "an object", type(None): "null"}


def _check_types(summary: dict) -> None:
    for key, kinds in FIELDS.items():
        value = summary.get(key)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            allowed = " or ".join(dict.fromkeys(_NAMES[k] for k in kinds))
            raise Unreadable(f"summary.json: {key!r} is {_NAMES.get(type(value), 'a value')} "
                             f"({_short(value)}), expected {allowed}")
    if not all(isinstance(r, str) for r in summary["reg"]):
        raise Unreadable("summary.json: 'reg' holds a value that is not text")
    for w in summary.get("warnings") or []:
        if not isinstance(w, dict) or not all(isinstance(w.get(k), _TEXT)
                                              for k in ("id", "message")):
            raise Unreadable("summary.json: a warning that is not an object of texts")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_summary(path: str) -> dict:
    data = _read(path, "summary.json", SMALL_CAP)
    if data is None:
        raise Unreadable("summary.json: No such file or directory")
    try:
        summary = load_json_safe(data)
    except RefusedValue as e:  # "summary.json is not valid JSON (...)", "summary.json: a ..."
        raise Unreadable(f"summary.json{' is' if str(e).startswith('not ') else ':'} {e}") \
            from None
    if not isinstance(summary, dict):
        raise Unreadable("summary.json is not a JSON object")
    if summary.get("schema") != 1:
        raise Unreadable(f"summary.json has schema {summary.get('schema')!r}, expected 1")
    if summary.get("status") not in STATUSES:
        raise Unreadable(f"summary.json has status {summary.get('status')!r}")
    done = summary["status"] == "completed"
    if not done and summary.get("metric") is None:
        summary["metric"] = None  # failed before its task was known
    for key, kind in (("group", str), ("metric", str), ("reg", list)):
        if not isinstance(summary.get(key), kind) and (key != "metric" or done):
            raise Unreadable(f"summary.json: {key!r} missing or not a {kind.__name__}")
    summary.setdefault("higher_is_better", summary["metric"] != "mse")
    _check_types(summary)
    summary["reg"] = sorted(summary["reg"])
    if done:
        for split in ("train", "val"):
            x = (summary.get(split) or {}).get(summary["metric"])
            if not isinstance(x, (int, float)) or isinstance(x, bool):
                raise Unreadable(f"summary.json: completed but {split}.{summary['metric']} "
                                 + ("missing" if x is None else f"is {_short(x)}, not a number"))
    return summary


def _floats(column) -> list[float]:
    try:
        return list(map(float, column))
    except ValueError:
        return [float(x) if x else math.nan for x in column]


def read_metrics(path: str, metric: str | None, status: str) -> tuple[list, list]:
    """metrics.csv as (header, rows of text), checked: the columns the metric needs, no ragged
    line (a running run's half-written last line is dropped). A missing or empty file is
    ([], []) unless the run completed."""
    data = _read(path, "metrics.csv", LARGE_CAP)
    if data is None:
        if status == "completed":
            raise Unreadable("metrics.csv is missing")
        return [], []
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    except UnicodeDecodeError as e:
        raise Unreadable(f"metrics.csv is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise Unreadable(f"metrics.csv: {e}") from None
    if not rows:
        if status == "completed":
            raise Unreadable("metrics.csv is empty")
        return [], []
    header, rows = rows[0], rows[1:]
    if rows and len(rows[-1]) != len(header) and status == "running":
        rows.pop()  # the line being written right now
    if status == "completed" and not rows:
        raise Unreadable("metrics.csv has no epochs")
    bad = next((i for i, row in enumerate(rows, start=2) if len(row) != len(header)), None)
    if bad is not None:
        raise Unreadable(f"metrics.csv line {bad} has {len(rows[bad - 2])} fields, "
                         f"header has {len(header)}")
    for name in ("epoch", f"train_{metric}", f"val_{metric}") if metric else ("epoch",):
        if name not in header:
            raise Unreadable(f"metrics.csv has no {name!r} column")
    return header, rows


RENAMED = {"objective": "train_objective"}  # metrics.csv columns renamed: old -> new


def metric_columns(header: list, rows: list, names=None) -> dict:
    """Columns of `read_metrics`' rows by name (all, or those of `names` present) as floats;
    an empty cell is NaN. A column under an old name (`RENAMED`) is returned under its new one,
    unless the file has both."""
    index = {name: i for i, name in enumerate(header)}
    for old, new in RENAMED.items():
        if old in index and new not in index:
            index[new] = index.pop(old)
            header = [new if h == old else h for h in header]
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(header)
    curves = {}
    for name in header if names is None else names:
        if name in index:
            try:
                curves[name] = _floats(columns[index[name]])
            except ValueError:
                raise Unreadable(f"metrics.csv column {name!r} is not numeric") from None
            big = next((x for x in curves[name] if abs(x) >= FLOAT_LIMIT and math.isfinite(x)),
                       None)
            if big is not None:
                raise Unreadable(f"metrics.csv column {name!r}: {big:g} is out of range "
                                 "(|x| < 1e100)")
    return curves


def _read_curves(path: str, metric: str | None, status: str) -> dict:
    """metrics.csv columns by name (epoch, lr, losses, metric, gap) as float lists."""
    header, rows = read_metrics(path, metric, status)
    if not header:
        return {}
    return metric_columns(header, rows, ("epoch", "lr", "train_loss", "val_loss",
                                         f"train_{metric}", f"val_{metric}", "gap"))


def _parse_yaml(text: str, name: str, kind: type):
    try:
        data = load_yaml_safe(text)
    except RefusedValue as e:
        raise Unreadable(f".hydra/{name}: {e}") from None
    if not isinstance(data, kind | type(None)):
        raise Unreadable(f".hydra/{name} is not a YAML {kind.__name__}")
    return data or kind()


def _read_text(path: str, name: str) -> str | None:
    data = _read(path, os.path.join(".hydra", name), SMALL_CAP)
    try:
        return None if data is None else data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unreadable(f".hydra/{name} is not UTF-8 text ({e.reason} at byte {e.start})") \
            from None


@lru_cache(maxsize=1024)
def _config_without_seeds(text: str) -> tuple[dict, str | None, dict]:
    tree = _parse_yaml(text, "config.yaml", dict)
    unresolved = any(isinstance(v, str) and "${" in v for v in science(tree).values())
    lists: dict = {}
    flat = flatten(tree, lists=lists)
    return flat, None if unresolved else group_id(tree), lists


def read_config(path: str, lists: dict | None = None) -> tuple[dict, str | None]:
    """Flattened .hydra/config.yaml ({} when absent) and its group id (None when it cannot be
    told); the settings that are lists go into `lists` as lists, when given. Runs of a sweep
    differ mostly in their top-level seed lines, so the rest of the text is parsed once and
    shared (read-only: `lists` gets copies)."""
    text = _read_text(path, "config.yaml")
    if text is None:
        return {}, None
    seeds = {k: None if v == "null" else int(v) for k, v in _SEED_LINE.findall(text)}
    flat, group, found = _config_without_seeds(_SEED_LINE.sub("", text))
    if lists is not None:
        lists.update(copy.deepcopy(found))
    return {**seeds, **flat}, group


def read_run(path: Path) -> Run:
    """Read one run dir; raises Unreadable naming the file at fault."""
    d = str(path)
    summary = _read_summary(d)
    curves = _read_curves(d, summary["metric"], summary["status"])
    overrides = _read_text(d, "overrides.yaml")
    overrides = _parse_yaml(overrides, "overrides.yaml", list) if overrides else []
    lists: dict = {}
    config, group = read_config(d, lists)
    return Run(Path(path), summary, config, [str(o) for o in overrides], curves,
               group or summary["group"], lists)


def collect(roots: list[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Every readable run below `roots`, and (dir, reason) for each skipped one."""
    runs, skipped, seen = [], [], set()
    for root in roots:
        found, broken = find_run_dirs(root)
        skipped += broken
        for path in found:
            key = os.path.abspath(path)
            if key in seen:  # roots that overlap
                continue
            seen.add(key)
            try:
                runs.append(read_run(path))
            except Unreadable as e:
                skipped.append((path, str(e)))
    return _count_repeats_once(runs, skipped)


REPEAT = "a repeat of "  # how a skipped repeat's reason begins


def _count_repeats_once(runs: list[Run], skipped: list) -> tuple[list[Run], list]:
    """One run per (group, seed, data_seed): the same configuration run again on the same seeds
    (a sweep repeated into another dir, a single run made twice, a sweep over operational
    settings such as trainer.threads=1,2, an Optuna study that samples one point twice) is the
    same replicate, not another one; counting it twice would shrink every interval with numbers
    that are one draw. Kept: the first averaged one (else the first completed, else the first
    found); each other is skipped with the reason."""
    def rank(r: Run) -> int:
        return 0 if r.done else 1 if r.status == "completed" else 2

    by_key: dict[tuple, list[Run]] = {}
    for r in runs:
        if all(isinstance(r.summary.get(k), int) for k in ("seed", "data_seed")):  # a job refused for its seeds has none
            by_key.setdefault((r.group, r.summary.get("seed"), r.summary.get("data_seed")), []).append(r)
    dropped = set()
    for same in by_key.values():
        if len(same) < 2:  # the usual case: no repeat
            continue
        first = min(same, key=rank)
        for r in same:
            if r is not first:
                dropped.add(id(r))
                skipped.append((r.path, f"{REPEAT}{first.path} (the same configuration and seeds: seed="
                                f"{r.summary.get('seed')}, data_seed={r.summary.get('data_seed')}), counted once"))
    return [r for r in runs if id(r) not in dropped], skipped


def plain_value(x):
    """A frame cell as a plain Python value; NA -> None."""
    if x is None:
        return None
    try:
        import pandas as pd

        if pd.isna(x):
            return None
    except (TypeError, ValueError):
        pass
    return x.item() if hasattr(x, "item") else x
