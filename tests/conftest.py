"""Shared test helpers: compose configs exactly as `regablate run` does, and run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regablate.config.compose import compose_config

REPO = Path(__file__).resolve().parents[1]

# Tests run in parallel processes (pytest -n): one torch thread each keeps the cores busy
# without oversubscribing them, and the numbers do not depend on the thread count here. The
# processes the tests start (the CLI, sweeps' jobs, the studies' and benchmarks' children)
# inherit the same: two OpenMP threads beside another busy worker spin and run several times
# slower.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
ENV = {**os.environ}


def compose_cfg(*overrides: str) -> dict:
    """The resolved config (plain dict, no `hydra` key) for these overrides."""
    return compose_config(overrides)


FAST = ("trainer.max_epochs=3", "trainer.progress=none", "trainer.tensorboard=false")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`regablate ARGS` in a fresh process, as a user types it."""
    return subprocess.run([sys.executable, "-m", "regablate", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def run_patched(sitecustomize: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`regablate ARGS` in a fresh process that imports `sitecustomize` first: a patch that stops or
    breaks it at a moment no test could time from outside."""
    site = cwd / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(sitecustomize)
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), ENV.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "regablate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core box they spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_cfg():
    """A fast sparse-synthetic config; pass extra overrides."""
    def make(*overrides: str) -> dict:
        other_data = any(o.startswith("dataset=") for o in overrides)
        size = () if other_data else ("dataset.n=400", "dataset.n_test=200")
        return compose_cfg(*size, *FAST, *overrides)
    return make


def write_fake_cifar10(root: Path) -> Path:
    """A prepared CIFAR-10 cache as `regablate data cifar10` writes it, of random images:
    200 training and 60 test images; returns `root`."""
    from regablate.data.cifar10 import CLASSES

    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    torch.save({"train_x": torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=g),
                "train_y": torch.arange(200) % 10,
                "test_x": torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=g),
                "test_y": torch.arange(60) % 10, "classes": CLASSES, "source": "test",
                "kind": "test", "verified": False}, root / "cifar10.pt")
    return root
