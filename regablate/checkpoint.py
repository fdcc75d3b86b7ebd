"""Training state on disk: `last.pt` (resume state) and `best.pt` (the best epoch's weights).

The trainers write them when `trainer.checkpoint_every_s` seconds have passed since the last
write, at the end and on an interrupt, each time as of the last completed epoch.
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


def rng_snapshot(gen: torch.Generator) -> dict[str, Any]:
    """Every RNG's state as it is now, unpacked (cheap enough to take every epoch)."""
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "order": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def pack_rng(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot as a checkpoint stores it: python's and numpy's states as one bytes object
    each (pickled element by element they are hundreds of objects)."""
    return {**snapshot, "python": pickle.dumps(snapshot["python"]), "numpy": pickle.dumps(snapshot["numpy"])}


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    return pack_rng(rng_snapshot(gen))


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    import numpy as np

    random.setstate(pickle.loads(state["python"]))
    np.random.set_state(pickle.loads(state["numpy"]))
    torch.set_rng_state(state["torch"])
    gen.set_state(state["order"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def copy_state(obj: Any) -> Any:
    """A snapshot of a state_dict tree: tensors cloned, dicts and lists rebuilt, other values
    shared (numbers, strings; anything else deep-copied). A fraction of `copy.deepcopy`'s
    time, which matters because the trainers take one every epoch."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: copy_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_state(v) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    import copy

    return copy.deepcopy(obj)


def save(path: Path, obj: Any) -> None:
    """Serialised in memory, then written atomically: a failed write raises the OSError itself
    (torch's zip writer turns one into an opaque RuntimeError)."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, lambda f: f.write(buffer.getbuffer()), mode="wb")


def save_shared(states: dict[Path, dict]) -> None:
    """Several runs' `last.pt` states as one file: serialised once, written once (one fsync)
    and hard-linked as each run's `checkpoints/last.pt` (atomically: temp link, rename).

    Entries are keyed by the run dir's path relative to the runs' common parent, so a moved
    sweep dir still finds them; `load_last` picks a run's own entry."""
    import io
    import os

    dirs = [Path(d).resolve() for d in states]
    common = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0]
    entries = {str(d.relative_to(common)): state for d, state in zip(dirs, states.values())}
    buffer = io.BytesIO()
    torch.save({"shared": entries}, buffer)
    first = dirs[0] / "checkpoints" / "last.pt"
    write_atomic(first, lambda f: f.write(buffer.getbuffer()), mode="wb")
    for d in dirs[1:]:
        target = d / "checkpoints" / "last.pt"
        tmp = target.with_name(f".last.pt.{os.getpid()}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(first, tmp)
        except OSError:  # another file system: a copy of its own
            write_atomic(target, lambda f: f.write(buffer.getbuffer()), mode="wb")
            continue
        os.replace(tmp, target)


def load_last(run_dir: Path) -> dict | None:
    """`run_dir`'s resume state from its `checkpoints/last.pt`, its own or shared with the other
    members of a stacked chunk; None if there is none. Damaged files raise."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.exists():
        return None
    state = load(path)
    if not (isinstance(state, dict) and "shared" in state):
        return state
    entries = state["shared"]
    if len(entries) == 1:
        return next(iter(entries.values()))
    here = Path(run_dir).resolve().parts
    for rel, entry in entries.items():
        parts = Path(rel).parts
        if here[len(here) - len(parts):] == parts:
            return entry
    raise KeyError(f"{path} holds no state of {run_dir}")


def pack_history(rows: list[dict]) -> str:
    """The metric history as one JSON string: pickling hundreds of floats one by one is slow."""
    return json.dumps(rows)


def unpack_history(packed: str | list) -> list[dict]:
    return json.loads(packed) if isinstance(packed, str) else packed


def load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)
