"""The closing evaluation against a plain hand-written `torch.inference_mode()` loop, side by side.

For a convnet and a resnet20 on CIFAR-10-shaped data (random uint8 images in a prepared cache
in a temporary directory, split by the cifar10 data module as a run splits it): regablate's
closing evaluation as the runner does it (`regablate.training.loop.closing_fields`: the eval
determinism self-check, train/val/test on the full splits, calibration and reliability on
val/test, weight statistics), at the configured `trainer.eval_batch_size`, against the loop a
user writes: model.eval(), inference_mode, uint8 -> normalised float per batch, loss and
accuracy over the same three splits. Both run in this process on the same model, alternating,
after a warm-up; each figure is the median of the repeats. The ratio is wall time (and CPU time
of this process, steadier on a shared machine); the target is <= 1.1x.

    python benchmarks/bench_eval.py [--models convnet,resnet] [--repeats 3] [--threads N]
        [--n-train 500 --n-val 250 --n-test 1000] [--plain-batch-size 256]

The issue's case (2,000 training images, 5,000 validation, 10,000 test) is
`--n-train 2000 --n-val 5000 --n-test 10000` (several minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

MODELS = {"convnet": ["model=convnet"], "resnet": ["model=resnet", "model.depth=20"]}


def write_cache(root: Path, n_train: int, n_val: int, n_test: int) -> None:
    """A prepared CIFAR-10 cache of random images: with val_fraction 0.1 the module holds out
    `n_val` of the 10 * n_val training images and keeps a stratified `n_train` of the rest."""
    from regablate.data.cifar10 import CACHE, CLASSES

    total = 10 * n_val
    if n_train > total - n_val:
        raise SystemExit(f"--n-train must be <= 9 * --n-val ({total - n_val})")
    g = torch.Generator().manual_seed(0)
    torch.save({"train_x": torch.randint(0, 256, (total, 3, 32, 32), dtype=torch.uint8, generator=g),
                "train_y": torch.arange(total) % 10,
                "test_x": torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                "test_y": torch.arange(n_test) % 10, "classes": CLASSES, "source": "bench",
                "kind": "test", "verified": False}, root / CACHE)


def plain_eval(model: torch.nn.Module, splits, mean: torch.Tensor, std: torch.Tensor,
               batch_size: int) -> dict:
    """What a user writes: eval mode, inference mode, normalise each uint8 batch, sum up."""
    model.eval()
    results = {}
    with torch.inference_mode():
        for name, xs, ys in splits:
            loss, correct = 0.0, 0
            for i in range(0, len(xs), batch_size):
                x = (xs[i : i + batch_size].float() - mean) / std
                y = ys[i : i + batch_size]
                out = model(x)
                loss += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(1) == y).sum().item()
            results[name] = {"loss": loss / len(xs), "acc": correct / len(xs)}
    return results


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def bench(model_name: str, root: Path, args) -> tuple[float, float]:
    from regablate.config.compose import compose_config
    from regablate.training.experiment import build_experiment
    from regablate.training.loop import closing_fields
    from regablate.training.settings import load_settings

    cfg = compose_config(["dataset=cifar10", f"dataset.root={root}", f"dataset.n_train={args.n_train}",
                          "trainer.device=cpu", "trainer.progress=none", *MODELS[model_name]])
    x = build_experiment(load_settings(cfg))
    data, model = x.data, x.model
    mean = data.prepare.mean.clone()  # the training split's statistics, as a user computes them
    std = (1 / data.prepare.inv_std).clone()
    splits = [(n, s.x, s.y) for n, s in (("train", data.train), ("val", data.val), ("test", data.test))]
    n_images = sum(len(s[1]) for s in splits)

    def ours():
        return closing_fields(x, True)

    def theirs():
        return plain_eval(model, splits, mean, std, args.plain_batch_size)

    warm = [(n, xs[:64], ys[:64]) for n, xs, ys in splits]
    plain_eval(model, warm, mean, std, args.plain_batch_size)  # one-time kernel set-up, both ways
    ours()  # the first closing evaluation warms up its own chunk sizes
    wall = {"ours": [], "plain": []}
    cpu = {"ours": [], "plain": []}
    for r in range(args.repeats):
        order = (("plain", theirs), ("ours", ours)) if r % 2 == 0 else (("ours", ours), ("plain", theirs))
        for name, fn in order:
            out, w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
            if name == "ours":
                summary = out
            else:
                plain = out
    for split in ("train", "val", "test"):  # the same images, the same model: the same numbers
        assert summary[split]["acc"] == plain[split]["acc"], (split, summary[split], plain[split])
        assert abs(summary[split]["loss"] - plain[split]["loss"]) < 1e-4, (split, summary[split], plain[split])
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratio, ratio_cpu = med["ours"] / med["plain"], med_cpu["ours"] / med_cpu["plain"]
    print(f"{model_name}: {n_images} images (train {len(data.train)}, val {len(data.val)}, test "
          f"{len(data.test)}), eval_batch_size {x.s.trainer.eval_batch_size}, plain batch "
          f"{args.plain_batch_size}")
    print(f"  closing evaluation: {med['ours']:.2f} s ({n_images / med['ours']:.0f} images/s), "
          f"cpu {med_cpu['ours']:.2f} s")
    print(f"  plain inference_mode loop: {med['plain']:.2f} s ({n_images / med['plain']:.0f} images/s), "
          f"cpu {med_cpu['plain']:.2f} s")
    print(f"  ratio: {ratio:.2f}x wall, {ratio_cpu:.2f}x cpu  (target <= 1.1x)", flush=True)
    return ratio, ratio_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="convnet,resnet")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-val", type=int, default=250)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--plain-batch-size", type=int, default=256)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device: cpu ({torch.get_num_threads()} threads), median of {args.repeats} alternating repeats")
    with tempfile.TemporaryDirectory() as tmp:
        write_cache(Path(tmp), args.n_train, args.n_val, args.n_test)
        for name in args.models.split(","):
            bench(name, Path(tmp), args)


if __name__ == "__main__":
    main()
