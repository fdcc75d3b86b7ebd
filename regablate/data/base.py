"""The data a run trains on: three splits held as tensors on the training device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Split:
    """Inputs and targets of one split; `x[i]` pairs with `y[i]`."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


def unchanged(x: torch.Tensor) -> torch.Tensor:
    """The stored inputs as they are (features, tables: no preparation)."""
    return x


@dataclass
class Data:
    """Train/val/test splits and what a model needs to know about them.

    `prepare` turns stored inputs into model inputs on the device, batch by batch (`unchanged` for
    float features; uint8 -> normalised float for images), so storage stays compact.
    `ood` is an out-of-distribution input set for uncertainty checks (may be None).
    """

    task: str  # "classification" | "regression"
    train: Split
    val: Split
    test: Split
    in_shape: tuple[int, ...]
    out_dim: int  # number of classes, or regression outputs
    prepare: Callable[[torch.Tensor], torch.Tensor] = field(default=unchanged)
    ood: torch.Tensor | None = None

    @property
    def metric(self) -> str:
        return "acc" if self.task == "classification" else "mse"

    @property
    def higher_is_better(self) -> bool:
        return self.task == "classification"

    def to(self, device: torch.device) -> Data:
        ood = None if self.ood is None else self.ood.to(device)
        return Data(self.task, self.train.to(device), self.val.to(device), self.test.to(device),
                    self.in_shape, self.out_dim, self.prepare, ood)
