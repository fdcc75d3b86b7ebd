"""Training state on disk: `last.pt` (resume state) and `best.pt` (the best epoch's weights).

The trainers write them when `trainer.checkpoint_every_s` seconds have passed since the last
write, at the end and on an interrupt, each time as of the last completed epoch.
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

from regablate.rundir.atomic import write_atomic
from regablate.training.recorder import pack_history, unpack_history  # noqa: F401 (a checkpoint's history)


class DamagedCheckpoint(ValueError):
    """A checkpoint that cannot be used as it is: unreadable, not plain data, or not a state
    of this run (keys, types, shapes, epochs). The message is one short reason."""


def rng_snapshot(gen: torch.Generator) -> dict[str, Any]:
    """Every RNG's state as it is now, unpacked (cheap enough to take every epoch)."""
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "order": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def pack_python_rng(state: tuple) -> dict[str, Any]:
    """`random.getstate()` = (version, 625 ints: the Mersenne Twister's words and its index,
    gauss_next) as plain data: the ints as one int64 tensor."""
    version, words, gauss = state
    return {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss}


def pack_numpy_rng(state: tuple) -> dict[str, Any]:
    """`np.random.get_state()` = ('MT19937', 624 uint32 words, pos, has_gauss, cached_gaussian)
    as plain data: the words as one int64 tensor."""
    import numpy as np

    key, words, pos, has_gauss, cached = state
    return {"key": str(key), "state": torch.from_numpy(np.asarray(words, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def pack_rng(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot as a checkpoint stores it: tensors and plain values only, so that it loads
    with `torch.load(weights_only=True)` (python's and numpy's words as one tensor each)."""
    return {**snapshot, "python": pack_python_rng(snapshot["python"]),
            "numpy": pack_numpy_rng(snapshot["numpy"])}


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    return pack_rng(rng_snapshot(gen))


def _words(t: Any, n: int, what: str) -> list[int]:
    if not (isinstance(t, torch.Tensor) and t.dtype == torch.int64 and tuple(t.shape) == (n,)):
        raise DamagedCheckpoint(f"{what} is not {n} int64 words")
    words = t.tolist()
    if not all(0 <= w < 2**32 for w in words):
        raise DamagedCheckpoint(f"{what} holds words outside 0..2**32-1")
    return words


def _number(v: Any, what: str, kinds: tuple = (int, float)) -> Any:
    if isinstance(v, bool) or not isinstance(v, kinds):
        raise DamagedCheckpoint(f"{what} is {type(v).__name__}, not a number")
    return v


def python_rng(entry: Any) -> tuple:
    """`random.setstate`'s argument from a stored entry (bytes: an earlier version's pickle,
    decoded without running it, `legacy_python_rng`)."""
    if isinstance(entry, (bytes, bytearray)):
        return legacy_python_rng(bytes(entry))
    if not (isinstance(entry, dict) and set(entry) == {"version", "state", "gauss"}):
        raise DamagedCheckpoint("rng.python is not a python RNG state")
    gauss = entry["gauss"]
    if gauss is not None:
        _number(gauss, "rng.python.gauss", (float,))
    words = _words(entry["state"], 625, "rng.python.state")
    if entry["version"] != 3 or words[-1] > 624:
        raise DamagedCheckpoint("rng.python is not a version-3 Mersenne Twister state")
    return 3, tuple(words), gauss


def numpy_rng(entry: Any) -> tuple:
    """`np.random.set_state`'s argument from a stored entry (bytes: an earlier version's pickle,
    decoded without running it, `legacy_numpy_rng`)."""
    import numpy as np

    if isinstance(entry, (bytes, bytearray)):
        return legacy_numpy_rng(bytes(entry))
    if not (isinstance(entry, dict) and set(entry) == {"key", "state", "pos", "has_gauss", "cached_gaussian"}):
        raise DamagedCheckpoint("rng.numpy is not a numpy RNG state")
    words = _words(entry["state"], 624, "rng.numpy.state")
    pos, has_gauss = _number(entry["pos"], "rng.numpy.pos", (int,)), _number(entry["has_gauss"], "rng.numpy.has_gauss", (int,))
    cached = _number(entry["cached_gaussian"], "rng.numpy.cached_gaussian")
    if entry["key"] != "MT19937" or not 0 <= pos <= 624 or has_gauss not in (0, 1):
        raise DamagedCheckpoint("rng.numpy is not an MT19937 state")
    return "MT19937", np.array(words, dtype=np.uint32), pos, has_gauss, float(cached)


def _pickled_values(data: bytes) -> list:
    """The scalar values (ints, floats, strings, bytes, None) a pickle pushes, in order, read
    from its opcodes by `pickletools.genops`: nothing in it is built or called."""
    import pickletools

    try:
        return [arg for op, arg, _ in pickletools.genops(data)
                if op.name not in ("PROTO", "FRAME", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET")
                and arg is not None or op.name == "NONE"]
    except Exception as e:  # genops raises ValueError and friends on damaged opcodes
        raise DamagedCheckpoint(f"an RNG state is not a readable pickle ({e})") from None


def legacy_python_rng(data: bytes) -> tuple:
    """An earlier version's pickled `random.getstate()`: (3, (625 ints), gauss_next)."""
    values = _pickled_values(data)
    words = values[1:-1]
    if len(words) != 625 or values[0] != 3 or not all(type(w) is int for w in words):
        raise DamagedCheckpoint("rng.python is not a pickled version-3 python RNG state")
    return python_rng({"version": 3, "state": torch.tensor(words, dtype=torch.int64), "gauss": values[-1]})


def legacy_numpy_rng(data: bytes) -> tuple:
    """An earlier version's pickled `np.random.get_state()`: its one 2,496-byte buffer is the
    624 little-endian uint32 words; pos, has_gauss and the cached gaussian are its last values."""
    import numpy as np

    values = _pickled_values(data)
    buffers = [v.encode("latin1") if isinstance(v, str) else bytes(v) for v in values  # protocol 2:
               if isinstance(v, (bytes, bytearray, str)) and len(v) == 624 * 4]  # a latin1 str
    if "MT19937" not in values or len(buffers) != 1 or len(values) < 3:
        raise DamagedCheckpoint("rng.numpy is not a pickled MT19937 state")
    words = torch.from_numpy(np.frombuffer(buffers[0], dtype="<u4").astype(np.int64))
    pos, has_gauss, cached = values[-3:]
    return numpy_rng({"key": "MT19937", "state": words, "pos": pos, "has_gauss": has_gauss,
                      "cached_gaussian": cached})


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    import numpy as np

    random.setstate(python_rng(state["python"]))
    np.random.set_state(numpy_rng(state["numpy"]))
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
    import os

    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not os.path.lexists(path):
        return None
    state = load(path)
    if not (isinstance(state, dict) and "shared" in state):
        return state
    entries = state["shared"]
    if not (isinstance(entries, dict) and entries and all(isinstance(k, str) for k in entries)):
        raise DamagedCheckpoint("is not a shared checkpoint (a dict of run dirs)")
    if len(entries) == 1:
        return next(iter(entries.values()))
    here = Path(run_dir).resolve().parts
    for rel, entry in entries.items():
        parts = Path(rel).parts
        if here[len(here) - len(parts):] == parts:
            return entry
    raise DamagedCheckpoint(f"holds no state of {run_dir}")


def chunk_entry(loaded: Any, run_dir: Path) -> tuple[Any, tuple[Path, ...]]:
    """From a `last.pt`'s contents (`load`): `run_dir`'s own state, as `load_last` picks it, and
    the run dirs of every state in the file, in the file's order — the members of the stacked
    chunk that wrote it (`save_shared`), found from where `run_dir` is now; (run_dir,) for a
    file of one run. Damaged contents raise."""
    here = Path(run_dir).resolve()
    if not (isinstance(loaded, dict) and "shared" in loaded):
        return loaded, (here,)
    entries = loaded["shared"]
    if not (isinstance(entries, dict) and entries and all(isinstance(k, str) for k in entries)):
        raise DamagedCheckpoint("is not a shared checkpoint (a dict of run dirs)")
    if len(entries) == 1:
        return next(iter(entries.values())), (here,)
    if any(Path(rel).is_absolute() or ".." in Path(rel).parts for rel in entries):
        raise DamagedCheckpoint("names a run dir outside the chunk's (an absolute path or ..)")
    for rel, entry in entries.items():
        parts = Path(rel).parts
        if parts and here.parts[len(here.parts) - len(parts):] == parts:
            root = Path(*here.parts[: len(here.parts) - len(parts)])
            return entry, tuple(root.joinpath(other) for other in entries)
    raise DamagedCheckpoint(f"holds no state of {run_dir}")


def load(path: Path) -> Any:
    """A checkpoint's contents: a regular file (not a link, FIFO or device) read with
    `torch.load(weights_only=True)`, which builds tensors and plain containers and nothing else,
    so a file from someone else cannot run code. Anything else raises `DamagedCheckpoint`."""
    import os
    import pickle
    import stat

    try:
        mode = os.lstat(path).st_mode
    except OSError as e:
        raise DamagedCheckpoint(f"cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise DamagedCheckpoint("is not a regular file (a link, FIFO or device)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DamagedCheckpoint("holds objects other than tensors and plain values (refused unread: "
                                "loading them could run code)") from None
    except Exception as e:  # torch's zip reader: RuntimeError, EOFError, ... on a damaged file
        raise DamagedCheckpoint(f"cannot be read ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _like(fresh: Any, stored: Any, where: str) -> None:
    """`stored` has the structure of `fresh` (a state_dict of the same object, freshly built):
    the same keys, list lengths, tensor shapes and dtypes, and a number where a number is."""
    if isinstance(fresh, torch.Tensor):
        if not (isinstance(stored, torch.Tensor) and stored.shape == fresh.shape and stored.dtype == fresh.dtype):
            raise DamagedCheckpoint(f"{where} is not a {fresh.dtype} tensor of shape {tuple(fresh.shape)}")
    elif isinstance(fresh, dict):
        if not isinstance(stored, dict) or set(stored) != set(fresh):
            raise DamagedCheckpoint(f"{where} does not hold the keys {sorted(map(str, fresh))}")
        for k in fresh:
            _like(fresh[k], stored[k], f"{where}.{k}")
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(stored, (list, tuple)) or len(stored) != len(fresh):
            raise DamagedCheckpoint(f"{where} is not a list of {len(fresh)}")
        for i, (a, b) in enumerate(zip(fresh, stored)):
            _like(a, b, f"{where}[{i}]")
    elif isinstance(fresh, bool) or isinstance(fresh, str):
        if type(stored) is not type(fresh):
            raise DamagedCheckpoint(f"{where} is {type(stored).__name__}, not {type(fresh).__name__}")
    elif isinstance(fresh, (int, float)):
        _number(stored, where)
    elif fresh is not None and type(stored) is not type(fresh):  # None: a value not set yet
        raise DamagedCheckpoint(f"{where} is {type(stored).__name__}, not {type(fresh).__name__}")


def check_weights(stored: Any, model: torch.nn.Module, where: str) -> None:
    """`stored` is a state_dict of `model`: its keys, and each tensor's shape and dtype."""
    _like(model.state_dict(), stored, where)


def check_resume(state: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
                 stopper: dict, max_epochs: int) -> list[dict]:
    """A resume state is checked whole before any of it is used; returns its metric history.

    epoch: an int in 1..max_epochs; model: a state_dict of `model`; optimizer: the param groups
    of `optimizer` (same keys and sizes) and, per parameter, tensors of its shape (a scalar step);
    schedule and stopper: the structure of fresh ones; history: `epoch` rows numbered 1..epoch of
    numbers; rng: the states `set_rng_state` takes, each checked as it is decoded."""
    if not isinstance(state, dict):
        raise DamagedCheckpoint("is not a resume state (a dict)")
    missing = {"epoch", "model", "optimizer", "schedule", "stopper", "rng", "history"} - set(state)
    if missing:
        raise DamagedCheckpoint(f"has no {', '.join(sorted(missing))}")
    epoch = _number(state["epoch"], "epoch", (int,))
    if not 1 <= epoch <= max_epochs:
        raise DamagedCheckpoint(f"epoch {epoch} is not in 1..{max_epochs}")
    check_weights(state["model"], model, "model")
    _check_optimizer(state["optimizer"], optimizer)
    _like(schedule.state_dict(), state["schedule"], "schedule")
    _like(stopper, state["stopper"], "stopper")
    best_epoch, bad = state["stopper"]["best_epoch"], state["stopper"]["bad_epochs"]
    if not (isinstance(best_epoch, int) and isinstance(bad, int) and 0 <= best_epoch <= epoch and 0 <= bad <= epoch):
        raise DamagedCheckpoint(f"stopper's best epoch {best_epoch} or bad epochs {bad} are not in 0..{epoch}")
    _number(state.get("wall_time_s", 0.0), "wall_time_s")
    history = _check_history(state["history"], epoch)
    rng = state["rng"]
    if not isinstance(rng, dict) or not {"python", "numpy", "torch", "order"} <= set(rng):
        raise DamagedCheckpoint("rng does not hold the python, numpy, torch and order states")
    python_rng(rng["python"]), numpy_rng(rng["numpy"])
    for key in ("torch", "order"):
        probe = torch.Generator()
        if not (isinstance(rng[key], torch.Tensor) and rng[key].dtype == torch.uint8
                and rng[key].shape == probe.get_state().shape):
            raise DamagedCheckpoint(f"rng.{key} is not a CPU generator state")
        try:
            probe.set_state(rng[key])
        except RuntimeError as e:
            raise DamagedCheckpoint(f"rng.{key}: {_first_line(e)}") from None
    cuda = rng.get("cuda", [])
    if not (isinstance(cuda, (list, tuple)) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)):
        raise DamagedCheckpoint("rng.cuda is not a list of CUDA generator states")
    return history


def _check_optimizer(stored: Any, optimizer: torch.optim.Optimizer) -> None:
    fresh = optimizer.state_dict()
    if not (isinstance(stored, dict) and set(stored) == {"state", "param_groups"}):
        raise DamagedCheckpoint("optimizer is not an optimizer state_dict")
    _like(fresh["param_groups"], stored["param_groups"], "optimizer.param_groups")
    shapes = {}
    for group, params in zip(stored["param_groups"], optimizer.param_groups):
        shapes.update({i: p.shape for i, p in zip(group["params"], params["params"])})
    if not isinstance(stored["state"], dict) or not set(stored["state"]) <= set(shapes):
        raise DamagedCheckpoint("optimizer.state names parameters the optimizer does not have")
    for i, per_param in stored["state"].items():
        if not isinstance(per_param, dict):
            raise DamagedCheckpoint(f"optimizer.state[{i}] is not a dict")
        for name, value in per_param.items():
            if name == "step":
                if not (isinstance(value, torch.Tensor) and value.numel() == 1 or isinstance(value, (int, float))):
                    raise DamagedCheckpoint(f"optimizer.state[{i}].step is not a number")
            elif not (isinstance(value, torch.Tensor) and value.shape == shapes[i] and value.is_floating_point()):
                raise DamagedCheckpoint(f"optimizer.state[{i}].{name} is not a float tensor of shape {tuple(shapes[i])}")


def _check_history(packed: Any, epoch: int) -> list[dict]:
    try:
        rows = unpack_history(packed)
    except ValueError as e:
        raise DamagedCheckpoint(f"history is not JSON ({_first_line(e)})") from None
    if not isinstance(rows, list) or len(rows) != epoch:
        raise DamagedCheckpoint(f"history does not hold {epoch} epochs")
    for i, row in enumerate(rows, 1):
        if not (isinstance(row, dict) and row.get("epoch") == i and list(row) == list(rows[0])
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values())):
            raise DamagedCheckpoint(f"history row {i} is not epoch {i}'s numbers")
    # metrics.csv's `objective` is `train_objective` since 0.1: a run resumed across the rename
    # keeps one column, under the new name, so its later epochs are not written blank
    return [{("train_objective" if k == "objective" else k): v for k, v in row.items()} for row in rows]
