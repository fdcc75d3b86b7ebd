"""What `hydra/sweeper=regablate` does (the plugin is `hydra_plugins.regablate_sweeper`): Hydra's
basic sweep, ending a sweep whose jobs did not all complete with one closing line.

Hydra's basic sweeper re-raises the first failed job's error (a traceback, under joblib or
submitit often a launcher's own) and says nothing of the others. This one runs every batch,
then counts from the JobReturns (so it works under any launcher: basic, joblib, submitit_local,
submitit_slurm, vectorized) the jobs that failed (each with its one-line reason), were refused
(their run dir already holds a run or another process is writing it, `regablate.rundir.claim`: a refused
job touches nothing), were interrupted (SIGTERM, SIGUSR2, preemption: recorded `interrupted`),
cancelled or timed out, and raises one `SweepFailed`: `regablate run` prints it as one line,
with the command that continues the sweep where one does, exit 2 when every such job was a
config error or a refusal, 1 otherwise. Under the submitit launchers the batch is launched by
`submitit_jobs.launch`, which waits for every job. `multirun.yaml` stays as the launch that made the sweep dir wrote it
(a refused or resuming launch does not relabel the sweep). A sweep that ran writes its TensorBoard HParams experiment at its root
(`regablate.tensorboard.view.describe_sweep`); a refused one writes nothing.

`refusals` and `refused_message` are the Optuna sweeper's too (`regablate.sweep.optuna_search`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus


def refusals(results: Sequence[JobReturn]) -> list:
    """The RunRefused errors among a batch's results."""
    from regablate.rundir.claim import RunRefused

    return [r._return_value for r in results
            if r.status == JobStatus.FAILED and isinstance(r._return_value, RunRefused)]


def _refused_reasons(refused: list) -> str:
    by_why: dict[str, list[str]] = {}
    for e in refused:
        by_why.setdefault(e.why, []).append(str(e.run_dir))
    return "; ".join(f"{why}: {', '.join(dirs[:3])}{f' and {len(dirs) - 3} more' if len(dirs) > 3 else ''}"
                     for why, dirs in by_why.items())


def _refused_ways(refused: list) -> str:
    from regablate.rundir.claim import WAYS_ON

    own = [e.ways_on for e in refused if not e.busy and e.ways_on != WAYS_ON]  # e.g. another config
    return ("wait for them, or choose another hydra.sweep.dir" if all(e.busy for e in refused) else
            "; ".join(dict.fromkeys(own)) if own else
            "continue them with trainer.resume=auto, or choose another hydra.sweep.dir")


def refused_message(refused: list, n_jobs: int) -> str:
    """'2 of 4 jobs refused: ...' with each reason, the dirs, and the ways on."""
    return (f"{len(refused)} of {n_jobs} jobs refused, their run dirs untouched ({_refused_reasons(refused)}); "
            f"{_refused_ways(refused)}")


def _where(ret: JobReturn, error: BaseException) -> str:
    """The job's run dir, relative to the working directory where it is under it."""
    run_dir = getattr(error, "run_dir", None)
    if run_dir is None:
        try:
            run_dir = ret.hydra_cfg.hydra.runtime.output_dir
        except Exception:
            run_dir = None
    if run_dir is None:
        return "job " + " ".join(ret.overrides or [])
    path = Path(str(run_dir))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _first_line(error: BaseException) -> str:
    from regablate.errors import JobFailed

    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if isinstance(error, JobFailed):  # already "Type: message"
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _listed(by_why: dict[str, list[str]]) -> str:
    """'sweep/1, sweep/3 and 2 more: reason; sweep/4: another reason'."""
    return "; ".join(f"{', '.join(dirs[:3])}{f' and {len(dirs) - 3} more' if len(dirs) > 3 else ''}: {why}"
                     for why, dirs in by_why.items())


