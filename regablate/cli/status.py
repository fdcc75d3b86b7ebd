"""`regablate status [DIR...] [--json] [--all]`: where a sweep stands, from its run dirs alone.

No scheduler is asked: the run dirs say it all (on-disk contract v1); `regablate.rundir.scan`
reads them into records, this module adds the commands that continue them and prints. A run
dir is a directory holding `summary.json` (as for `regablate report`); one holding `.hydra/` but
no `summary.json`, or a job dir of a sweep (`<sweep>/<N>`) holding neither, is a run with no summary yet. For each
root (default: ./multirun and ./outputs) the runs are counted by status, per sweep (a dir holding
`multirun.yaml`, or an Optuna sweep's dir) and for the single runs outside any sweep:

- a `running` run shows its last epoch (the last whole line of `metrics.csv`: only the file's
  head and tail are read) and the age of its last write (the newest mtime of `summary.json`,
  `metrics.csv`, `checkpoints/last.pt`); when no process holds its lock (`regablate.rundir.claim`:
  `flock` on the run dir) the job that wrote it is dead and the run is flagged `stale`;
- a `failed` or `interrupted` run shows its error on one line;
- a damaged `summary.json` (not a regular file, too large, not JSON, not contract v1) is counted
  as `unreadable`, with the reason;
- what is unfinished (failed, interrupted, stale, no summary) gets the command that continues
  it: `regablate run -m <the sweep's overrides> hydra.sweep.dir=<dir> trainer.resume=auto`
  (from `multirun.yaml`; for a single run, from its `.hydra/overrides.yaml`; an Optuna study is
  continued by its own command again, which runs only the trials still missing).

Only `summary.json` is read whole (bounded, `regablate.rundir.untrusted`); the rest is listed with
`os.scandir` and `stat`ed: 10,000 run dirs take about 2 s of CPU, most of it checking the
summaries' values (`load_json_safe`). Everything printed has its
control characters escaped; `--json` writes plain ASCII JSON.

Looking at a lock takes it, shared and non-blocking, for an instant: a job claiming that very
run dir in that instant is refused as "being written by another process" (nothing is written).
"""

from __future__ import annotations

import json
import os
import sys

from regablate.rundir.scan import ERROR_CHARS, KINDS, MissingDir, scan, unfinished
from regablate.rundir.untrusted import (
    SMALL_CAP,
    RefusedValue,
    escape_control,
    load_yaml_safe,
    read_bounded,
)

DEFAULT_ROOTS = ("multirun", "outputs")
LISTED = ("running", "stale", "failed", "interrupted", "no_summary", "unreadable")  # shown in this order
SHOWN = 20            # runs listed per status and sweep without --all

USAGE = """usage: regablate status [DIR...] [--json] [--all]

Where the runs below DIR stand (default: ./multirun and ./outputs), from the run dirs alone:
counts by status per sweep, each running run's last epoch and last write (stale: its job is
dead), each failed run's error, and the command that continues what is unfinished.

  --json   one JSON object for machines (every run, ages in seconds)
  --all    list every unfinished run (default: the first 20 of each status per sweep)
"""


