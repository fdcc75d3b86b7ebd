"""`regablate lint [--strict] [overrides]`: compose the config as `regablate run` would, build
its model without training and print the findings of the rules (regablate.checks.lint).

Exit codes: 0 clean, or findings without --strict; 1 findings with --strict; 2 invalid
overrides or config, or a model that fails on the data's shape (one line on stderr).
"""

from __future__ import annotations

import sys

from torch import nn

from regablate.checks.lint import Finding, lint
from regablate.config.compose import compose_config
from regablate.errors import UsageError
from regablate.training.settings import Settings

SHAPES = {"cifar10": ((3, 32, 32), 10)}  # datasets whose model shape is known without their data

USAGE = """usage: regablate lint [--strict] [overrides]

Compose the config as `regablate run` would and print regularisation pitfalls without training.
  --strict   exit 1 when there is any finding
example: regablate lint optim=adam optim.weight_decay=1e-4 +reg=dropout
"""


def lint_inputs(settings: Settings) -> tuple[nn.Module, list[dict], tuple[int, ...], int | None]:
    """What `lint` reads of a run that is not built: its model as `build_experiment` builds it
    (regablate.models.build_model after seed_everything(seed); here on the CPU, with no data on
    the device and no optimiser), the parameter groups its optimiser would hold, and the input
    shape and the training split's size: `lint(settings, *lint_inputs(settings))`. The shape comes
    from SHAPES for datasets kept on disk (their size unknown here: None), else from generating
    the data (cheap for the synthetic sets)."""
    from regablate.checks.lint import check_output, model_name
    from regablate.data import DATASETS
    from regablate.models import build_model
    from regablate.training.experiment import check_stack_fits, seed_everything
    from regablate.training.optim import held_groups

    s = settings
    if s.dataset.name in SHAPES:
        (in_shape, out_dim), task = SHAPES[s.dataset.name], "classification"
        n_train = None
    else:
        data = DATASETS[s.dataset.name][1](s.dataset, s.data_seed)
        in_shape, out_dim, task, n_train = data.in_shape, data.out_dim, data.task, len(data.train)
    check_stack_fits(s, task, tuple(in_shape))  # what the run refuses, lint refuses
    seed_everything(s.seed)
    model = build_model(s.model, in_shape, out_dim, s.stack)  # as the run builds it (custom models too)
    if s.model.name == "custom":
        check_output(model, tuple(in_shape), out_dim, model_name(s))
    return model, held_groups(s.optim, s.stack.param_groups(model)), tuple(in_shape), n_train


def main(argv: list[str]) -> int:
    """`regablate lint`: 0 (clean, or findings without --strict), 1 (findings with --strict),
    2 (invalid overrides or config, one line on stderr)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from regablate.errors import ConfigError
    from regablate.errors import one_line as _one_line
    from regablate.errors import print_error as _error
    from regablate.training.settings import load_settings

    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    strict = "--strict" in argv
    overrides = [a for a in argv if a != "--strict"]
    flags = [a for a in overrides if a.startswith("-")]
    if flags:
        return _error(f"lint takes --strict and overrides; unknown option {flags[0]!r}")
    try:
        cfg = compose_config(overrides)
        settings = load_settings(cfg)
        findings = lint(settings, *lint_inputs(settings))
    except ConfigError as e:
        return _error(f"invalid config: {e}")
    except UsageError as e:
        return _error(str(e))
    except (HydraException, OmegaConfBaseException) as e:
        cause = e.__cause__
        extra = f" ({_one_line(cause)})" if isinstance(cause, OmegaConfBaseException) else ""
        return _error(_one_line(e) + extra)
    _print(findings)
    return 1 if strict and findings else 0


def _print(findings: list[Finding]) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    if not findings:
        console.print(Text("no findings", style="green"))
        return
    for f in findings:
        console.print(Text.assemble((f.id, "bold yellow"), "  ", f.message))
        console.print(Text.assemble(" " * (len(f.id) + 2), ("fix: ", "bold"), f.fix))
    n = len(findings)
    console.print(Text(f"{n} finding{'s' * (n != 1)}", style="yellow"))
    sys.stdout.flush()
