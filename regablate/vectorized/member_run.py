"""A stacked chunk's members as runs: each member's `RunSession` (its files, early stopping,
history and ending, as the ordinary trainer's) and the generators it draws from."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from regablate.checks.lint import format_findings, lint
from regablate.checks.selfcheck import check_eval_determinism
from regablate.rundir.atomic import one_sync
from regablate.training.experiment import group_id
from regablate.training.session import RunSession
from regablate.vectorized.grouping import Member


@dataclass
class MemberRun:
    """One member's run and generators."""

    m: Member
    session: RunSession
    gen: torch.Generator  # batch order
    drop_gen: torch.Generator  # dropout masks and batch transforms' tensors, on the device
    cpu_gen: torch.Generator  # mixup's and cutmix's scalars (the drop_gen itself on the CPU)


def open_runs(members: list[Member], device: torch.device) -> list[MemberRun]:
    """Each member's files; the lint and the eval-determinism check once per configuration
    (members that differ only in seeds share them)."""
    findings: dict[str, list] = {}
    runs = {}
    with one_sync():  # every member's "running" summary.json made durable at once
        for k, m in enumerate(members):
            if m.resume is None:
                runs[k] = _open(m, findings, device)
    # a continuing member's Recorder rewrites metrics.csv and then appends to the file it
    # opens: that rewrite must be in place before, not deferred to the end of a one_sync
    for k, m in enumerate(members):
        if m.resume is not None:
            runs[k] = _open(m, findings, device)
    return [runs[k] for k in range(len(members))]


def _open(m: Member, findings: dict[str, list], device: torch.device) -> MemberRun:
    """Member m's files and bookkeeping (lint and self-check once per `group_id`)."""
    key = group_id(m.cfg)
    if key not in findings:
        findings[key] = lint(m.s, m.x.model, m.x.param_groups(), m.x.data.in_shape, len(m.x.data.train))
        if findings[key] and m.s.trainer.progress != "none":
            print(format_findings(findings[key]), file=sys.stderr, flush=True)
        check_eval_determinism(m.x.model, m.x.data)
    if m.resume is not None and m.s.trainer.progress != "none":
        print(f"resumed from epoch {m.resume['epoch']}: {m.run_dir}", flush=True)
    session = RunSession.open(m.cfg, m.x, m.run_dir, resume=m.resume, findings=findings[key])
    cpu_gen = torch.Generator()  # an ordinary run's global CPU RNG, right after init
    cpu_gen.set_state(m.cpu_rng)
    # ordinary runs draw dropout from the freshly seeded CUDA RNG, or the CPU one
    drop_gen = torch.Generator(device).manual_seed(m.s.seed) if device.type == "cuda" else cpu_gen
    run = MemberRun(m, session, torch.Generator().manual_seed(m.s.seed), drop_gen, cpu_gen)
    if m.resume is not None:
        _continue(run, m.resume)
    return run


def _continue(r: MemberRun, state: dict) -> None:
    """Member r's engine state from its checked resume state (the session took its epoch,
    stopper and history): generators, its lr schedule (and the torch optimiser that holds its
    lr, where it has one), and whether it diverged: behind the chunk's epoch without stopping."""
    x = r.m.x
    r.gen.set_state(state["rng"]["order"])
    r.cpu_gen.set_state(state["rng"]["torch"])
    if r.drop_gen is not r.cpu_gen:
        r.drop_gen.set_state(state["stacked"]["drop"])
    if "optimizer" in x.__dict__ or x.s.sched.name != "none":  # its lr and the schedule's keys
        x.optimizer.load_state_dict({"state": {}, "param_groups": state["optimizer"]["param_groups"]})
    x.schedule.load_state_dict(state["schedule"])
    if not r.session.stopper.stop and state["epoch"] < state["stacked"]["epoch"]:
        r.session.diverged(state["epoch"] + 1)
