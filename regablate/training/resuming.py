"""Which state a run continues from under trainer.resume=auto, checked before any file is written.

A run dir may come from someone else: its summary.json and checkpoints are read without blocking,
expanding or running anything, and a damaged one is refused in one line (`RunRefused`), never
half used. A run continues (or is skipped as done) only under the configuration and seeds that
made it.
"""

from __future__ import annotations

from pathlib import Path

from regablate.training import checkpoint
from regablate.training.experiment import Experiment, group_id
from regablate.training.session import stopper_for


def stored_summary(run_dir: Path) -> dict | None:
    """run_dir's summary.json as plain data, None if there is none; one that is not a regular
    file inside the run dir, too large or not sane JSON is refused in one line (the run dir
    may come from someone else: reading it never blocks, expands or runs anything)."""
    from regablate.rundir.claim import RunRefused
    from regablate.rundir.untrusted import RefusedValue, load_json_safe, read_bounded

    path = run_dir / "summary.json"
    try:
        summary = load_json_safe(read_bounded(path, within=run_dir))
    except FileNotFoundError:
        return None
    except (OSError, RefusedValue) as e:
        raise RunRefused(run_dir, f"cannot be resumed: {path} is damaged ({e})",
                         "move the run dir away, or choose another hydra.run.dir / hydra.sweep.dir") from None
    if not isinstance(summary, dict):
        raise RunRefused(run_dir, f"cannot be resumed: {path} is damaged (not a JSON object)",
                         "move the run dir away, or choose another hydra.run.dir / hydra.sweep.dir")
    return summary


def completed(run_dir: Path) -> dict | None:
    """The summary of a run that already ended (for trainer.resume=auto), else None."""
    summary = stored_summary(run_dir)
    return summary if summary is not None and summary.get("status") in ("completed", "diverged") else None


def check_same_configuration(cfg: dict, run_dir: Path) -> None:
    """A run continues (or is skipped as done) only under the configuration and seeds that made
    it: the same group, seed and data_seed (a seed of another run would go on from its epochs,
    on another split, or take its result as its own)."""
    from regablate.rundir.claim import RunRefused

    made = stored_summary(run_dir)
    if made is None:
        return
    ways_on = ("resume it with the settings of its .hydra/overrides.yaml, or choose another "
               "hydra.run.dir / hydra.sweep.dir")
    if made.get("group") is not None and made["group"] != group_id(cfg):
        raise RunRefused(run_dir, f"holds a run of another configuration (group {made['group']}, this "
                                  f"one is {group_id(cfg)})", ways_on)
    keys = [key for key in ("seed", "data_seed") if key in made]
    if any(made[key] != cfg.get(key) for key in keys):
        theirs = ", ".join(f"{key}={made[key]}" for key in keys)
        ours = ", ".join(f"{key}={cfg.get(key)}" for key in keys)
        raise RunRefused(run_dir, f"holds a run of other seeds ({theirs}; this one has {ours})", ways_on)


def damaged(run_dir: Path, path: Path, why: str) -> Exception:
    """The one-line refusal of a checkpoint that cannot be used (nothing in the run dir is touched)."""
    from regablate.rundir.claim import RunRefused

    return RunRefused(run_dir, f"cannot be resumed: {path} is damaged ({why})",
                      "move it away to train the run again from epoch 1, or choose another "
                      "hydra.run.dir / hydra.sweep.dir")


def last_checkpoint(run_dir: Path) -> dict | None:
    """`checkpoints/last.pt` as stored, None if there is none; one that cannot be read as plain
    data is refused."""
    try:
        return checkpoint.load_last(run_dir)
    except checkpoint.DamagedCheckpoint as e:
        raise damaged(run_dir, run_dir / "checkpoints" / "last.pt", str(e)) from None


def best_weights(state: dict, model, run_dir: Path) -> dict | None:
    """best.pt's weights checked against `model`, None before a best epoch (the stopper's best
    epoch 0); `DamagedCheckpoint` if they are not a state_dict of it."""
    if state["stopper"]["best_epoch"] == 0:
        return None
    weights = checkpoint.load(run_dir / "checkpoints" / "best.pt")
    checkpoint.check_weights(weights, model, "best.pt")
    return weights


def checked(state: dict, x: Experiment, run_dir: Path) -> dict:
    """The resume state checked whole against the freshly built experiment (`checkpoint.
    check_resume`), its best.pt against the model, before any file is written: a damaged one
    is refused, never half used. Returns the state with its history unpacked and, under
    `best`, best.pt's weights (None before a best epoch)."""
    last, best = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    try:
        history = checkpoint.check_resume(state, x.model, x.optimizer, x.schedule, stopper_for(x).__dict__,
                                          x.s.trainer.max_epochs)
    except checkpoint.DamagedCheckpoint as e:
        raise damaged(run_dir, last, str(e)) from None
    try:
        weights = best_weights(state, x.model, run_dir)
    except checkpoint.DamagedCheckpoint as e:
        raise damaged(run_dir, best, str(e)) from None
    return {**state, "history": history, "best": weights}
