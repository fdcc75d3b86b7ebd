"""Fake run dirs that follow the on-disk contract v1 exactly (summary.json, metrics.csv,
.hydra/config.yaml, .hydra/overrides.yaml, tb/, checkpoints/), for the report's tests."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
from pathlib import Path

import yaml

REG_SETTINGS = {"dropout": {"p": 0.5}, "l2": {"lam": 1e-4}, "weight_decay": {"wd": 5e-4}}
BASE = {"dataset": {"name": "sparse_synthetic", "n_train": 512, "n_val": 256},
        "model": {"name": "mlp", "hidden": 64, "depth": 2},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
        "sched": {"name": "plateau", "patience": 3},
        "trainer": {"max_epochs": 30, "patience": 5, "device": "cpu"}}


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def group_id(config: dict) -> str:
    """Stable id of the config with the seeds removed (as the runner's contract says)."""
    rest = {k: v for k, v in config.items() if k not in ("seed", "data_seed")}
    return hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:12]


def write_run(path: Path, *, reg=(), seed=0, data_seed=0, status="completed", metric="acc",
              train=0.95, val=0.85, test=0.84, best_epoch=8, epochs=10, config=None,
              reg_settings=None, warnings=(), preset=None, extra=None) -> Path:
    """One run dir at `path`; train/val/test are the primary metric at the best epoch."""
    path = Path(path)
    (path / ".hydra").mkdir(parents=True, exist_ok=True)
    (path / "tb").mkdir(exist_ok=True)
    (path / "checkpoints").mkdir(exist_ok=True)
    regs = {name: dict(REG_SETTINGS.get(name, {})) for name in reg}
    regs = _merge(regs, reg_settings or {})
    cfg = _merge({"seed": seed, "data_seed": data_seed, **BASE, "reg": regs}, config or {})
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    given = preset or (",".join(reg) if len(reg) == 1 else f"[{','.join(reg)}]" if reg else "none")
    overrides = [f"+reg={given}", f"seed={seed}"]
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    higher = metric == "acc"
    done = status == "completed"
    gap = (train - val if higher else val - train) if done else None
    summary = {
        "schema": 1, "status": status,
        "task": "classification" if higher else "regression", "metric": metric,
        "higher_is_better": higher, "seed": seed, "data_seed": data_seed,
        "dataset": cfg["dataset"]["name"], "model": cfg["model"]["name"], "reg": sorted(reg),
        "group": group_id(cfg), "best_epoch": best_epoch, "epochs_run": epochs,
        "stopped_early": epochs < cfg["trainer"]["max_epochs"],
        "train": {"loss": 0.2, metric: train, **(extra or {})} if done else None,
        "val": {"loss": 0.4, metric: val} if done else None,
        "test": {"loss": 0.41, metric: test} if done else None,
        "gap": gap, "wall_time_s": 1.5, "device": "cpu", "n_params": 4242,
        "warnings": [{"id": w, "message": f"check {w}"} for w in warnings],
        "error": "boom" if status == "failed" else None,
    }
    (path / "summary.json").write_text(json.dumps(summary, indent=1))
    write_metrics(path / "metrics.csv", metric, train, val, epochs)
    return path


def write_metrics(path: Path, metric: str, train: float, val: float, epochs: int) -> None:
    """Curves that approach the final train/val values (header row, one row per epoch)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "lr", "train_loss", f"train_{metric}", "val_loss",
                    f"val_{metric}", "gap", "weights/norm"])
        for e in range(1, epochs + 1):
            k = e / epochs
            tr, va = train * k, val * k
            gap = tr - va if metric == "acc" else va - tr
            w.writerow([e, 1e-3, 1.0 - 0.8 * k, tr, 1.0 - 0.6 * k, va, gap, 3.0 + k])


def ablation(root: Path, values: dict, *, seeds=range(5), **kw) -> Path:
    """multirun-like tree: root/<date>/<time>/<job>/ for each stack and seed.

    values: stack name (e.g. "dropout+l2", "none") -> list of (train, val, test), one per seed.
    """
    job = 0
    sweep = Path(root) / "2026-11-23" / "10-00-00"
    for name, rows in values.items():
        reg = () if name == "none" else tuple(name.split("+"))
        for seed, (tr, va, te) in zip(seeds, rows, strict=False):
            write_run(sweep / str(job), reg=reg, seed=seed, train=tr, val=va, test=te, **kw)
            job += 1
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def write_failed_early(path: Path, *, reg=(), seed=0) -> Path:
    """A sweep job refused before training: the runner's minimal summary, no metrics.csv."""
    path = write_run(path, reg=reg, seed=seed)
    (path / "metrics.csv").unlink()
    summary = json.loads((path / "summary.json").read_text())
    keep = ("schema", "seed", "data_seed", "dataset", "model", "reg", "group", "warnings")
    failed = {**{k: summary[k] for k in keep}, "status": "failed", "error": "ConfigError: p=2"}
    (path / "summary.json").write_text(json.dumps(failed))
    return path


# (train, val, test) accuracies of five seeds of three stacks: the ablation most tests report on
NONE = [(0.99, 0.80, 0.79), (0.99, 0.81, 0.80), (0.98, 0.79, 0.78), (0.99, 0.80, 0.80),
        (0.99, 0.82, 0.81)]
DROPOUT = [(0.95, 0.84, 0.83), (0.95, 0.85, 0.84), (0.94, 0.83, 0.83), (0.96, 0.86, 0.85),
           (0.95, 0.84, 0.84)]
L2 = [(0.97, 0.81, 0.80), (0.98, 0.83, 0.81), (0.97, 0.80, 0.80), (0.97, 0.82, 0.82),
      (0.98, 0.81, 0.80)]


def report(tmp_path: Path, *args, fmt: str = "json"):
    """`regablate report ARGS --format FMT` in-process, written to a file and read back (JSON
    parsed)."""
    from regablate.report.command import main

    out = tmp_path / f"out.{fmt}"
    assert main([*map(str, args), "--format", fmt, "--out", str(out)]) == 0
    text = out.read_text()
    return json.loads(text) if fmt == "json" else text