def closing_error(results: Sequence[JobReturn]) -> Exception | None:
    """The one closing error of a sweep whose jobs did not all complete, else None."""
    from regablate.errors import ConfigError, JobLost, RunInterrupted, SweepFailed, UsageError
    from regablate.rundir.claim import RunRefused

    failed = [r for r in results if r.status == JobStatus.FAILED]
    if not failed:
        return None
    refused = refusals(failed)
    if len(refused) == len(failed):
        return SweepFailed(refused_message(refused, len(results)), code=2)
    kinds: dict[str, dict[str, list[str]]] = {}
    user_errors, resumable, overrides = True, False, {}
    for r in failed:
        e = r._return_value
        if isinstance(e, RunRefused):
            continue
        if isinstance(e, ConfigError):
            kind, why = "failed", f"invalid config: {e}"
        elif isinstance(e, UsageError):
            kind, why = "failed", str(e).strip()
        elif isinstance(e, RunInterrupted):
            kind, why, user_errors, resumable = "interrupted", f"by {e.how}", False, True
        elif isinstance(e, JobLost):
            kind, why, user_errors, resumable = e.label, e.why, False, True
        else:
            kind, why, user_errors, resumable = "failed", _first_line(e), False, True
            for key, value in getattr(e, "continue_with", {}).items():  # e.g. smaller chunks after out of memory
                overrides[key] = min(value, overrides.get(key, value))
        kinds.setdefault(kind, {}).setdefault(why, []).append(_where(r, e))
    parts = [f"{sum(map(len, by_why.values()))} {kind} ({_listed(by_why)})" for kind, by_why in kinds.items()]
    if refused:
        parts.append(f"{len(refused)} refused, their run dirs untouched ({_refused_reasons(refused)})")
    message = f"{len(failed)} of {len(results)} jobs did not complete: " + ", ".join(parts)
    if refused and not resumable:
        message += f"; {_refused_ways(refused)}"
    return SweepFailed(message, code=2 if user_errors else 1, resumable=resumable,
                       overrides=tuple(f"{k}={v}" for k, v in overrides.items()))


def auto_seeds(seeds: str | None, overrides: Sequence[Any]) -> bool:
    """Whether seeds come in rounds (hydra.sweeper.seeds=auto); a seed= sweep beside it is refused."""
    from regablate.errors import ConfigError, UsageError

    if seeds is None:
        return False
    if seeds != "auto":
        raise ConfigError("hydra.sweeper.seeds", seeds, "auto, or leave it unset")
    if any(o.key_or_group == "seed" for o in overrides):
        raise UsageError("hydra.sweeper.seeds=auto chooses the seeds itself: drop seed=... "
                         "(or drop seeds=auto to run the seeds you list)")
    return True


def _job_lines(cfg) -> list[str] | None:
    """What makes a sweep's list of jobs, from its config (unresolved): the command's task
    overrides in order, less operational ones that are not swept (`trainer.resume=auto`), then
    the sweeper's own `params` in order; None when it cannot be read."""
    from omegaconf import OmegaConf

    from regablate.rundir.group import is_operational

    def swept(o: str) -> bool:
        value = o.split("=", 1)[1] if "=" in o else ""
        return "," in value or "(" in value

    try:
        hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
        task = [str(o) for o in hydra["overrides"]["task"]]
        params = (hydra.get("sweeper") or {}).get("params") or {}
    except Exception:
        return None
    return [_values(o) for o in task if swept(o) or not is_operational(o)] + \
        [f"params {_values(f'{k}={v}')}" for k, v in params.items()]


