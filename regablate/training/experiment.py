"""Experiment = data on the device + model built with the stack + optimiser + loss."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regablate.data import DATASETS, Data
from regablate.models import build_model
from regablate.rundir.group import flatten, group_id  # noqa: F401 (in regablate.rundir.group, torch-free, for the report)
from regablate.training.evaluate import amp_on
from regablate.training.optim import Schedule, build_optimizer, check_optimizer, held_groups
from regablate.training.settings import Settings


def resolve_device(name: str) -> torch.device:
    from regablate.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "CUDA is not available here; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices): init, dropout masks, augmentation."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def training_loss(task: str, label_smoothing: float):
    """Mean cross-entropy (hard or soft targets; smoothing applied once, here) or MSE."""
    if task == "regression":
        return F.mse_loss
    if label_smoothing > 0:
        return lambda out, y: F.cross_entropy(out, y, label_smoothing=label_smoothing)
    return F.cross_entropy


@dataclass(eq=False)
class Experiment:
    s: Settings
    device: torch.device
    data: Data
    model: nn.Module
    groups: list[dict]  # the stack's parameter groups, as the optimiser is built from them
    loss: Any

    @cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """Built on first use: the first torch optimiser of a process imports torch._dynamo
        (about a second), which a stacked sweep, stepping its own optimiser, never needs."""
        return build_optimizer(self.s.optim, self.groups)

    @cached_property
    def schedule(self) -> Schedule:
        moves = self.s.sched.name != "none"  # only a schedule that moves the lr needs the optimiser
        return Schedule(self.s.sched, self.optimizer if moves else None, self.s.trainer.max_epochs)

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups as it holds them now (lr, weight_decay, ...), built
        only where it already is or a schedule moves the lr."""
        if "optimizer" in self.__dict__ or self.s.sched.name != "none":
            return self.optimizer.param_groups
        return held_groups(self.s.optim, self.groups)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _listed(group: dict) -> dict:
    """A parameter group whose params are a list, as torch makes them (it takes one tensor or any
    iterable): the groups are read before torch's optimiser is built, and without it."""
    params = group["params"]
    return {**group, "params": [params] if isinstance(params, torch.Tensor) else list(params)}


def check_stack_fits(s: Settings, task: str, in_shape: tuple[int, ...]) -> None:
    """ConfigError for a regulariser the data cannot take: label smoothing and mixing on a
    regression task, image transforms on inputs that are not images, a cutout square that
    blanks the whole image from every centre (size ≥ 2·side − 1). `regablate run` and `lint`."""
    from regablate.errors import ConfigError

    for key in ("label_smoothing", "mixup", "cutmix"):
        if task != "classification" and s.stack[key] is not None:
            raise ConfigError(f"reg.{key}", "on", f"needs a classification dataset; "
                              f"dataset.name={s.dataset.name!r} is {task}")
    for key in ("augment", "cutout", "cutmix"):  # crops, squares and boxes of images
        if s.stack[key] is not None and len(in_shape) != 3:
            raise ConfigError(f"reg.{key}", "on", "needs image inputs (channels, height, width): dataset=cifar10 "
                              f"or dataset=image_folder; the dataset chosen (dataset.name={s.dataset.name!r}) gives inputs of shape "
                              f"{tuple(in_shape)}")
    augment = s.stack["augment"]
    if augment is not None and augment.s.pad > max(in_shape[1:]):
        raise ConfigError("reg.augment.pad", augment.s.pad, f"must be at most the image's side, "
                          f"{max(in_shape[1:])} (a crop shifts the image by up to pad pixels)")
    cut = s.stack["cutout"]
    if cut is not None and cut.s.size >= 2 * max(in_shape[1:]) - 1:
        h, w = in_shape[1:]
        raise ConfigError("reg.cutout.size", cut.s.size, f"covers the whole {h}x{w} image wherever it is "
                          f"centred (every training image blank); use a size below {2 * max(h, w) - 1}")


OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory", "alloc_failed")  # CUDA, CPU, cuBLAS


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` is an allocation that failed (Python's MemoryError, or torch's RuntimeError)."""
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and any(m in str(e).lower() for m in OUT_OF_MEMORY))


@contextmanager
def _fits(group: str, settings: Any) -> Iterator[None]:
    """An allocation that fails while the run's data or model is built is a size set too large
    for the machine (dataset.d=1e11, model.hidden=[1e11]): one line naming the group's largest
    sizes, not the allocator's traceback."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        from regablate.errors import UsageError

        def size(v) -> int:
            return max(v) if isinstance(v, list) and v and all(isinstance(x, int) for x in v) else \
                v if isinstance(v, int) and not isinstance(v, bool) else 0

        sizes = sorted(((f.name, getattr(settings, f.name)) for f in fields(settings)),
                       key=lambda kv: -size(kv[1]))
        shown = ", ".join(f"{group}.{k}={v}" for k, v in sizes[:3] if size(v))
        first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        raise UsageError(f"the {group} does not fit in memory ({first}); its largest sizes: {shown or '-'}; "
                         "lower them") from None


def build_experiment(s: Settings, data: Data | None = None) -> Experiment:
    """Everything a run needs, checked and built before any file is written. `data`: the data
    set these settings make, already built (by a caller that starts many runs on it); building
    it draws on no global RNG, so the model's initialisation is the same either way."""
    device = resolve_device(s.trainer.device)
    if data is None:
        with _fits("dataset", s.dataset):
            data = DATASETS[s.dataset.name][1](s.dataset, s.data_seed).to(device)
    seed_everything(s.seed)
    check_stack_fits(s, data.task, data.in_shape)
    if s.trainer.amp and not amp_on(device, True):
        from regablate.errors import ConfigError

        raise ConfigError("trainer.amp", True, f"bf16 autocast is for CUDA; the device is {device}")
    with _fits("model", s.model):
        model = build_model(s.model, data.in_shape, data.out_dim, s.stack).to(device)
    if s.model.name == "custom":  # the built-in models return (batch, out_dim) by construction
        from regablate.checks.lint import check_output, model_name

        check_output(model, data.in_shape, data.out_dim, model_name(s))
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    check_optimizer(s.optim)
    groups = [_listed(g) for g in s.stack.param_groups(model)]
    loss = training_loss(data.task, s.stack.loss_spec().label_smoothing)
    return Experiment(s, device, data, model, groups, loss)
