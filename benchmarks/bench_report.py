"""Time `regablate report` as a whole process, and `regablate.load_runs`, over 2,000 run dirs.

10 groups (stacks x settings) x 200 seeds, each run dir holding summary.json, a 60-epoch
metrics.csv, .hydra/config.yaml and .hydra/overrides.yaml, as the runner writes them.
Both in fresh processes (imports included for the report; load_runs timed from its call, pandas
already imported, as in a notebook). Targets: report <= 3 s, load_runs <= 1.5 s.
Usage: python benchmarks/bench_report.py [--groups 10] [--seeds 200] [--epochs 60]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TARGET_S = 3.0
LOAD_TARGET_S = 1.5
LOAD = ("import sys, time, warnings, pandas, regablate; t = time.perf_counter(); "
        "runs = regablate.load_runs(sys.argv[1]); "
        "print(time.perf_counter() - t, *runs.shape)")
STACKS = [(), ("dropout",), ("l2",), ("weight_decay",), ("dropout", "l2"),
          ("dropout", "weight_decay"), ("label_smoothing",), ("mixup",), ("dropout", "mixup"),
          ("l2", "mixup")]


def write_run(path: Path, stack: tuple, p: float, seed: int, epochs: int, rng) -> None:
    reg = {name: ({"p": p} if name == "dropout" else {"strength": 1e-4}) for name in stack}
    config = {"seed": seed, "data_seed": 0, "dataset": {"name": "sparse_synthetic", "n": 2048},
              "model": {"name": "mlp", "hidden": 256, "depth": 3},
              "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
              "sched": {"name": "plateau", "patience": 3},
              "trainer": {"max_epochs": 100, "patience": 10}, "reg": reg}
    rest = {k: v for k, v in config.items() if k not in ("seed", "data_seed")}
    group = hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:12]
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (path / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"+reg=[{','.join(stack)}]", f"seed={seed}"]))
    rows = ["epoch,lr,train_loss,train_acc,val_loss,val_acc,gap"]
    for e in range(1, epochs + 1):
        tr, va = 0.99 * e / epochs, (0.85 - 0.02 * len(stack)) * e / epochs + rng.gauss(0, 0.01)
        rows.append(f"{e},0.001,{1 - tr:.5f},{tr:.5f},{1.2 - va:.5f},{va:.5f},{tr - va:.5f}")
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")
    train, val = 0.99 - 0.03 * len(stack), 0.8 + 0.02 * len(stack) + rng.gauss(0, 0.01)
    summary = {"schema": 1, "status": "completed", "task": "classification", "metric": "acc",
               "higher_is_better": True, "seed": seed, "data_seed": 0,
               "dataset": "sparse_synthetic", "model": "mlp", "reg": sorted(stack),
               "group": group, "best_epoch": epochs - 5, "epochs_run": epochs,
               "stopped_early": True, "train": {"loss": 0.05, "acc": train},
               "val": {"loss": 0.4, "acc": val}, "test": {"loss": 0.41, "acc": val - 0.01},
               "gap": train - val, "wall_time_s": 12.3, "device": "cpu", "n_params": 200_000,
               "warnings": [], "error": None}
    (path / "summary.json").write_text(json.dumps(summary))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        sweep, job = Path(tmp) / "multirun" / "2026-11-23" / "10-00-00", 0
        for g in range(args.groups):
            stack, p = STACKS[g % len(STACKS)], 0.1 + 0.1 * (g // len(STACKS))
            for seed in range(args.seeds):
                write_run(sweep / str(job), stack, p, seed, args.epochs, rng)
                job += 1
        cmd = [sys.executable, "-m", "regablate", "report", str(sweep.parent.parent),
               "--format", "csv", "--out", "/dev/null"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        load = subprocess.run([sys.executable, "-c", LOAD, str(sweep.parent.parent)],
                              capture_output=True, text=True)
    for proc in (done, load):
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
    load_s, rows, cols = load.stdout.split()
    print(f"report over {job} runs: {seconds:.2f} s (target <= {TARGET_S:.0f} s)")
    print(f"load_runs over {job} runs: {float(load_s):.2f} s, {rows} x {cols} frame "
          f"(target <= {LOAD_TARGET_S} s)")
    return 0 if seconds <= TARGET_S and float(load_s) <= LOAD_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