def _error_line(text: str, limit: int = ERROR_CHARS) -> str:
    """An error message on one line (whitespace runs become one space), cut to `limit`."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_list(path: str, within: str, key_path: tuple) -> list[str]:
    """A list of texts at `key_path` in the YAML file `path` (bounded, no aliases); raises
    ValueError/OSError with the reason."""
    tree = load_yaml_safe(read_bounded(path, SMALL_CAP, within=within))
    for key in key_path:
        tree = tree.get(key) if isinstance(tree, dict) else None
    if tree is None:
        tree = []
    if not isinstance(tree, list) or not all(isinstance(x, str) for x in tree):
        raise RefusedValue(f"{'.'.join(key_path) or 'the file'} is not a list of texts")
    return tree


def _sweep_command(sweep: str) -> tuple[str | None, str | None]:
    """(the command that continues the sweep in `sweep`, None) or (None, why there is none)."""
    from regablate.cli.main import resume_command

    if not os.path.lexists(os.path.join(sweep, "multirun.yaml")):
        return None, ("an Optuna study: run the command that started it again (same storage and "
                      "study name); it runs only the trials still missing")
    try:
        task = _read_list(os.path.join(sweep, "multirun.yaml"), sweep, ("hydra", "overrides", "task"))
        extra = _read_list(os.path.join(sweep, "multirun.yaml"), sweep, ("hydra", "overrides", "hydra"))
    except (OSError, ValueError) as e:
        return None, f"multirun.yaml: {e}"
    extra = [a for a in extra if a.split("=", 1)[0] != "hydra.mode"]
    return resume_command(["-m", *extra, *task], {"sweep": sweep}), None


def _run_command(run_dir: str) -> tuple[str | None, str | None]:
    """(the command that continues the single run in `run_dir`, None) or (None, why not)."""
    from regablate.cli.main import resume_command

    path = os.path.join(run_dir, ".hydra", "overrides.yaml")
    try:
        task = _read_list(path, run_dir, ())
    except FileNotFoundError:
        return None, ".hydra/overrides.yaml is missing"
    except (OSError, ValueError) as e:
        return None, f".hydra/overrides.yaml: {e}"
    return resume_command(task, {"run": run_dir}), None



def _rounds_left(sweep: str) -> str | None:
    """What a `seeds=auto` sweep stopped between rounds still has to run (its sequential.json:
    arms undecided and looks left), else None: every run done does not make it finished."""
    from regablate.report.sequential_state import FILE, SequentialState

    path = os.path.join(sweep, FILE)
    if not os.path.isfile(path):
        return None
    try:
        state = SequentialState.load(path)
        todo = state.next_round()
    except Exception:  # unreadable: the report says why
        return None
    if not todo:
        return None
    arms = len([a for a in todo if a != state.settings.reference])
    seeds = sorted({s for v in todo.values() for s in v})
    return (f"seeds=auto: {arms} arm(s) undecided after look {len(state.looks)} of "
            f"{len(state.settings.schedule)}; the next round runs seeds {seeds[0]}–{seeds[-1]}")


def sweep_status(paths) -> dict:
    """Where the runs below `paths` stand (see the module docstring): a dict of plain values,

        {"roots": [...], "counts": {running, completed, diverged, failed, interrupted,
         no_summary, unreadable, stale}, "groups": [{"dir", "sweep": bool, "counts", "runs":
         [{"dir", "status", ...}], "command", "command_missing", "rounds_left"}]}

    one group per sweep dir, and one (`"sweep": False`) for the single runs below each root.
    Raises MissingDir (a FileNotFoundError) naming a path that is not a directory."""
    roots = [os.fspath(p) for p in paths]
    out = scan(roots)
    for group in out:
        group["command"], group["command_missing"] = None, None
        todo = [r for r in group["runs"] if unfinished(r)]
        group["rounds_left"] = _rounds_left(group["dir"]) if group["sweep"] else None
        if group["sweep"] and (todo or group["rounds_left"]):
            group["command"], group["command_missing"] = _sweep_command(group["dir"])
        elif todo:
            for run in todo:
                run["command"], why = _run_command(run["dir"])
                if why:
                    run["command_missing"] = why
    total = dict.fromkeys((*KINDS, "stale"), 0)
    for group in out:
        for k, v in group["counts"].items():
            total[k] += v
    return {"roots": roots, "counts": total, "groups": out}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never written"
    s = int(seconds)
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m ago"
    return f"{s // 86400}d ago"


def _count_line(counts: dict) -> str:
    n = sum(counts[k] for k in KINDS)
    parts = [f"{counts['completed']} completed"]
    running = f"{counts['running']} running"
    if counts["stale"]:
        running += f" ({counts['stale']} stale)"
    parts.append(running)
    parts += [f"{counts[k]} {k.replace('_', ' ')}" for k in ("diverged", "failed", "interrupted",
                                                             "no_summary", "unreadable") if counts[k]]
    return f"{n} run{'s' * (n != 1)}: " + ", ".join(parts)


def _detail(run: dict) -> str:
    status = run["status"]
    if status == "running":
        epoch = f"epoch {run['last_epoch']}" if run.get("last_epoch") is not None else run.get("note", "")
        text = f"{epoch}, last write {_age(run.get('age_s'))}"
        if run.get("stale"):
            text += "; stale: no process holds its lock (its job is dead)"
        elif run.get("lock") is None:
            text += "; whether its job is alive cannot be told"
        return text
    if status == "no_summary":
        return {"held": "starting (its lock is held)",
                "free": "never got going (no process holds its lock)"}.get(run.get("lock"), "")
    if status == "unreadable":
        return run.get("reason", "")
    return _error_line(run.get("error") or "")


def render(report: dict, show_all: bool = False) -> str:
    """The readable form of `sweep_status`' result, every value escaped."""
    lines = []
    for group in report["groups"]:
        title = group["dir"] if group["sweep"] else f"{group['dir']} (single runs)"
        lines.append(printable(f"{title}: {_count_line(group['counts'])}"))
        shown: dict[str, int] = {}
        hidden: dict[str, int] = {}
        order = {st: i for i, st in enumerate(LISTED)}
        listed = [r for r in group["runs"] if r["status"] not in ("completed", "diverged")]
        rows = []
        for run in sorted(listed, key=lambda r: order["stale" if r.get("stale") else r["status"]]):
            st = "stale" if run.get("stale") else run["status"]
            if not show_all and shown.get(st, 0) >= SHOWN:
                hidden[st] = hidden.get(st, 0) + 1
                continue
            shown[st] = shown.get(st, 0) + 1
            name = os.path.relpath(run["dir"], group["dir"]) if group["sweep"] else run["dir"]
            rows.append((st, printable(name), run))
        width = min(40, max((len(name) for _, name, _ in rows), default=0))
        for st, name, run in rows:
            label = "no summary" if st == "no_summary" else st
            detail = _detail(run)
            lines.append(printable(f"  {label:<11} {name:<{width}}" + (f"  {detail}" if detail else "")).rstrip())
            if not group["sweep"] and run.get("command"):
                lines.append(printable(f"              continue with: {run['command']}"))
        for st, n in hidden.items():
            lines.append(f"  ... and {n} more {st.replace('_', ' ')} (--all lists them)")
        if group.get("rounds_left"):
            lines.append(printable(f"  {group['rounds_left']}"))
        if group["command"]:
            lines.append(printable(f"  continue with: {group['command']}"))
            live = group["counts"]["running"] - group["counts"]["stale"]
            if live == 1:
                lines.append("  (1 run is still being written: its job is refused until it ends)")
            elif live:
                lines.append(f"  ({live} runs are still being written: their jobs are refused "
                             "until they end)")
        elif group["command_missing"]:
            lines.append(printable(f"  no command to continue it: {group['command_missing']}"))
    if len(report["groups"]) > 1:
        lines.append(printable(f"total: {_count_line(report['counts'])}"))
    if not report["groups"]:
        lines.append(printable("no run dirs below " + ", ".join(report["roots"])))
    return "\n".join(lines) + "\n"


