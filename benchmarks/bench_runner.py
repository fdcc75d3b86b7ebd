"""regablate against a plain hand-written PyTorch loop, side by side, as ratios.

The sparse-synthetic baseline: MLP 50-128-64-4, AdamW lr 1e-3, batch 64, 60 epochs, no early
stopping, constant lr. Figures, each the median of several alternating repeats:
  - training time: regablate's run (summary `wall_time_s`: loop, evaluation, files) against the
    plain loop's training + evaluation time, both in this process;   target <= 1.15x.
    Twice: with regablate's defaults (TensorBoard, weight statistics and histograms, metrics.csv,
    checkpoints every `trainer.checkpoint_every_s`=60 s and at the end), and with a checkpoint
    after every epoch (`trainer.checkpoint_every_s=0`, what regablate did before) for contrast.
  - whole process: `regablate run ...` against `python plain_mlp.py`, start to exit;  target <= 1.3x

    python benchmarks/bench_runner.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OVERRIDES = ["sched=none", "trainer.max_epochs=60", "trainer.early_stopping.patience=0",
             "trainer.restore_best=false", "trainer.progress=none"]


def _plain():
    spec = importlib.util.spec_from_file_location("plain_mlp", HERE / "plain_mlp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def training_time(repeats: int, extra: tuple[str, ...] = ()) -> tuple[float, float]:
    from regablate.config.compose import compose_config
    from regablate.training.loop import train

    cfg = compose_config(OVERRIDES + list(extra))
    plain = _plain()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            r = plain.main(seed=i, epochs=60)
            t_plain = time.perf_counter() - t0
            s = train({**cfg, "seed": i, "data_seed": i}, Path(tmp) / str(i))
            if i:  # the first pair warms up both
                theirs.append(t_plain)
                ours.append(s["wall_time_s"])
            assert abs(s["test"]["acc"] - r["test_acc"]) < 1e-6, "the two loops disagree"
    return statistics.median(ours), statistics.median(theirs)


def whole_process(repeats: int) -> tuple[float, float]:
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(HERE / "plain_mlp.py"), "--seed", str(i)],
                           check=True, capture_output=True)
            theirs.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "regablate", "run", *OVERRIDES, f"seed={i}",
                            f"hydra.run.dir={tmp}/{i}"], check=True, capture_output=True)
            ours.append(time.perf_counter() - t0)
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    for label, extra, target in (("defaults", (), " (target <= 1.15x)"),
                                 ("ckpt/epoch", ("trainer.checkpoint_every_s=0",), "")):
        ours, theirs = training_time(args.repeats, extra)
        print(f"training time ({label:10})  regablate {ours:6.2f} s   plain loop {theirs:6.2f} s   "
              f"ratio {ours / theirs:.2f}x{target}")
    ours, theirs = whole_process(args.repeats)
    print(f"whole process              regablate {ours:6.2f} s   plain script {theirs:6.2f} s   "
          f"ratio {ours / theirs:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
