"""`regablate <command>`: run, lint, report, status, plan, export, tb and data, each dispatched to
its module. User errors are one line on stderr and exit 2."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path

from regablate.errors import one_line, print_error

USAGE = """usage: regablate <command> [args]

commands:
  run [overrides]   train one experiment, or a sweep with -m (Hydra overrides and flags)
  lint [overrides]  check a config for regularisation pitfalls without training
  report [DIRS]     the ablation table over run dirs (default: ./multirun and ./outputs)
  status [DIRS]     where runs stand: counts by status, stale jobs, errors, the command to continue
  plan DIR --delta D   seeds needed per comparison with the baseline, from a pilot sweep
  export mlflow DIRS --tracking-uri URI   completed runs into MLflow (pip install 'regablate[mlflow]')
  tb [DIR]          TensorBoard on the outputs
  data cifar10      prepare CIFAR-10 (--download, or --from an archive or folder)
  data image_folder PATH   decode your own image folder's cache once (optional, before a sweep)

examples:
  regablate run +reg=dropout_l2
  regablate run -m +reg=none,weight_decay,dropout seed=0,1,2,3,4
  regablate run -m '+reg=[dropout,weight_decay]' hydra.sweeper.design=factorial seed=0,1,2,3,4
  regablate status multirun
  regablate report multirun --sort gap
"""


def _options_of_missing(message: str) -> str:
    """What a config group offers, where Hydra's message names a missing option without them
    (an option in a list, `+reg=[dropout,cutmx]`, gets only "Could not load 'reg/cutmx'")."""
    import re

    from regablate.config.paths import CONF_DIR

    found = re.search(r"Could not load '([\w/]+)/([^'/]+)'", message)
    if found is None or "Available options" in message or not (CONF_DIR / found[1]).is_dir():
        return ""
    names = sorted(p.stem for p in (CONF_DIR / found[1]).glob("*.yaml"))
    return f" Available options in '{found[1]}': {' '.join(names)}"


def _raised_by_hydra(e: BaseException) -> bool:
    """Hydra's own usage errors (bad flag combinations) are plain ValueErrors raised in hydra/."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "/hydra/" in tb.tb_frame.f_code.co_filename


def _unknown_setting(message: str) -> str | None:
    """Hydra's "Error in call to target 'hydra_plugins…Launcher': TypeError(… unexpected keyword
    argument 'x')" (a `+hydra.launcher.x=` the plugin does not take) as a line naming the key
    and the settings it has; None for any other error."""
    import importlib
    import inspect
    import re

    found = re.search(r"Error in call to target '(hydra_plugins\.[\w.]+)\.(\w+)'.*unexpected keyword argument '(\w+)'",
                      message, re.S)
    if not found:
        return None
    module, name, key = found.groups()
    try:
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters.values()
    except Exception:  # noqa: BLE001 — Hydra's own line then
        return None
    kind = "launcher" if "launcher" in module else "sweeper"
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return f"hydra.{kind}.{key}: not a setting of {name}; its settings: {', '.join(known)}"


def _not_a_setting(message: str) -> str | None:
    """Hydra's "Could not override 'reg.dropout.pp'. To append to your config use +reg.dropout.pp=0.1
    (Key 'pp' is not in struct)" (a misspelt key of a settings group whose keys do not depend on
    another choice: trainer, eval, a regulariser) as the line a `+key=` would get: the key, the
    value and the keys allowed; None for any other error."""
    import dataclasses
    import re

    found = re.search(r"Could not override '([\w.]+)'\. To append to your config use \+[\w.]+=(.*) \(Key '\w+' is "
                      r"not in struct\)", message, re.S)
    if not found:
        return None
    key, value = found.groups()
    parent = key.rsplit(".", 1)[0]
    from regablate.regularisers import REGISTRY
    from regablate.training.settings import EarlyStopping, EvalSettings, TrainerSettings

    groups = {"trainer": TrainerSettings, "trainer.early_stopping": EarlyStopping, "eval": EvalSettings,
              **{f"reg.{name}": cls.Settings for name, cls in REGISTRY.items()}}
    if parent not in groups:
        return None
    names = [f.name for f in dataclasses.fields(groups[parent])]
    if key.rsplit(".", 1)[1] in names:  # reg.dropout.p=0.3 without dropout in the stack
        name = parent.split(".", 1)[1]
        return f"{key}={value}: {name} is not in the run's stack; add it: +reg={name} (or +reg=[...,{name}])"
    return f"invalid config: {key}={value}: unknown key; allowed: {', '.join(names) or 'no settings'}"


