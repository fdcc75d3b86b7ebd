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
- a job that never made its dir (the sweep was killed, or its launcher stopped between batches,
  before it started) is counted `not started` where the sweep's number of jobs is known exactly
  (`sw: 3 jobs: 2 completed, 0 running, 1 not started`, and `jobs`, `not_started`,
  `not_started_jobs` in `--json`): from `multirun.yaml`, a sweep by Hydra's basic sweeper
  (regablate's or Hydra's own) whose job dirs are named by `hydra.job.num` (Hydra's default
  `hydra.sweep.subdir`) has the product of each swept key's number of values (the sweeper's
  `params`, then the command's overrides: `a=1,2`, `range(...)`, `choice(...)`), a design
  sweep's stack counted as the arms its `ablation.json` lists; job `N` is not started when
  `<sweep>/<N>` does not exist. Nothing is said where the count is not exact: seeds=auto rounds
  and Optuna studies (their jobs grow by design), other job dir names, glob, interval or
  shuffle sweeps, an override that does not parse, more than a million jobs;
- what is unfinished (failed, interrupted, stale, no summary, not started) gets the command that
  continues it: `regablate run -m <the sweep's overrides> hydra.sweep.dir=<dir> trainer.resume=auto`
  (from `multirun.yaml`; for a single run, from its `.hydra/overrides.yaml`; an Optuna study is
  continued by its own command again, which runs only the trials still missing). A sweep still
  running may yet start its jobs not started itself (a scheduler's queued jobs have no dir
  either): where a process holds the sweep's dir (`regablate.rundir.claim.hold_sweep_dir`: its
  sweep is running; `being_swept` in `--json`), or a live run stands beside them, status says to
  continue once the sweep has ended. A sweep none of whose jobs made its dir is a group with
  no run, all of its jobs not started.

