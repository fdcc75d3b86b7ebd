"""Find run dirs and read them into `Run` records (on-disk contract v1).

A run dir is a directory holding `summary.json`; a directory holding `.hydra/` but no
`summary.json` is a run that never got going and is reported as skipped. A run whose
`summary.json`, `metrics.csv` or `.hydra/*.yaml` cannot be read is skipped with a reason;
running, diverged, failed and interrupted runs are kept (with their status) but never averaged.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STATUSES = ("completed", "running", "diverged", "failed", "interrupted")
SPLITS = ("train", "val", "test")
SEED_KEYS = ("seed", "data_seed")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def done(self) -> bool:
        return self.status == "completed"

    @property
    def metric(self) -> str:
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


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 0.1}, "reg": {}} -> {"optim.lr": 0.1}; lists become text."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value) if isinstance(value, list) else value
    return flat


def find_run_dirs(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Run dirs below `root` (sorted), and dirs that look like runs but lack summary.json."""
    found, broken = [], []
    for here, dirs, files in os.walk(root):
        if "summary.json" in files:
            found.append(Path(here))
            dirs.clear()
        elif ".hydra" in dirs:
            broken.append((Path(here), "no summary.json"))
            dirs.clear()
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found), broken


def _read_summary(path: Path) -> dict:
    try:
        with open(path / "summary.json", encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise Unreadable(f"summary.json: {e}") from None
    except json.JSONDecodeError as e:
        raise Unreadable(f"summary.json is not valid JSON ({e})") from None
    if not isinstance(summary, dict):
        raise Unreadable("summary.json is not a JSON object")
    if summary.get("schema") != 1:
        raise Unreadable(f"summary.json has schema {summary.get('schema')!r}, expected 1")
    if summary.get("status") not in STATUSES:
        raise Unreadable(f"summary.json has status {summary.get('status')!r}")
    for key, kind in (("group", str), ("metric", str), ("reg", list)):
        if not isinstance(summary.get(key), kind):
            raise Unreadable(f"summary.json: {key!r} missing or not a {kind.__name__}")
    summary["reg"] = sorted(str(r) for r in summary["reg"])
    summary.setdefault("higher_is_better", summary["metric"] != "mse")
    if summary["status"] == "completed":
        for split in ("train", "val"):
            if not isinstance((summary.get(split) or {}).get(summary["metric"]), (int, float)):
                raise Unreadable(f"summary.json: completed but {split}.{summary['metric']} missing")
    return summary


def _floats(column: list[str]) -> list[float]:
    try:
        return list(map(float, column))
    except ValueError:
        return [float(x) if x else math.nan for x in column]


def _read_curves(path: Path, metric: str, status: str) -> dict:
    """metrics.csv columns by name (epoch, lr, losses, metric, gap) as float lists."""
    try:
        with open(path / "metrics.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise Unreadable(f"metrics.csv: {e}") from None
    if not rows:
        if status == "completed":
            raise Unreadable("metrics.csv is empty")
        return {}
    header, rows = rows[0], rows[1:]
    if rows and len(rows[-1]) != len(header) and status == "running":
        rows.pop()  # the line being written right now
    if status == "completed" and not rows:
        raise Unreadable("metrics.csv has no epochs")
    for i, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise Unreadable(f"metrics.csv line {i} has {len(row)} fields, header has {len(header)}")
    wanted = ["epoch", "lr", "train_loss", "val_loss", f"train_{metric}", f"val_{metric}", "gap"]
    index = {name: i for i, name in enumerate(header)}
    for name in ("epoch", f"train_{metric}", f"val_{metric}"):
        if name not in index:
            raise Unreadable(f"metrics.csv has no {name!r} column")
    curves = {}
    for name in wanted:
        if name in index:
            try:
                curves[name] = _floats([row[index[name]] for row in rows])
            except ValueError:
                raise Unreadable(f"metrics.csv column {name!r} is not numeric") from None
    return curves


def _read_yaml(path: Path, kind: type):
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        return kind()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise Unreadable(f".hydra/{path.name}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, kind | type(None)):
        raise Unreadable(f".hydra/{path.name} is not a YAML {kind.__name__}")
    return data or kind()


def read_run(path: Path) -> Run:
    """Read one run dir; raises Unreadable naming the file at fault."""
    summary = _read_summary(path)
    curves = _read_curves(path, summary["metric"], summary["status"])
    config = flatten(_read_yaml(path / ".hydra" / "config.yaml", dict))
    overrides = [str(o) for o in _read_yaml(path / ".hydra" / "overrides.yaml", list)]
    return Run(path, summary, config, overrides, curves)


def collect(roots: list[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Every readable run below `roots`, and (dir, reason) for each skipped one."""
    runs, skipped, seen = [], [], set()
    for root in roots:
        found, broken = find_run_dirs(root)
        skipped += broken
        for path in found:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                runs.append(read_run(path))
            except Unreadable as e:
                skipped.append((path, str(e)))
    return runs, skipped
