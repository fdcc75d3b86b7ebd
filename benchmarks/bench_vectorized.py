"""The classic ablation table three ways, each a whole process, start to exit:

  - vectorised: `regablate run -m hydra/launcher=vectorized <sweep>`
  - ordinary:   `regablate run -m <sweep>` (Hydra's basic launcher, one job after another)
  - plain:      a hand-written PyTorch script (`--plain`, below) that trains the 30 runs one
                after another in one process, evaluating train and val every epoch

The sweep: +reg=none,weight_decay,dropout,dropout_l2,batchnorm,batchnorm_l2 × seed=0..4 on
sparse-synthetic (1400/600/2000), MLP 50-128-64-4, AdamW lr 1e-3, batch 64, 60 epochs, constant
lr, no early stopping; regablate writes its usual run dirs with the default settings (summary,
metrics.csv, TensorBoard, best.pt, and last.pt by time: `trainer.checkpoint_every_s`).
Target: vectorised <= 0.25x the plain script's wall time (the floor is near 0.1x: process
start-up plus the arithmetic).

Also: the time per member-step inside the stacked loop (the launcher's own figures) against the
arithmetic limit, FLOPs per member-step / the peak matmul rate measured here, where a
member-step's FLOPs are the training step's matmuls (forward 2·B·ΣWᵢ, weight gradients 2·B·ΣWᵢ,
input gradients 2·B·ΣWᵢ for all but the first layer) plus its share of the per-epoch evaluation
(forward over train and val); and the mean test accuracy per config, ordinary vs vectorised.

    python benchmarks/bench_vectorized.py [--threads default,1] [--epochs 60] [--no-ordinary]

Both the plain script and regablate run at each thread setting in turn: "default" is torch's own
choice (one thread per core), which is how a user runs either; "1" pins both to one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("none", "weight_decay", "dropout", "dropout_l2", "batchnorm", "batchnorm_l2")
SEEDS = range(5)
LAYERS = ((50, 128), (128, 64), (64, 4))
N_TRAIN, N_VAL, BATCH = 1400, 600, 64


def sweep_args(epochs: int) -> list[str]:
    return ["+reg=" + ",".join(CONFIGS), "seed=" + ",".join(map(str, SEEDS)), "sched=none",
            f"trainer.max_epochs={epochs}", "trainer.early_stopping.patience=0",
            "trainer.restore_best=false", "trainer.progress=none"]


# -- the hand-written script: nothing but torch ---------------------------------------------------
def plain_sweep(epochs: int) -> dict:
    """The 30 runs one after another, written as one would by hand."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from plain_mlp import make_data  # the same hand-written data generation as the single run

    @torch.no_grad()
    def evaluate(model, x, y):
        model.eval()
        out = model(x)
        return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()

    results = {}
    for config in CONFIGS:
        for seed in SEEDS:
            (xtr, ytr), (xva, yva), (xte, yte) = make_data(seed)
            torch.manual_seed(seed)
            p = 0.5 if "dropout" in config else 0.0
            layers = []
            for i, o in LAYERS[:-1]:
                layers += [nn.Linear(i, o)] + ([nn.BatchNorm1d(o)] if "batchnorm" in config else [])
                layers += [nn.ReLU()] + ([nn.Dropout(p)] if p else [])
            model = nn.Sequential(*layers, nn.Linear(*LAYERS[-1]))
            weights = [q for q in model.parameters() if q.ndim >= 2]
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
            l2 = 1e-4 if config.endswith("_l2") else 0.0
            order = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                model.train()
                perm = torch.randperm(len(ytr), generator=order)
                for i in range(0, len(ytr), BATCH):
                    idx = perm[i : i + BATCH]
                    loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                    if l2:
                        loss = loss + 0.5 * l2 * sum(w.pow(2).sum() for w in weights)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if config == "weight_decay":
                        with torch.no_grad():
                            torch._foreach_mul_(weights, 1 - 1e-3 * 1e-3)
                    opt.step()
                evaluate(model, xtr, ytr)
                evaluate(model, xva, yva)
            results[f"{config}/{seed}"] = evaluate(model, xte, yte)[1]
    return results


# -- measurements ----------------------------------------------------------------------------------
def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return seconds, r