Only `summary.json` and `multirun.yaml` (and a design sweep's `ablation.json`) are read whole
(bounded, `regablate.rundir.untrusted`); the rest is listed with
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

from regablate.rundir.scan import ERROR_CHARS, KINDS, MissingDir, lock_of, scan, unfinished
from regablate.rundir.untrusted import (
    SMALL_CAP,
    RefusedValue,
    escape_control,
    load_json_safe,
    load_yaml_safe,
    read_bounded,
)

DEFAULT_ROOTS = ("multirun", "outputs")
LISTED = ("running", "stale", "failed", "interrupted", "no_summary", "unreadable")  # shown in this order
SHOWN = 20            # runs listed per status and sweep without --all
MAX_JOBS = 1_000_000  # a sweep of more jobs is not counted
SWEEPERS = ("hydra_plugins.regablate_sweeper.refusing_sweeper.RefusingSweeper",
            "hydra._internal.core_plugins.basic_sweeper.BasicSweeper")  # their jobs: a product
JOB_SUBDIR = "${hydra.job.num}"  # Hydra's default hydra.sweep.subdir: job dirs named by number

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


def _list_at(tree, key_path: tuple) -> list[str]:
    """The list of texts at `key_path` in a loaded YAML `tree` ([] where there is none); raises
    RefusedValue (a ValueError) with the reason."""
    for key in key_path:
        tree = tree.get(key) if isinstance(tree, dict) else None
    if tree is None:
        tree = []
    if not isinstance(tree, list) or not all(isinstance(x, str) for x in tree):
        raise RefusedValue(f"{'.'.join(key_path) or 'the file'} is not a list of texts")
    return tree


def _read_list(path: str, within: str, key_path: tuple) -> list[str]:
    """A list of texts at `key_path` in the YAML file `path` (bounded, no aliases); raises
    ValueError/OSError with the reason."""
    return _list_at(load_yaml_safe(read_bounded(path, SMALL_CAP, within=within)), key_path)


def _multirun(sweep: str) -> tuple[object, str | None]:
    """(the sweep's multirun.yaml, read bounded and without aliases, None), (None, why it is
    unreadable), or (None, None) where there is none (an Optuna study)."""
    path = os.path.join(sweep, "multirun.yaml")
    if not os.path.lexists(path):
        return None, None
    try:
        return load_yaml_safe(read_bounded(path, SMALL_CAP, within=sweep)), None
    except (OSError, ValueError) as e:
        return None, f"multirun.yaml: {e}"


def _sweep_command(sweep: str, multirun=None, unreadable: str | None = None) -> tuple[str | None, str | None]:
    """(the command that continues the sweep in `sweep`, None) or (None, why there is none), from
    its multirun.yaml as `_multirun` read it."""
    from regablate.cli.main import resume_command

    if unreadable:
        return None, unreadable
    if multirun is None:
        return None, _optuna_advice(sweep)
    try:
        task = _list_at(multirun, ("hydra", "overrides", "task"))
        extra = _list_at(multirun, ("hydra", "overrides", "hydra"))
    except ValueError as e:
        return None, f"multirun.yaml: {e}"
    extra = [a for a in extra if a.split("=", 1)[0] != "hydra.mode"]
    return resume_command(["-m", *_config_flags(multirun), *extra, *task], {"sweep": sweep}), None


def _config_flags(multirun) -> list[str]:
    """The flags that chose the sweep's configs, from its multirun.yaml: `--config-dir` for each
    search path given on the command line, `--config-name` where it is not regablate's `config`."""
    flags = []
    sources = _at(multirun, "hydra", "runtime", "config_sources")
    for source in sources if isinstance(sources, list) else []:
        if isinstance(source, dict) and source.get("provider") == "command-line" and source.get("schema") == "file" \
                and isinstance(source.get("path"), str) and source["path"]:
            flags += ["--config-dir", source["path"]]
    name = _at(multirun, "hydra", "job", "config_name")
    return flags + (["--config-name", name] if isinstance(name, str) and name and name != "config" else [])


def _optuna_advice(sweep: str) -> str:
    """How an Optuna study goes on: one kept in a storage by running its command again; one
    kept in memory (its optuna_study.json says storage null) not at all."""
    stored = "run the command that started it again (same storage and study name): it runs only the trials still missing"
    anew = "run it again into a new hydra.sweep.dir, with hydra.sweeper.storage=sqlite:///study.db to make it resumable"
    try:
        doc = load_json_safe(read_bounded(os.path.join(sweep, "optuna_study.json"), SMALL_CAP, within=sweep))
    except (OSError, ValueError):  # none yet (a study writes it as it ends): both ways
        return f"an Optuna study: if it had hydra.sweeper.storage, {stored}; one in memory cannot be continued: {anew}"
    if isinstance(doc, dict) and doc.get("storage"):
        return f"an Optuna study: {stored}"
    return f"an Optuna study kept in memory: its trials went with its process and cannot be continued; {anew}"


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
    kind = "component" if state.settings.contrast == "main_effect" else "arm"
    return (f"seeds=auto: {arms} {kind}(s) undecided after look {len(state.looks)} of "
            f"{len(state.settings.schedule)}; the next round runs seeds {seeds[0]}–{seeds[-1]}")


def _at(tree, *keys):
    """The value at `keys` in nested dicts, None where there is none."""
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _job_count(sweep: str, multirun) -> int | None:
    """How many jobs the sweep in `sweep` has, where its multirun.yaml says so exactly: Hydra's
    basic sweep (regablate's sweeper or Hydra's own) into job dirs named by `hydra.job.num`, no
    seeds=auto rounds. None otherwise (another sweeper such as Optuna's, other job dir names, a
    list of jobs that grows by rounds, a sweep `_sweep_size` cannot count)."""
    from regablate.report.sequential_state import FILE

    sweeper = _at(multirun, "hydra", "sweeper")
    if not isinstance(sweeper, dict) or sweeper.get("_target_") not in SWEEPERS \
            or str(_at(multirun, "hydra", "sweep", "subdir")).strip() != JOB_SUBDIR \
            or sweeper.get("seeds") is not None \
            or any(os.path.lexists(os.path.join(sweep, f)) for f in (FILE, "optuna_study.json")):
        return None
    params = sweeper.get("params") or {}
    if not isinstance(params, dict) or any(isinstance(v, (dict, list)) for v in params.values()):
        return None
    try:
        task = _list_at(multirun, ("hydra", "overrides", "task"))
    except ValueError:
        return None
    return _sweep_size([f"{k}={v}" for k, v in params.items()] + task, sweeper.get("design"), sweep)


def _sweep_size(lines: list[str], design, sweep: str) -> int | None:
    """The number of jobs Hydra's basic sweeper makes of `lines` (the sweeper's params, then the
    task overrides): the product of each key's number of values, a later override of a key
    replacing an earlier one; a design sweep's, its ablation.json's arms times its seeds, where
    `seed` is its only other swept key. None for a value that does not parse, a sweep of no fixed
    list (glob, interval, shuffle), or more than MAX_JOBS jobs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    sizes: dict[str, int | None] = {}
    try:
        overrides = parser.parse_overrides(lines)
        for o in overrides:
            sizes[o.get_key_element()] = _values(o)
        if design is not None:
            from regablate.report.designs import read_ablation_json

            saved = read_ablation_json(sweep)
            if saved is None or len(saved["seeds"]) != sizes.get("seed") or \
                    any(n != 1 for key, n in sizes.items() if key != "seed" and not key.lstrip("+").startswith("reg")):
                return None
            sizes = {"arms": len(saved["arms"]), "seed": len(saved["seeds"])}
    except Exception:  # noqa: BLE001 - not a sweep this version can count: say nothing
        return None
    total = 1
    for n in sizes.values():
        if n is None or total * n > MAX_JOBS:
            return None
        total *= n
    return total


def _values(override) -> int | None:
    """How many values an override runs: 1, or a discrete sweep's count (at most MAX_JOBS + 1);
    None for glob (its values are the config groups), interval and shuffle."""
    import itertools

    from hydra.core.override_parser.types import Glob

    if not override.is_sweep_override():
        return 1
    value = override.value()
    if not override.is_discrete_sweep() or isinstance(value, Glob) or getattr(value, "shuffle", False):
        return None
    return sum(1 for _ in itertools.islice(override.sweep_string_iterator(), MAX_JOBS + 1))


def _not_started(sweep: str, total: int) -> list[int] | None:
    """The job numbers below `total` with nothing named so in `sweep` (the job never made its
    dir), None when the dir cannot be listed."""
    try:
        names = set(os.listdir(sweep))
    except OSError:
        return None
    return [n for n in range(total) if str(n) not in names]


def sweep_status(paths) -> dict:
    """Where the runs below `paths` stand (see the module docstring): a dict of plain values,

        {"roots": [...], "counts": {running, completed, diverged, failed, interrupted,
         no_summary, unreadable, stale}, "not_started", "groups": [{"dir", "sweep": bool,
         "counts", "runs": [{"dir", "status", ...}], "jobs", "not_started", "not_started_jobs",
         "command", "command_missing", "rounds_left"}]}

    one group per sweep dir, and one (`"sweep": False`) for the single runs below each root.
    `jobs` is the sweep's number of jobs where it is known exactly (`_job_count`), with
    `not_started` (a count) and `not_started_jobs` (their numbers) the jobs below it that have no
    dir yet; all three are None elsewhere. The top-level `not_started` sums them.
    Raises MissingDir (a FileNotFoundError) naming a path that is not a directory."""
    roots = [os.fspath(p) for p in paths]
    out = scan(roots)
    for group in out:
        group["command"], group["command_missing"] = None, None
        group["jobs"], group["not_started"], group["not_started_jobs"] = None, None, None
        todo = [r for r in group["runs"] if unfinished(r)]
        group["rounds_left"] = _rounds_left(group["dir"]) if group["sweep"] else None
        group["being_swept"] = group["sweep"] and lock_of(group["dir"]) == "held"  # its sweep is running
        multirun, unreadable = None, None
        if group["sweep"]:
            multirun, unreadable = _multirun(group["dir"])
            total = None if multirun is None else _job_count(group["dir"], multirun)
            missing = None if total is None else _not_started(group["dir"], total)
            if missing is not None:
                group["jobs"], group["not_started"], group["not_started_jobs"] = total, len(missing), missing
        if group["sweep"] and (todo or group["rounds_left"] or group["not_started"]):
            group["command"], group["command_missing"] = _sweep_command(group["dir"], multirun, unreadable)
        elif todo:
            for run in todo:
                run["command"], why = _run_command(run["dir"])
                if why:
                    run["command_missing"] = why
    total = dict.fromkeys((*KINDS, "stale"), 0)
    for group in out:
        for k, v in group["counts"].items():
            total[k] += v
    return {"roots": roots, "counts": total, "not_started": sum(g["not_started"] or 0 for g in out),
            "groups": out}


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


def _count_line(counts: dict, not_started: int | None = None) -> str:
    """'3 runs: 3 completed, 0 running', or with jobs not started '4 jobs: 3 completed, 0 running,
    1 not started'."""
    n = sum(counts[k] for k in KINDS)
    parts = [f"{counts['completed']} completed"]
    running = f"{counts['running']} running"
    if counts["stale"]:
        running += f" ({counts['stale']} stale)"
    parts.append(running)
    parts += [f"{counts[k]} {k.replace('_', ' ')}" for k in ("diverged", "failed", "interrupted",
                                                             "no_summary", "unreadable") if counts[k]]
    if not_started:
        parts.append(f"{not_started} not started")
        return f"{n + not_started} job{'s' * (n + not_started != 1)}: " + ", ".join(parts)
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
        lines.append(printable(f"{title}: {_count_line(group['counts'], group.get('not_started'))}"))
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
        for number in group.get("not_started_jobs") or ():
            if not show_all and shown.get("not_started", 0) >= SHOWN:
                hidden["not_started"] = hidden.get("not_started", 0) + 1
                continue
            shown["not_started"] = shown.get("not_started", 0) + 1
            rows.append(("not_started", str(number), {}))
        width = min(40, max((len(name) for _, name, _ in rows), default=0))
        for st, name, run in rows:
            label = st.replace("_", " ")
            detail = _detail(run) if run else ""
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
            if group.get("being_swept"):
                lines.append("  (its sweep is running: a process holds the sweep dir; continue it once "
                             "that has ended)")
            elif live and group.get("not_started"):
                lines.append("  (the sweep may still be running and start the jobs not started "
                             "itself: continue it once it has ended)")
        elif group["command_missing"]:
            lines.append(printable(f"  no command to continue it: {group['command_missing']}"))
    if len(report["groups"]) > 1:
        lines.append(printable(f"total: {_count_line(report['counts'], report.get('not_started'))}"))
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
