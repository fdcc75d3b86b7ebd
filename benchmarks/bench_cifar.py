"""Speed of a CIFAR training step: images/s of resnet20 (forward, backward, SGD step) on
CIFAR-shaped random uint8 data, and the share of each step spent preparing the batch
(normalisation) and augmenting it (crop + flip, and the other batch transforms), measured the
way the trainer runs them: whole batches, on the training device, no worker processes.

    python benchmarks/bench_cifar.py [--device cpu|cuda] [--batch-size 128] [--steps 20] [--threads N]

Prints plain `name: value` lines. The target is an augmentation share below 5%.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from regablate.data.normalize import Normalize
from regablate.models.resnet import ResNetSettings, build_resnet
from regablate.nn import ModelSpec
from regablate.regularisers import build_stack


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    n = args.batch_size * 8
    x_all = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device)
    y_all = torch.randint(0, 10, (n,), device=device)
    prepare = Normalize(torch.tensor([125.3, 123.0, 113.9]), torch.tensor([63.0, 62.1, 66.7]))
    model = build_resnet(ResNetSettings(depth=20), (3, 32, 32), 10, ModelSpec(norm="batch"))
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    augment = build_stack({"augment": {}})
    others = build_stack({"cutout": {}, "mixup": {}, "cutmix": {}})
    others.model_spec(ModelSpec(out_dim=10))  # mixup/cutmix learn the class count here

    times = {"prepare": 0.0, "augment": 0.0, "cutout+mixup+cutmix": 0.0, "model": 0.0}
    model.train()
    for step in range(args.warmup + args.steps):
        idx = torch.randint(0, n, (args.batch_size,), device=device)
        _sync(device)
        t0 = time.perf_counter()
        x = prepare(x_all[idx])
        _sync(device)
        t1 = time.perf_counter()
        x, y = augment.transform_batch(x, y_all[idx])
        _sync(device)
        t2 = time.perf_counter()
        others.transform_batch(x, y)  # timed only: the step below trains on the augmented batch
        _sync(device)
        t3 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        t4 = time.perf_counter()
        if step >= args.warmup:
            for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[k] += dt

    step_s = (times["prepare"] + times["augment"] + times["model"]) / args.steps
    print(f"device: {device} ({torch.get_num_threads()} threads)")
    print(f"batch_size: {args.batch_size}")
    print(f"resnet20_step_ms: {1000 * step_s:.1f}")
    print(f"images_per_s: {args.batch_size / step_s:.0f}")
    for k in ("prepare", "augment"):
        print(f"{k}_ms: {1000 * times[k] / args.steps:.2f}")
    per_step = args.steps * step_s
    print(f"augment_share: {100 * times['augment'] / per_step:.2f}%  (crop + flip; target < 5%)")
    print(f"prepare_share: {100 * times['prepare'] / per_step:.2f}%  (uint8 -> normalised float)")
    other = times["cutout+mixup+cutmix"] / args.steps
    print(f"cutout_mixup_cutmix_ms: {1000 * other:.2f}  ({100 * other / step_s:.2f}% of a step)")


if __name__ == "__main__":
    main()