def printable(text) -> str:
    """`escape_control`, and a name that is not UTF-8 (its bytes kept as surrogates by
    os.fsdecode) shown as `\\xff` rather than failing to print."""
    return escape_control(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def main(argv: list[str]) -> int:
    """`regablate status`: 0, or 2 with one line on stderr for a DIR that does not exist."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    flags = [a for a in argv if a.startswith("-") and a not in ("--json", "--all")]
    if flags:
        print(escape_control(f"regablate status: error: unknown option {flags[0]!r}; "
                             "allowed: --json, --all"), file=sys.stderr)
        return 2
    paths = [a for a in argv if not a.startswith("-")]
    if not paths:
        paths = [d for d in DEFAULT_ROOTS if os.path.isdir(d)]
        if not paths:
            print("regablate status: error: no runs found: no ./multirun or ./outputs here; "
                  "pass a DIR holding run dirs", file=sys.stderr)
            return 2
    try:
        report = sweep_status(paths)
    except MissingDir as e:
        print(escape_control(f"regablate status: error: DIR {e.filename!r}: {e.strerror}"),
              file=sys.stderr)
        return 2
    if "--json" in argv:
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        sys.stdout.write(render(report, show_all="--all" in argv))
    return 0


if __name__ == "__main__":
    from regablate.cli.streams import tolerate_closed_pipes

    tolerate_closed_pipes()
    sys.exit(main(sys.argv[1:]))