def _values(override: str) -> str:
    """A swept override as the values it runs, in order (`seed=range(0,3)` and `seed=0,1,2` are
    one list of jobs: `seed=0,1,2`); any other override, or a sweep that has no fixed order
    (shuffle, glob, interval), as written."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if "shuffle(" in override:
        return override
    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
        if not parsed.is_sweep_override():
            return override
        return f"{parsed.get_key_element()}={','.join(parsed.sweep_string_iterator())}"
    except Exception:  # noqa: BLE001 — glob() needs the config loader, interval() has no values
        return override


def same_jobs(sweep_dir: Path, multirun_yaml: bytes, config) -> bool:
    """Refuse a sweep into a dir that holds another sweep's jobs (its multirun.yaml's command or
    sweeper params differ from these, operational settings aside): job dirs are numbered by job
    (`hydra.sweep.subdir=${hydra.job.num}`, Hydra's default), so another list of jobs (one more
    seed, another order) would put runs into the wrong dirs and repeat some. A dir that holds no
    job yet (a sweep refused before its first job) is not held against the new sweep. Returns
    whether the dir holds jobs."""
    from omegaconf import OmegaConf

    from regablate.errors import UsageError
    from regablate.report.collect import find_run_dirs

    found, broken = find_run_dirs(sweep_dir)
    if not found and not broken:
        return False
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if "hydra.job.num" not in str(subdir):  # job dirs named by their overrides: any jobs fit
        return True
    try:
        old = _job_lines(OmegaConf.create(multirun_yaml.decode()))
    except Exception:  # not a multirun.yaml Hydra wrote: the jobs' own checks still hold
        return True
    new = _job_lines(config)
    if old is None or new is None or old == new:
        return True
    gone = " ".join(o for o in old if o not in new)
    added = " ".join(o for o in new if o not in old)
    what = (f"{gone} there, {added} now" if gone and added else f"{added} given now, not there" if added
            else f"{gone} given there, not now" if gone else "the same overrides in another order")
    raise UsageError(f"{sweep_dir} holds another sweep's jobs ({what}): its job dirs are numbered by job, "
                     "so other jobs would land in the wrong ones; give this sweep its own hydra.sweep.dir "
                     "(the report reads several)")


def sweep(sweeper: Any, arguments: list[str]) -> object:
    """BasicSweeper.sweep for the plugin's `sweeper` (a BasicSweeper with `design`, `seeds`,
    `reference` and `sequential`), running every batch and ending with `closing_error`."""
    import functools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from regablate.rundir.claim import check_sweep_dir, hold_sweep_dir
    from regablate.sweep import joblib_jobs, submitit_jobs

    assert sweeper.config is not None and sweeper.launcher is not None and sweeper.hydra_context is not None
    if submitit_jobs.is_submitit(sweeper.launcher):
        sweeper.launcher.launch = functools.partial(submitit_jobs.launch, sweeper.launcher)
    elif joblib_jobs.is_joblib(sweeper.launcher):
        joblib_jobs.check_settings(dict(sweeper.launcher.joblib))  # before the sweep dir is made
        sweeper.launcher.launch = functools.partial(joblib_jobs.launch, sweeper.launcher)
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    overrides = parser.parse_overrides([*sweeper._parse_config(), *arguments])
    ablation, auto = None, auto_seeds(sweeper.seeds, overrides)
    if sweeper.design is not None:  # the stack's arms replace it (regablate.sweep.designs)
        from regablate.sweep import designs

        planned = range(sweeper.sequential.get("max_seeds", 20)) if auto else None
        design_arguments, ablation = designs.design_arguments(sweeper.design, overrides, planned)
        overrides = parser.parse_overrides(design_arguments)
    sweeper.overrides = sweeper.split_arguments(overrides, sweeper.max_batch_size)
    if ablation is not None:
        sweeper.overrides = [[designs.without_absent_settings(job) for job in batch]
                             for batch in sweeper.overrides]
    sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
    check_sweep_dir(sweep_dir)
    if auto:  # its settings refused in one line before the sweep dir is made
        from regablate.sweep.seed_rounds import prepare_rounds

        prepare_rounds([job for batch in sweeper.overrides for job in batch], sweeper.reference,
                       ablation, **sweeper.sequential)
    with hold_sweep_dir(sweep_dir):  # another sweep into it meanwhile is refused
        return _held_sweep(sweeper, sweep_dir, auto, ablation)


def _held_sweep(sweeper: Any, sweep_dir: Path, auto: bool, ablation: dict | None) -> object:
    """The rest of `sweep`, while this process holds the sweep dir: multirun.yaml (and
    ablation.json) checked and written, the batches run, the closing line."""
    from omegaconf import OmegaConf

    from regablate.rundir.atomic import write_atomic
    from regablate.sweep.designs import write_ablation_json
    from regablate.tensorboard.view import describe_sweep

    sweep_file = sweep_dir / "multirun.yaml"
    first = sweep_file.read_bytes() if sweep_file.exists() else None
    if ablation is not None and (sweep_dir / "ablation.json").exists():  # another design: its own line
        write_ablation_json(sweep_dir, ablation["design"], ablation["components"],
                            ablation["seeds"], ablation["overrides"])  # compares, writes nothing
    if first is not None and not same_jobs(sweep_dir, first, sweeper.config):
        first = None  # no job ran under it (refused before the first): this sweep's multirun.yaml
    returns: list[Sequence[JobReturn]] = []
    try:
        if first is None:  # the launch that makes the sweep dir writes it; later ones leave it
            OmegaConf.save(sweeper.config, sweep_file)
        if ablation is not None:  # written once; another design into this dir is refused
            write_ablation_json(sweep_dir, ablation["design"], ablation["components"],
                                ablation["seeds"], ablation["overrides"])
        initial_job_idx = 0

        def launch(batch):
            nonlocal initial_job_idx
            sweeper.validate_batch_is_legal(batch)
            ret = sweeper.launcher.launch(batch, initial_job_idx=initial_job_idx)
            initial_job_idx += len(batch)
            return ret

        if auto:
            from regablate.sweep.seed_rounds import run_rounds

            jobs = [job for batch in sweeper.overrides for job in batch]
            returns = run_rounds(launch, sweep_dir, jobs, sweeper.reference, ablation, **sweeper.sequential)
        while not auto and not sweeper.is_done():
            returns.append(launch(sweeper.get_job_batch()))
    finally:
        if first is not None and sweep_file.exists() and sweep_file.read_bytes() != first:
            write_atomic(sweep_file, lambda f: f.write(first), mode="wb")
    results = [r for batch in returns for r in batch]
    if not refusals(results):  # best effort: the sweep's outcome is already decided
        try:
            describe_sweep(sweep_dir)
        except Exception as e:
            print(f"regablate: warning: no TensorBoard experiment written for the sweep: {e}",
                  file=sys.stderr)
    error = closing_error(results)
    if error is not None:
        raise error
    return returns
