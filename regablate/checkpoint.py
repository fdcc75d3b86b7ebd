"""Training state on disk: `last.pt` every epoch, `best.pt` when validation improves.

A checkpoint holds everything the next epoch depends on — model, optimiser, LR schedule,
early-stopping state, every RNG (python, numpy, torch CPU and CUDA, the batch-order generator),
the epoch and the metric history — so a resumed run continues bit-for-bit on the CPU.
Files are written atomically (temp file, fsync, rename): a reader never sees a partial one.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from concurrent.futures import Future, ThreadPoolExecutor
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
    write_atomic(path, lambda f: torch.save(obj, f), mode="wb")


def pack_history(rows: list[dict]) -> str:
    """The metric history as one JSON string: pickling hundreds of floats one by one is slow."""
    return json.dumps(rows)


def unpack_history(packed: str | list) -> list[dict]:
    return json.loads(packed) if isinstance(packed, str) else packed


class Writer:
    """Checkpoints written behind training: each object is serialised at once (a consistent
    snapshot), then written, fsynced and renamed on one background thread, in order.
    `wait()` blocks until all are on disk and re-raises the first write error."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: list[Future] = []

    def save(self, path: Path, obj: Any) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
        self._pending = [f for f in self._pending if not f.done() or f.exception()]
        self._raise()
        self._pending.append(self._pool.submit(write_atomic, path, lambda f: f.write(data), "wb"))

    def _raise(self) -> None:
        for f in self._pending:
            if f.done() and f.exception() is not None:
                raise f.exception()

    def wait(self) -> None:
        try:
            for f in self._pending:
                f.result()
        finally:
            self._pending = []

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)