def peak_matmul_flops(threads: int) -> float:
    """Best of a few 1024³ float32 matmuls in this process (threads as the runs use)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = math.inf
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best


def flops_per_member_step() -> float:
    steps_per_epoch = math.ceil(N_TRAIN / BATCH)
    weights = sum(i * o for i, o in LAYERS)
    train = 2 * BATCH * (2 * weights + (weights - LAYERS[0][0] * LAYERS[0][1]))
    evaluation = 2 * (N_TRAIN + N_VAL) * weights / steps_per_epoch
    return train + evaluation


def test_accuracy(sweep: Path) -> dict[str, list[float]]:
    acc: dict[str, list[float]] = {}
    for summary in sweep.glob("*/summary.json"):
        s = json.loads(summary.read_text())
        name = "_".join(s["reg"]) or "none"  # presets: ["dropout", "l2"] -> dropout_l2
        acc.setdefault(name, []).append(s["test"]["acc"])
    return acc


def thread_env(threads: str) -> dict:
    """The environment of every process at one setting: "default" leaves torch its own choice
    (one thread per core), a number pins it."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(key, None)
        if threads != "default":
            env[key] = threads
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="default,1",
                   help="torch thread settings to measure, each with the plain script beside it: "
                        "'default' (torch's own choice, as a user runs both) and/or numbers")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--no-ordinary", action="store_true", help="skip the ordinary launcher's sweep")
    p.add_argument("--plain", action="store_true", help="run the hand-written script (internal)")
    args = p.parse_args()
    if args.plain:
        print(json.dumps(plain_sweep(args.epochs)))
        return
    settings = args.threads.split(",")
    regablate = [sys.executable, "-m", "regablate", "run", "-m", *sweep_args(args.epochs)]
    default = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                 env=thread_env("default"), capture_output=True, text=True, check=True).stdout)
    print(f"classic table: {len(CONFIGS)} configs x {len(SEEDS)} seeds, sparse-synthetic, "
          f"MLP 50-128-64-4, AdamW 1e-3, batch {BATCH}, {args.epochs} epochs, whole processes; "
          f"torch's default here is {default} threads")
    print(f"{'threads':>8}  {'plain script':>12}  {'vectorized':>10}  {'ratio':>6}  target <= 0.25x")
    acc_vec, acc_ord, plain_acc, loops = {}, {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for n, threads in enumerate(settings):
            env = thread_env(threads)
            t_plain, r_plain = timed([sys.executable, str(Path(__file__).resolve()), "--plain",
                                      "--epochs", str(args.epochs)], env, cwd)
            t_vec, r_vec = timed([*regablate, "hydra/launcher=vectorized", f"hydra.sweep.dir=vec{n}"], env, cwd)
            log = r_vec.stdout + r_vec.stderr
            chunks = [(int(k), int(steps), float(sec)) for k, steps, sec in
                      re.findall(r"chunk \d+/\d+: K=(\d+), (\d+) steps in ([\d.]+) s", log)]
            loops.append((threads, t_vec, chunks))
            ratio = t_vec / t_plain
            print(f"{threads:>8}  {t_plain:10.1f} s  {t_vec:8.1f} s  {ratio:5.2f}x  "
                  f"{'met' if ratio <= 0.25 else 'NOT met'}", flush=True)
            if n == 0:
                acc_vec, plain_acc = test_accuracy(cwd / "vec0"), json.loads(r_plain.stdout)
        if not args.no_ordinary:
            t_ord, _ = timed([*regablate, "hydra.sweep.dir=ord"], thread_env(settings[0]), cwd)
            acc_ord = test_accuracy(cwd / "ord")
            print(f"ordinary launcher ({settings[0]} threads): {t_ord:.1f} s")
    for threads, t_vec, chunks in loops:
        member_steps = sum(k * steps for k, steps, _ in chunks)
        loop = sum(sec for _, _, sec in chunks)
        n_threads = default if threads == "default" else int(threads)
        peak = peak_matmul_flops(n_threads)
        limit = flops_per_member_step() / peak
        print(f"{threads} threads: stacked groups {', '.join(f'K={k}' for k, _, _ in chunks)}; training "
              f"loop, evaluation and files {loop:.1f} s, the rest (start-up, Hydra, set-up) {t_vec - loop:.1f} s")
        if member_steps:
            per = loop / member_steps
            print(f"  per member-step: {per * 1e6:6.0f} us measured, arithmetic limit {limit * 1e6:5.0f} us "
                  f"({flops_per_member_step() / 1e6:.1f} MFLOP at {peak / 1e9:.0f} GFLOP/s peak matmul) "
                  f"-> {per / limit:.1f}x the limit")
    print(f"test acc, mean over seeds ({settings[0]} threads): config  ordinary  vectorized  plain")
    for c in CONFIGS:
        plain = [v for k, v in plain_acc.items() if k.startswith(c + "/")]
        print(f"  {c:13s} {statistics.mean(acc_ord.get(c, [math.nan])):.4f}  "
              f"{statistics.mean(acc_vec.get(c, [math.nan])):.4f}  {statistics.mean(plain):.4f}")


if __name__ == "__main__":
    main()
