"""Training state on disk: `last.pt` every epoch, `best.pt` when validation improves.

A checkpoint holds everything the next epoch depends on — model, optimiser, LR schedule,
early-stopping state, every RNG (python, numpy, torch CPU and CUDA, the batch-order generator),
the epoch and the metric history — so a resumed run continues bit-for-bit on the CPU.
Files are written atomically (temp file, fsync, rename): a reader never sees a partial one.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import torch

from regablate.atomic import write_atomic


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    import numpy as np

    # python's and numpy's states as one bytes object each: pickled element by element they
    # are hundreds of objects, and this runs every epoch
    state = {"python": pickle.dumps(random.getstate()), "numpy": pickle.dumps(np.random.get_state()),
             "torch": torch.get_rng_state(), "order": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    import numpy as np

    random.setstate(pickle.loads(state["python"]))
    np.random.set_state(pickle.loads(state["numpy"]))
    torch.set_rng_state(state["torch"])
    gen.set_state(state["order"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, obj: Any) -> None:
    """Serialised in memory, then written atomically: a failed write raises the OSError itself
    (torch's zip writer turns one into an opaque RuntimeError)."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, lambda f: f.write(buffer.getbuffer()), mode="wb")


def pack_history(rows: list[dict]) -> str:
    """The metric history as one JSON string: pickling hundreds of floats one by one is slow."""
    return json.dumps(rows)


def unpack_history(packed: str | list) -> list[dict]:
    return json.loads(packed) if isinstance(packed, str) else packed


def load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)
