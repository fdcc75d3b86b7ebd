"""What the GPU benchmark's sections share: the figure lines, timing on the device, peak memory,
a CIFAR-10 cache of random images and the built-in resnet (`bench_gpu.py`)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


# -- output ---------------------------------------------------------------------------------------
def row(name: str, ours: str, plain: str = "-", ratio: str = "-", target: str = "-") -> None:
    print(f"{name:34} {ours:>14} {plain:>14} {ratio:>9}  {target}", flush=True)


def verdict(ok: bool, smoke: bool) -> str:
    return "(smoke: not judged)" if smoke else ("met" if ok else "NOT met")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def write_cifar_cache(root: Path, n_train: int, n_test: int) -> Path:
    """A CIFAR-10 cache as `regablate data cifar10` writes it, of random uint8 images."""
    from regablate.data.cifar10 import CLASSES

    g = torch.Generator().manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    torch.save({"train_x": torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
                "train_y": torch.arange(n_train) % 10,
                "test_x": torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                "test_y": torch.arange(n_test) % 10, "classes": CLASSES, "source": "bench",
                "kind": "bench", "verified": False}, root / "cifar10.pt")
    return root


def resnet(sizes, device: torch.device) -> nn.Module:
    """The built-in CIFAR ResNet (resnet20 at full size), as the ordinary runner places it."""
    from regablate.models.resnet import ResNetSettings, build_resnet
    from regablate.nn import ModelSpec

    s = ResNetSettings(depth=sizes.depth, width=sizes.width)
    model = build_resnet(s, (3, 32, 32), 10, ModelSpec(norm="batch")).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def reset_peak(device: torch.device) -> None:
    """Start a peak-memory reading: the previous figure's objects collected first (a stacked
    model refers to itself through its vmapped methods, so only the collector frees it)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> str:
    """Peak memory allocated by torch since `reset_peak`, on CUDA; '-' elsewhere."""
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB" if device.type == "cuda" else "-"
