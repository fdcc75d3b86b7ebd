"""Continuing an interrupted stacked chunk: which run dirs go on stacked under trainer.resume=auto.

A run dir that already holds a run is, under trainer.resume=auto, skipped when it is finished and
continued when it is not. The ordinary trainer continues a run alone; a member of a stacked chunk
continued that way draws its dropout masks and batch order as an ordinary run would from there
on, so its numbers leave the uninterrupted stacked run's. `resume_member` instead makes it a
`Member` again, with its checked last.pt state (`Member.resume`) and its chunk (`Member.chunk`:
the chunk's epoch and its run dirs in order, read from the shared last.pt), so that the members of
one chunk are stacked again as that chunk, in its order, and `VectorizedTrainer` continues them
from their states. Anything else goes the ordinary way, with the reason: a finished run (skipped),
a dir of another configuration (refused), a last.pt that is missing, not written by a stacked
chunk (or by a version before "stacked"), or damaged (refused in one line by the ordinary trainer).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from regablate.training import checkpoint
from regablate.training.checkpoint import DamagedCheckpoint
from regablate.training.settings import Settings
from regablate.vectorized.grouping import Member, make_member
from regablate.vectorized.stacked import BLOCK_ROWS

ORDINARY = "trainer.resume=auto skips or continues its run"


def resume_member(job: int, cfg: dict, run_dir: Path, s: Settings, shared: dict | None = None) -> Member | str:
    """The member that continues `run_dir`'s run stacked, or why it goes the ordinary way.
    `shared`: `make_member`'s cache (data sets), which also keeps each shared last.pt read once."""
    from regablate.rundir.claim import RunRefused
    from regablate.training.resuming import check_same_configuration, completed

    run_dir = Path(run_dir)
    if s.trainer.resume != "auto":
        return ORDINARY
    try:
        check_same_configuration(cfg, run_dir)
        if (done := completed(run_dir)) is not None:
            return f"{ORDINARY} (already {done['status']})"
        found = _load(run_dir, shared if shared is not None else {})
    except (RunRefused, DamagedCheckpoint):
        return ORDINARY  # refused there, in one line
    if found is None:  # nothing to continue from: it starts again, stacked, as it would alone
        return make_member(job, cfg, run_dir, s, shared)
    state, dirs = found
    if not (isinstance(state, dict) and "stacked" in state):
        return f"{ORDINARY} (no stacked checkpoint)"
    member = make_member(job, cfg, run_dir, s, shared)
    if isinstance(member, str):
        return member
    try:
        member.resume = checked(state, member, run_dir)
    except DamagedCheckpoint:
        return ORDINARY  # refused there, in one line
    member.chunk = (member.resume["stacked"]["epoch"], dirs)
    return member


def _load(run_dir: Path, cache: dict) -> tuple[dict, tuple[Path, ...]] | None:
    """run_dir's last.pt state and its chunk's run dirs (`checkpoint.chunk_entry`); None if it has
    none. The file a chunk's members share (hard links) is read once. A process killed while
    `save_shared` linked the chunk's new file into its members' dirs leaves some of them linked to
    the previous one: each member then takes its state, and its chunk, from the newest file among
    its previous chunk's dirs that holds a state of it (its best.pt and metrics.csv were written
    before that file), so it continues from the epoch of the others of its chunk, with them, also
    when that chunk was a part of the previous one (split under a smaller max_members)."""
    loaded = _read(run_dir, cache)
    if loaded is None:
        return None
    state, dirs = checkpoint.chunk_entry(loaded, run_dir)
    if len(dirs) > 1 and _stacked_epoch(state) is not None:
        newer = _newest(Path(run_dir), dirs, cache)
        if newer is not None and _stacked_epoch(newer[0]) > _stacked_epoch(state):
            return newer
    return state, dirs