def _on_sigterm(signum, frame) -> None:
    from regablate.errors import Terminated

    raise Terminated()


def _finished(run_dir: str | None) -> bool:
    """Whether a single run's summary.json says it completed (or diverged): it ended."""
    from regablate.rundir.scan import ended

    return bool(run_dir) and ended(run_dir) is not None


def resume_command(argv: list[str], dirs: dict[str, str], overrides: tuple[str, ...] = ()) -> str | None:
    """The exact command that continues this run or sweep: its flags, then its overrides with
    its dir and trainer.resume=auto, and `overrides` in place of the same keys (Hydra takes
    the overrides together: after `+reg=x -m` no override may follow)."""
    from regablate.errors import UsageError

    try:
        args, extras = _hydra_parser().parse_known_args(argv)
        flags, found = _flags_and_overrides(argv, [*args.overrides, *extras])
        sweep = bool(args.multirun)  # -m, --multirun or an abbreviation such as --multi
    except UsageError:  # a damaged record's odd flag: argv as it is
        flags, found, sweep = [], list(argv), any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    where = dirs.get("sweep" if sweep else "run")
    if where is None:
        return None
    replaced = tuple(o.split("=", 1)[0] + "=" for o in overrides)
    kept = [a for a in found if not a.lstrip("+").startswith((f"{key}=", "trainer.resume=", *replaced))]
    return shlex.join(["regablate", "run", *flags, *kept, *overrides, f"{key}={where}", "trainer.resume=auto"])


def _hydra_parser():
    """Hydra's own argument parser (what hydra.main parses with), its errors raised as a
    UsageError: argparse's one line names the flag, the value and the choices."""
    from hydra._internal.utils import get_args_parser

    from regablate.errors import UsageError

    def refuse(message: str) -> None:
        raise UsageError(message)

    parser = get_args_parser()
    parser.error = refuse
    return parser


def _flags_and_overrides(argv: list[str], overrides: list[str]) -> tuple[list[str], list[str]]:
    """argv split into Hydra's flags (with their values, in order) and its `overrides` (as
    Hydra's parser found them, in argv's order)."""
    flags, matched = [], 0
    for a in argv:
        if matched < len(overrides) and a == overrides[matched]:
            matched += 1
        else:
            flags.append(a)
    return flags, overrides


def _custom_kwarg(arg: str) -> str:
    """`model.kwargs.width=64` -> `++model.kwargs.width=64`: a custom model's keyword arguments
    are the user's own keys, which Hydra would otherwise refuse as new ones without a `+`."""
    return f"++{arg}" if arg.startswith("model.kwargs.") and "=" in arg else arg


def _collect_less() -> None:
    """Python's full garbage collections walk every live object, and torch, dynamo and Hydra
    make hundreds of thousands of them while they import and compose: with the default
    threshold a full collection follows every 10 younger ones, 0.4 s of a sweep's start-up.
    A full collection now waits for 100 (young cycles are still collected as often as
    before). At exit the interpreter's last collections would walk them all once more only
    for the OS to free them (0.5 s): frozen, they are left to it; every file is written and
    closed by then."""
    import atexit
    import gc

    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 100)
    atexit.register(gc.freeze)


def _check_flags(argv: list[str]) -> None:
    """Hydra's flags parsed here as Hydra will parse them, so that a bad one is one line (a
    UsageError) rather than Hydra's usage before argparse's line. Hydra takes its overrides
    together, before or after its flags: overrides on both sides of a flag get the command that
    runs."""
    from regablate.errors import UsageError

    parser = _hydra_parser()
    args, extras = parser.parse_known_args(argv)
    unknown = [a for a in extras if a.startswith("-")]
    if unknown:
        flags = sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))
        raise UsageError(f"{unknown[0]}: not a flag of regablate run; its flags: {', '.join(flags)} "
                         "(settings are overrides: key=value)")
    if extras:
        flags, overrides = _flags_and_overrides(argv, [*args.overrides, *extras])
        first = argv.index(args.overrides[0]) if args.overrides else len(argv)
        split = next(a for a in argv[first:] if a in flags)  # the first flag after an override
        raise UsageError(f"{extras[0]}: an override after {split}, which follows other overrides; "
                         "Hydra takes the overrides together, before or after its flags: "
                         f"{shlex.join(['regablate', 'run', *flags, *overrides])}")


