"""Real-data sanity check of the CIFAR-10 path: prepare the shared JPEG export, train a
resnet20 on 10,000 of its training images for a few epochs on the CPU through the real
`regablate run` CLI, and require that it learns (test accuracy far above chance, 10%).

    python benchmarks/sanity_cifar.py [--archive PATH] [--epochs 4] [--min-acc 0.35]

Checks, end to end: the image-folder reader (labels aligned with images), the cache, the
stratified subset, normalisation, on-device augmentation, the resnet and the trainer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sh(*args: str) -> None:
    cmd = [sys.executable, "-m", "regablate", *args]
    print("$ regablate " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=REPO / "../shared/data/cifar10-jpeg.tar.gz")
    ap.add_argument("--root", type=Path, default=REPO / "data" / "cifar10-jpeg")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--min-acc", type=float, default=0.35)
    args = ap.parse_args()
    if not args.archive.exists():
        print(f"sanity_cifar: {args.archive} not found (pass --archive)", file=sys.stderr)
        return 2

    sh("data", "cifar10", "--root", str(args.root), "--from", str(args.archive.resolve()))
    run_dir = REPO / "outputs" / "sanity_cifar" / time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    sh("run", "dataset=cifar10", f"dataset.root={args.root}", f"dataset.n_train={args.n_train}",
       "model=resnet", "model.depth=20", "+reg=augment",
       "optim=sgd", "optim.lr=0.1", "optim.nesterov=true", "optim.weight_decay=5e-4",
       "sched=cosine", f"trainer.max_epochs={args.epochs}", "trainer.batch_size=128",
       "trainer.early_stopping.patience=0", "trainer.device=cpu", "trainer.progress=plain",
       "trainer.tensorboard=false", f"hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    acc = summary["test"]["acc"]
    print(f"test accuracy: {acc:.4f} (resnet20, {args.n_train} training images, "
          f"{summary['epochs_run']} epochs, {time.perf_counter() - t0:.0f} s, chance 0.10)")
    if acc < args.min_acc:
        print(f"sanity_cifar: FAILED, test accuracy {acc:.4f} < {args.min_acc}", file=sys.stderr)
        return 1
    print("sanity_cifar: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