def _read(run_dir: Path, cache: dict) -> object | None:
    """run_dir's last.pt as `checkpoint.load` reads it, once per file (device, inode, size, time)."""
    path = run_dir / "checkpoints" / "last.pt"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DamagedCheckpoint(f"cannot be read ({e.strerror})") from None
    key = ("last.pt", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in cache:
        cache[key] = checkpoint.load(path)
    return cache[key]


def _stacked_epoch(state: object) -> int | None:
    """The chunk's epoch in a member's state, if it has a sane one."""
    if isinstance(state, dict) and isinstance(state.get("stacked"), dict):
        epoch = state["stacked"].get("epoch")
        return epoch if type(epoch) is int else None
    return None


def _newest(run_dir: Path, dirs: tuple[Path, ...], cache: dict) -> tuple[dict, tuple[Path, ...]] | None:
    """Of the last.pt files in `dirs` shared by a stacked chunk with run_dir among its members, the
    one with the latest chunk epoch: run_dir's state in it and that chunk's dirs (None if none)."""
    here, best, best_epoch, seen = run_dir.resolve(), None, -1, set()
    for d in dirs:
        try:
            loaded = _read(d, cache)  # one object per file: the members' hard links are read once
            shared = isinstance(loaded, dict) and isinstance(loaded.get("shared"), dict) and len(loaded["shared"]) > 1
            if not shared or id(loaded) in seen:  # a file of one run is only its own
                continue
            seen.add(id(loaded))
            state, found = checkpoint.chunk_entry(loaded, run_dir)
        except DamagedCheckpoint:  # damaged, or holds no state of run_dir
            continue
        epoch = _stacked_epoch(state)
        if here in found and epoch is not None and epoch > best_epoch:
            best, best_epoch = (state, found), epoch
    return best


def checked(state: dict, m: Member, run_dir: Path) -> dict:
    """The resume state checked whole against the member's freshly built experiment, as the
    ordinary trainer checks it (`checkpoint.check_resume`, best.pt against the model), and what
    the stacked trainer needs besides: every parameter's moments, and the "stacked" part.
    Returns it with its history unpacked and best.pt's weights under "best"."""
    from regablate.training.optim import state_dict_of
    from regablate.training.resuming import best_weights
    from regablate.training.session import stopper_for

    x, t = m.x, m.s.trainer
    history = checkpoint.check_resume(state, x.model, _HeldOptimizer(x, state_dict_of), x.schedule,
                                      stopper_for(x).__dict__, t.max_epochs)
    n_params = sum(len(g["params"]) for g in x.groups)
    if m.s.optim.name == "sgd":
        need = {"momentum_buffer"} if m.s.optim.momentum else set()
    else:
        need = {"exp_avg", "exp_avg_sq", "step"}
    stored = state["optimizer"]["state"]
    if need and not (set(stored) == set(range(n_params)) and all(need <= set(per) for per in stored.values())):
        raise DamagedCheckpoint(f"optimizer.state does not hold {', '.join(sorted(need))} for every parameter")
    _check_stacked(state["stacked"], state["epoch"], m)
    return {**state, "history": history, "best": best_weights(state, x.model, run_dir)}


class _HeldOptimizer:
    """What `check_resume` reads of an optimiser (its groups and a fresh `state_dict()`), for a
    member whose torch optimiser is not built (no schedule: a stacked chunk never builds it)."""

    def __init__(self, x, state_dict_of):
        if "optimizer" in x.__dict__ or x.s.sched.name != "none":
            self.param_groups, self._fresh = x.optimizer.param_groups, x.optimizer.state_dict()
        else:
            self.param_groups = x.param_groups()
            self._fresh = state_dict_of(x.s.optim, x.groups, [g["lr"] for g in self.param_groups], {})

    def state_dict(self) -> dict:
        return self._fresh


def _generator_state(t: object, device: torch.device, what: str) -> None:
    probe = torch.Generator(device)
    if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.shape == probe.get_state().shape):
        raise DamagedCheckpoint(f"{what} is not a generator state of {device}")
    try:
        probe.set_state(t)
    except RuntimeError as e:
        raise DamagedCheckpoint(f"{what}: {str(e).splitlines()[0][:200] if str(e) else e}") from None


def _int(v: object, lo: int, hi: int, what: str) -> int:
    if not (type(v) is int and lo <= v <= hi):
        raise DamagedCheckpoint(f"{what} is not an int in {lo}..{hi}")
    return v


def _check_stacked(stacked: object, epoch: int, m: Member) -> None:
    """last.pt's "stacked": {"epoch": the chunk's epoch (>= the member's), "drop": its dropout
    generator's state, "blocks": {layer: {"pos", "rows", "width", and "state" where it drops}}},
    each within what this member's model and batch size can hold."""
    if not (isinstance(stacked, dict) and {"epoch", "drop", "blocks"} <= set(stacked)):
        raise DamagedCheckpoint("stacked does not hold epoch, drop and blocks")
    _int(stacked["epoch"], epoch, m.s.trainer.max_epochs, "stacked.epoch")
    device = m.x.device
    _generator_state(stacked["drop"], device if device.type == "cuda" else torch.device("cpu"), "stacked.drop")
    blocks = stacked["blocks"]
    if not isinstance(blocks, dict):
        raise DamagedCheckpoint("stacked.blocks is not a dict")
    conv = m.conv
    widths = [w for layer in ([] if conv else m.layers) if layer.kind == "linear" for w in layer.args[:2]]
    most_rows = max(BLOCK_ROWS, m.s.trainer.batch_size)
    for layer, b in blocks.items():
        if conv or not (isinstance(layer, str) and layer.isdigit() and int(layer) < len(m.layers)):
            raise DamagedCheckpoint(f"stacked.blocks names a layer {layer!r} the model has no dropout after")
        if not (isinstance(b, dict) and {"pos", "rows", "width"} <= set(b) <= {"pos", "rows", "width", "state"}):
            raise DamagedCheckpoint(f"stacked.blocks.{layer} is not a block's position")
        rows = _int(b["rows"], 1, most_rows, f"stacked.blocks.{layer}.rows")
        _int(b["width"], 1, max(widths, default=0), f"stacked.blocks.{layer}.width")
        _int(b["pos"], 0, rows, f"stacked.blocks.{layer}.pos")
        if "state" in b:
            _generator_state(b["state"], device, f"stacked.blocks.{layer}.state")
    for layer, p in m.drops.items():
        if p > 0 and "state" not in blocks.get(str(layer), {}):
            raise DamagedCheckpoint(f"stacked.blocks holds no dropout state after layer {layer}")