def run(argv: list[str]) -> int:
    """Hydra owns argv; its exceptions reach us raw so user errors become one line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from regablate.errors import ConfigError, SweepFailed, Terminated, UsageError

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.argv = ["regablate", *map(_custom_kwarg, argv)]
    _collect_less()
    signal.signal(signal.SIGTERM, _on_sigterm)
    from regablate.cli.run import LAUNCH_DIRS, hydra_main

    try:
        _check_flags(argv)
        hydra_main()
    except KeyboardInterrupt as e:  # the run's summary.json already says "interrupted"
        if _finished("run" in LAUNCH_DIRS and LAUNCH_DIRS["run"]):
            return 0  # the signal came after the run had completed: it is complete
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"regablate: {how}", file=sys.stderr)
        again = resume_command(argv, LAUNCH_DIRS)
        if again:
            run_dir = LAUNCH_DIRS.get("run")
            anew = run_dir and not (Path(run_dir) / "checkpoints" / "last.pt").exists()
            print(f"continue with: {again}" + (" (from epoch 1: it wrote no checkpoints/last.pt)"
                                               if anew else ""), file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    except SweepFailed as e:  # jobs of a sweep did not complete: one closing line
        again = resume_command(argv, LAUNCH_DIRS, e.overrides) if e.resumable else None
        line = " ".join(e.message.split()) + (f"; continue them with: {again}" if again else "")
        print(f"regablate: error: {line}", file=sys.stderr)
        return e.code
    except ConfigError as e:
        return print_error(f"invalid config: {e}")
    except UsageError as e:
        return print_error(str(e))
    except (HydraException, OmegaConfBaseException) as e:  # before OSError: a missing config is both
        cause = e.__cause__
        extra = f" ({one_line(cause)})" if isinstance(cause, OmegaConfBaseException) else ""
        line = one_line(e) + extra
        return print_error(_unknown_setting(str(e)) or _not_a_setting(line) or line + _options_of_missing(str(e)))
    except OSError as e:  # e.g. Hydra cannot create the output dir, the disk is full
        return print_error(f"cannot write {e.filename}: {e.strerror}" if e.filename else str(e))
    except ValueError as e:
        if not _raised_by_hydra(e):
            raise
        return print_error(str(e))
    except RuntimeError as e:
        if 'Could not detect "srun"' not in str(e):
            raise
        return print_error("the SLURM launcher (hydra/launcher=cluster or submitit_slurm) needs srun and "
                      "sbatch, which this machine does not have; on one machine use "
                      "hydra/launcher=submitit_local or hydra/launcher=joblib")
    return 0


def main(argv: list[str] | None = None) -> None:
    from regablate.cli.streams import tolerate_closed_pipes

    argv = sys.argv[1:] if argv is None else argv
    tolerate_closed_pipes()  # `regablate … | head`: the command finishes as if read to the end
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    if argv[0] in ("--version", "version"):
        from importlib.metadata import version

        print(f"regablate {version('regablate')}")
        sys.exit(0)
    command, rest = argv[0], argv[1:]
    if command == "run":
        code = run(rest)
        # its outcome is said and written: a signal now would only cut short the interpreter's
        # exit (a process pool's exit hook joining its threads) with a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(code)
    modules = {"report": "regablate.report.command", "tb": "regablate.cli.tb", "lint": "regablate.cli.lint",
               "data": "regablate.cli.data", "status": "regablate.cli.status", "plan": "regablate.report.plan",
               "export": "regablate.report.export"}
    if command not in modules:
        sys.exit(print_error(f"unknown command {command!r}; allowed: run, " + ", ".join(modules)))
    import importlib

    sys.exit(importlib.import_module(modules[command]).main(rest))
