"""Training state on disk: `last.pt` every epoch, `best.pt` when validation improves.

A checkpoint holds everything the next epoch depends on — model, optimiser, LR schedule,
early-stopping state, every RNG (python, numpy, torch CPU and CUDA, the batch-order generator),
the epoch and the metric history — so a resumed run continues bit-for-bit on the CPU.
Files are written atomically (temp file, fsync, rename): a reader never sees a partial one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from regablate.atomic import write_atomic


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "order": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    gen.set_state(state["order"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, obj: Any) -> None:
    write_atomic(path, lambda f: torch.save(obj, f), mode="wb")


def load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)
