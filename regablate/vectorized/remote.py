"""One stacked chunk of a `vectorized` sweep, trained as one submitit job (a SLURM job under
`hydra.launcher.executor=slurm`).

The launcher composes, classifies and groups the sweep's jobs as it does in-process, then sends
each chunk here as a list of `Spec`s (each member's resolved config, run dir and Hydra's
`.hydra/` files as text). `train_chunk` runs in the job: it claims every member's run dir (the
lock is taken where the files are written), writes Hydra's files, rebuilds the members
(`make_member`, or `resume_member` for a run that trainer.resume=auto continues) and trains them
as one stacked model. SIGTERM and submitit's warning signal (SIGUSR2) stop it as they stop an
ordinary submitit job (`regablate.training.job.stop_on_cluster_signals`): every member's last completed
epoch is checkpointed (last.pt) and its run recorded `interrupted`.

It returns each member's outcome by job number: ("ran", None), ("refused", RunRefused),
("failed", error) or ("interrupted", signal name); the launcher reads each run's summary.json
for the rest.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Spec:
    job: int  # the sweep's job number
    cfg: dict  # the task's config, resolved (no hydra key)
    run_dir: str
    files: dict[str, str]  # Hydra's files by name (config.yaml, hydra.yaml, overrides.yaml), as text
    subdir: str | None = None  # hydra.output_subdir where a config asks for Hydra's own way, else None


def _portable(e: BaseException) -> BaseException:
    """`e` if it comes back whole through a pickle, else a JobFailed with its type and message."""
    from regablate.errors import JobFailed, survives_pickling

    return e if survives_pickling(e) else JobFailed(f"{type(e).__name__}: {e}")


def _write_files(spec: Spec) -> None:
    """Hydra's files into the member's run dir, which this process holds."""
    from regablate.rundir.atomic import write_atomic
    from regablate.rundir.claim import write_hydra_files

    run_dir = Path(spec.run_dir)
    if spec.subdir is None:  # regablate's way: only by the launch that makes the run
        write_hydra_files(run_dir, spec.files["config.yaml"], spec.files["hydra.yaml"],
                          spec.files["overrides.yaml"], to_yaml=lambda text: text)
        return
    out = run_dir / spec.subdir
    out.mkdir(parents=True, exist_ok=True)
    for name, text in spec.files.items():
        write_atomic(out / name, lambda f, text=text: f.write(text))


def _threads(members: list, cpus_per_task: int | None) -> int:
    """Torch threads for the chunk, as `regablate.cli.run.place_job` chooses them for a submitit job."""
    import torch

    from regablate.training.job import job_cpus

    threads = max(m.s.trainer.threads for m in members)
    if threads:
        return threads
    cores = job_cpus()
    if cpus_per_task:
        return min(cpus_per_task, cores)
    return min(cores, torch.get_num_threads())


def _train(specs: list[Spec], cpus_per_task: int | None, outcome: dict[int, tuple[str, Any]]) -> None:
    from regablate.errors import ConfigError, JobFailed
    from regablate.rundir.claim import RunRefused, claim
    from regablate.training.job import describe
    from regablate.training.settings import load_settings
    from regablate.vectorized.grouping import make_member
    from regablate.vectorized.resume import resume_member
    from regablate.vectorized.trainer import VectorizedTrainer

    with ExitStack() as held:
        kept = []
        for spec in specs:
            trainer = spec.cfg.get("trainer")
            resume = trainer.get("resume", "never") if isinstance(trainer, dict) else "never"
            try:
                held.enter_context(claim(Path(spec.run_dir), resume))
            except RunRefused as e:  # another process took the dir since the launcher looked
                outcome[spec.job] = ("refused", e)
            else:
                kept.append(spec)
        members, shared = [], {}
        for spec in kept:
            _write_files(spec)
            run_dir = Path(spec.run_dir)
            try:
                s = load_settings(spec.cfg)
                if (run_dir / "summary.json").exists():
                    m = resume_member(spec.job, spec.cfg, run_dir, s, shared)
                else:
                    m = make_member(spec.job, spec.cfg, run_dir, s, shared)
            except (ConfigError, RunRefused) as e:
                outcome[spec.job] = ("failed", _portable(e))
                continue
            if isinstance(m, str):  # the launcher found it stackable: this machine does not
                outcome[spec.job] = ("failed", JobFailed(f"could not be stacked in the job: {m}"))
                continue
            members.append(m)
        if not members:
            return
        import torch

        torch.set_num_threads(_threads(members, cpus_per_task))
        try:
            summaries, stats = VectorizedTrainer(members).fit()
        except Exception as e:  # every member's summary.json says `failed`
            for m in members:
                outcome[m.job] = ("failed", _portable(e))
            return
        k = len(members)
        print(f"K={k}, {stats.steps} steps in {stats.seconds:.1f} s: "
              f"{stats.per_member_step_s * 1e3:.3f} ms per member-step", flush=True)
        for m, summary in zip(members, summaries):
            outcome[m.job] = ("ran", None)
            if m.s.trainer.progress != "none":
                print(describe(summary, m.run_dir), flush=True)


def train_chunk(specs: list[Spec], cpus_per_task: int | None = None) -> dict[int, tuple[str, Any]]:
    """Train one chunk in this (submitit) job: see the module docstring."""
    from regablate.training.job import stop_on_cluster_signals

    outcome: dict[int, tuple[str, Any]] = {}
    try:
        with stop_on_cluster_signals():
            _train(specs, cpus_per_task, outcome)
    except KeyboardInterrupt as e:  # the trainer recorded its members `interrupted`, with last.pt
        how = getattr(e, "signal_name", "SIGINT")
        print(f"chunk interrupted by {how}", file=sys.stderr, flush=True)
        for spec in specs:
            outcome.setdefault(spec.job, ("interrupted", how))
    return outcome
